"""The analytic backend: the Gaussian-mixture world as an exact reference diffusion model.

The reference has no weights to copy, so "start from the reference" means what it means for a real teacher,
in function space. The generator is a one-step model of the reference plus a learned residual that starts at
zero; the fake score is the reference's score plus a learned correction that starts at zero (a copy of the
teacher).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.func import jacfwd, vmap

from bench.analytic.metrics import generator_log_density, log_prob_clean
from bench.analytic.mixture import GaussianMixture
from bench.analytic.world import ExactWorld, picture_mixture
from bench.diffusion import FlowSchedule, VPSchedule, broadcast, image_noise, probability_flow
from bench.errors import UsageError
from bench.fields import param
from bench.rewards.analytic import build_reward

CAPTION_FEATURES = 64
TIME_FREQUENCIES = 32
# DPM-Solver++ (2M) steps of the ODE start. The map's exact KL to the reference (change of variables, 8 captions x 64
# samples): 2.2 nats at 8 steps, 0.12 at 12, 0.055 at 16, 0.022 at 24; 12 cost about 3 ms a batch of 128.
ODE_STEPS = 12


class ResidualMLP(nn.Module):
    """[features, caption embedding, (time features)] -> a correction of `out` values, zero at initialisation.

    `linear` adds a path that is linear in the features: a correction that is an affine function of them then
    needs no nonlinearity, and is reached with O(1) weights.
    """

    def __init__(self, features: int, out: int, captions: int, hidden: int, timed: bool, linear: bool = False):
        super().__init__()
        self.timed = timed
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(1000), TIME_FREQUENCIES)), persistent=False)
        self.caption = nn.Embedding(captions, CAPTION_FEATURES)
        width = features + CAPTION_FEATURES + (2 * TIME_FREQUENCIES if timed else 0)
        self.net = nn.Sequential(
            nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, out)
        )
        self.linear = nn.Linear(features, out) if linear else None
        for layer in (self.net[-1], self.linear):
            if layer is not None:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor, cond: Tensor, t: Tensor | None = None) -> Tensor:
        parts = [features, self.caption(cond)]
        if self.timed:
            angles = t.reshape(-1, 1) * self.freqs
            parts += [angles.sin(), angles.cos()]
        out = self.net(torch.cat(parts, 1))
        return out if self.linear is None else out + self.linear(features)


class Generator(nn.Module):
    """x0 = b + residual(z, b, c) with b = base(z, c): a one-step model of the reference, then learned.

    The correction reads the sample it corrects, as a fine-tuned network's later layers read what its earlier
    ones made. A reward that moves each mode by its own amount (a quadratic one: towards its target, from where
    each mode is) asks for a correction that is constant on each mode; from z alone that is a step across the
    noise's partition into modes, which an MLP draws as a slope running through the modes along their
    differences, and the generator's spread collapsed there (to 0.17 and 0.29 of the reference's variance on the
    family's quadratic s0 0.08 world, kl_star stuck at 1.1 nats; README, Drift). From b it is a smooth function.

    Base 'ode' is the reference's own sampler, its probability-flow ODE from noise to data: a one-step model
    whose law is the reference's, as alignment in practice starts from a distilled one-step model (DI* SDXL
    from DMD2). Base 'denoiser' reads the noise as x at t_init and returns the reference's E[x0 | x_t], as
    DMD2 and SiD start from their teacher: far too narrow, with bridge samples between modes, and with the
    mode weights of the noise's partition rather than the reference's. The weights matter: no method here moves
    mass between modes that lie many standard deviations apart, so a generator keeps the weights it starts with.
    """

    def __init__(self, reference: GaussianMixture, schedule, init: str, t_init: float, shape,
                 hidden: int):
        super().__init__()
        self.reference, self.schedule, self.init = reference, schedule, init
        self.t_init_alpha, self.t_init_sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor(t_init)))
        dim = math.prod(shape)
        self.residual = ResidualMLP(2 * dim, dim, reference.means.shape[0], hidden, timed=False)

    def base(self, z: Tensor, cond: Tensor) -> Tensor:
        """Frozen: it has no parameters, so gradients through it arise only where z asks for them (the exact
        density of the generator differentiates the whole map)."""
        # Nothing to record for a backward pass unless z asks for it; autograd's bookkeeping was a fifth of the
        # ODE's time.
        with torch.set_grad_enabled(z.requires_grad):
            return self.map_with(self.reference.denoiser(cond), z)

    def map_with(self, denoise, x: Tensor) -> Tensor:
        """The base map with the given denoiser: the reference's, or its tangent form for the Jacobian."""
        if self.init == "ode":
            return probability_flow(denoise, x, self.schedule, ODE_STEPS)
        return denoise(x, self.t_init_alpha, self.t_init_sigma)

    def forward(self, z: Tensor, cond: Tensor) -> Tensor:
        base = self.base(z, cond)
        return base + self.residual(torch.cat([z.flatten(1), base.flatten(1)], 1), cond).reshape(z.shape)

    @torch.no_grad()
    def jacobian(self, z: Tensor, cond: Tensor) -> Tensor:
        """d g / d z [B, D, D], exact: the base's by carrying the identity's columns through the sampler with the
        reference's tangent denoiser (the solver is linear in what it carries), the small residual's by autograd's
        forward mode. Six times faster than forward mode through the whole map, with the same numbers."""
        flat = z.flatten(1)
        dim = flat.shape[1]
        carried = torch.cat([flat[:, None], torch.eye(dim, dtype=flat.dtype).expand(len(flat), dim, dim)], 1)
        mapped = self.map_with(self.reference.tangent_denoiser(cond), carried)
        base = mapped[:, 1:].transpose(1, 2)
        features = torch.cat([flat, mapped[:, 0]], 1)
        residual = vmap(jacfwd(lambda f, c: self.residual(f[None], c[None])[0]))(features, cond)
        return base + residual[..., :dim] + residual[..., dim:] @ base


class FakeScore(nn.Module):
    """eps-prediction, a copy of the teacher: the teacher's eps plus a learned correction that reads it.

    A copy's weights see the teacher's own computation, so the correction is given the teacher's prediction
    beside x_t. Within a mode the generator's eps differs from the teacher's by an affine function of the
    teacher's eps with O(1) coefficients at every noise level, which the correction's linear path holds; from
    x_t alone it needs coefficients of order sigma / s0^2 and must find the mode itself (measured: a fit that
    stalls at a third of the gap to a known law).

    The correction is preconditioned as EDM preconditions a denoiser (Karras et al., 2022): it enters the
    denoiser, which is what the methods' gradients consume (D_fake - D_ref under the denoiser weighting), scaled
    by c_out = s s_data / sqrt(s^2 + s_data^2), s = sigma / alpha; in eps that is a factor
    s_data / sqrt(s^2 + s_data^2) <= 1. Unscaled, a unit of network error costs s = sigma / alpha in the
    denoiser, about 120 at t = 0.98: the optimiser's stationary jitter of the fake (set by its learning rate, not
    by the batch) then dominated the generator's gradient at large t (README, Drift).
    """

    def __init__(self, reference: GaussianMixture, shape, hidden: int, data_std: float):
        super().__init__()
        self.reference, self.data_std = reference, data_std
        dim = math.prod(shape)
        self.residual = ResidualMLP(2 * dim, dim, reference.means.shape[0], hidden, timed=True, linear=True)

    def forward(self, x_t: Tensor, t: Tensor, alpha: Tensor, sigma: Tensor, cond: Tensor) -> Tensor:
        eps_ref = -broadcast(sigma, x_t) * self.reference.score(x_t, alpha, sigma, cond)
        features = torch.cat([x_t.flatten(1), eps_ref.flatten(1)], 1)
        scale = self.data_std / torch.sqrt((sigma / alpha) ** 2 + self.data_std**2)
        return eps_ref + broadcast(scale, x_t) * self.residual(features, cond, t).reshape(x_t.shape)


@dataclass
class AnalyticConfig:
    name: ClassVar[str] = "analytic"

    image_size: int = param(8, "side of the analytic world's images (3 x N x N pixels)", ge=2, le=64)
    prompts: int = param(8, "number of captions in the analytic world", ge=1, le=16)
    components: int = param(4, "mixture components per caption", ge=1, le=8)
    s0: float = param(0.1, "standard deviation of every mixture component", gt=0, le=1)
    skew: float = param(0.0, "mixture weights of a caption's components fall off as exp(-skew * rank), the "
                        "heaviest rotating with the caption (0: uniform)", ge=0, le=10)
    init: str = param("ode", "generator start: ode (the reference's probability-flow map, a one-step model with "
                      "the reference's law) or denoiser (the reference's denoiser at t_init on pure noise)",
                      choices=("ode", "denoiser"))
    t_init: float = param(0.25, "time at which the reference's denoiser reads the noise (init=denoiser)", gt=0, lt=1)
    hidden: int = param(256, "hidden width of the generator and fake-score networks", ge=8)
    path: str = param("vp", "the diffusion's Gaussian path: vp (alpha^2 + sigma^2 = 1, SD1.5/SDXL/PixArt) or flow "
                      "(flow matching, alpha = 1 - s and sigma = s, SD3)", choices=("vp", "flow"))
    shift: float = param(1.0, "flow matching's timestep shift (SD3: 3); path=flow only", gt=0, le=100)


class AnalyticBackend:
    Config = AnalyticConfig

    def __init__(self, cfg, device: torch.device):
        world = cfg.backend
        if world.path != "flow" and world.shift != 1:
            raise UsageError(f"backend.shift={world.shift} shifts flow matching's times; VP has none: add "
                             "backend.path=flow, or leave backend.shift unset")
        self.device = device
        self.shape = (3, world.image_size, world.image_size)
        self.captions, self.reference = picture_mixture(world.prompts, world.components, world.image_size, 3,
                                                        world.s0, world.skew)
        self.schedule = FlowSchedule(world.shift) if world.path == "flow" else VPSchedule()
        self.reward = build_reward(cfg.reward, self.captions, self.shape, cfg.weights or None)
        self.world = ExactWorld(self.reference, self.captions, self.reward, self.reward.quadratic_form(),
                                cfg.eval.target_alpha_rew or cfg.method.alpha_rew)
        self.generator = Generator(self.reference, self.schedule, world.init, world.t_init, self.shape,
                                   world.hidden)
        self.kl_samples = cfg.eval.kl_samples
        self.fake = FakeScore(self.reference, self.shape, world.hidden, self.reference.data_std())

    @property
    def optimum(self) -> GaussianMixture | None:
        """p*, KL-RLHF's optimum at the evaluation's alpha_rew, where the reward has a closed form."""
        return self.world.optimum

    def sample_inputs(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Generator noise z and caption ids for a batch."""
        cond = torch.randint(len(self.captions), (n,), generator=generator)
        return torch.randn((n, *self.shape), generator=generator), cond

    def encode(self, cond: Tensor) -> Tensor:
        """Captions are their ids here: the networks embed them themselves."""
        return cond.to(self.device)

    def ref_score(self, x: Tensor, t: Tensor, alpha: Tensor, sigma: Tensor, cond: Tensor | None) -> Tensor:
        return self.reference.score(x, alpha, sigma, cond)

    def eval_inputs(self, total: int, seed: int) -> tuple[Tensor, Tensor]:
        """The fixed evaluation set: the same noise and captions at every evaluation of every run.

        Image i is caption i // per_caption with `image_noise(shape, seed, i)`: the layout `bench eval` uses, so
        `bench eval n=PER_CAPTION seed=SEED` sees exactly the images the training's evaluations saw.
        """
        cond = self.world.eval_captions(total)
        return torch.stack([image_noise(self.shape, seed, i) for i in range(len(cond))]), cond

    def evaluate(self, generator: nn.Module, total: int, seed: int,
                 exact_kl: bool = True) -> tuple[dict[str, float], list[dict]]:
        """Metrics averaged over captions, and one row per caption (named) for the per-prompt view."""
        z, cond = self.eval_inputs(total, seed)
        with torch.no_grad():
            metrics, rows = self.metrics_of(generator(z, cond), cond, seed)
        if exact_kl:
            self.add_exact_kl(generator, z, cond, metrics, rows)
        return metrics, rows

    def add_exact_kl(self, generator: nn.Module, z: Tensor, cond: Tensor, metrics: dict, rows: list[dict]) -> None:
        """Exact KLs in nats from the first eval.kl_samples noises of each caption (a Jacobian a sample: about 10 ms
        each at 3 x 8 x 8), over the samples where the generator is one to one: kl_ref = KL(p_theta || p_ref) and,
        where the reward has a closed-form optimum, kl_star = KL(p_theta || p*), KL-RLHF's own objective less its
        minimum. kl_folded is the share of samples where the generator folds (left out: no single density holds).

        kl_star is taken sample by sample as log p_theta - log p*, which is log p_theta - log p_ref - alpha r + log Z:
        its spread vanishes as p_theta nears p*, where kl_ref - alpha E[r] from separate samples would keep alpha
        times the reward's sampling noise.
        """
        if not self.kl_samples:
            return
        laws = {"kl_ref": self.reference, **({"kl_star": self.optimum} if self.optimum is not None else {})}
        for row, caption in zip(rows, cond.unique().tolist(), strict=True):
            x, log_p = generator_log_density(generator, z[cond == caption][: self.kl_samples], caption)
            one_to_one = log_p.isfinite()
            for key, law in laws.items():
                ratio = (log_p - log_prob_clean(law, x, caption))[one_to_one]
                row[key] = float(ratio.mean()) if one_to_one.any() else float("nan")
            row["kl_folded"] = float(1 - one_to_one.float().mean())
        for key in (*laws, "kl_folded"):
            metrics[key] = sum(row[key] for row in rows) / len(rows)

    def metrics_of(self, x: Tensor, cond: Tensor, seed: int) -> tuple[dict[str, float], list[dict]]:
        return self.world.metrics(x, cond, seed)

    def image_scores(self, x: Tensor, cond: Tensor) -> dict[str, Tensor]:
        """Per-image scores for `bench eval`: the reward and the exact reference NLL (nats per dimension)."""
        zero = torch.zeros(len(cond))
        nll = -self.reference.log_prob(x, zero + 1, zero, cond) / self.reference.dim
        return {"reward": self.reward(x, cond), "nll_ref": nll}

    @staticmethod
    def to_pil(x: Tensor, scale: int = 4):
        from PIL import Image

        pixels = ((x.clamp(-1, 1).permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
        image = Image.fromarray(pixels)
        return image.resize((image.width * scale, image.height * scale), Image.NEAREST)

    def describe_optimum(self, total: int, seed: int) -> dict[str, float] | None:
        return self.world.describe_optimum(self.eval_inputs(total, seed)[1], seed)

    @torch.no_grad()
    def grid(self, generator: nn.Module, per_caption: int = 8, scale: int = 4):
        """Rows are captions, columns samples from the fixed evaluation noise; pixels enlarged for viewing."""
        z, cond = self.eval_inputs(per_caption * len(self.captions), seed=0)
        x = generator(z, cond).clamp(-1, 1)
        rows, side = len(self.captions), self.shape[-1]
        grid = x.reshape(rows, per_caption, 3, side, side).permute(0, 3, 1, 4, 2)
        return self.to_pil(grid.reshape(rows * side, per_caption * side, 3).permute(2, 0, 1), scale)
