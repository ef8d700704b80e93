"""DMD: DMD2's distribution-matching gradient (Yin et al., 2024), with an optional reward (DMDR, Jiang et al., 2025).

The generator's x0 moves along

    (D_fake(x_t) - D~_ref(x_t)) / mean_pixels |x0 - D~_ref(x_t)|,

the Integral-KL gradient in the denoiser's units (w(t) = sigma^2 / alpha^2) divided, sample by sample, by how far
the reference's denoiser puts x0 from where it is. The normaliser is DMD's own: it evens out the step across noise
levels and images; it is held constant (no gradient), and each sample has its own, so a sample's step does not
depend on the rest of its batch. Objective: -alpha_rew E[r] plus that matching term; without a reward (the
default, DMD2's distillation) its fixed point is the reference itself.

Defaults from DMD2's SDXL recipe (tianweiy/DMD2, read): five fake-score updates per generator update
(`dfake_gen_update_ratio 5`) and timesteps 20 to 980 of 1000 (our t_min, t_max). Not here: DMD2's GAN head and
regression loss, which need data or teacher pairs.
"""

from dataclasses import dataclass

import torch

from bench.diffusion import inner
from bench.errors import UsageError
from bench.method import GeneratorBatch, Method, retune, score_gap


@dataclass
class DMD(Method):
    alpha_rew: float = retune("alpha_rew", 0.0)
    fake_steps: int = retune("fake_steps", 5)

    def validate(self) -> None:
        super().validate()
        if self.weighting != "denoiser":
            raise UsageError("method=dmd moves x0 by the denoiser difference, which is method.weighting=denoiser; "
                             f"got method.weighting={self.weighting}")

    def regulariser(self, b: GeneratorBatch):
        gap, ref = score_gap(b, b.cfg)
        with torch.no_grad():
            ref_x0 = (b.x_t + b.sigma**2 * ref) / b.alpha
            distance = (b.x0 - ref_x0).abs().flatten(1).mean(1)
        return b.weight * inner(gap, b.x_t) / distance
