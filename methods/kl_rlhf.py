"""Plain KL-RLHF: -alpha_rew E[r] + KL(p_theta || p~_ref) at the data level, the textbook baseline.

Its optimum is the tilted reference p* ~ p~_ref exp(alpha_rew r). The estimator works at one small noise level
t, where a fake score can be fitted, and is still aimed at p* itself:

    KL(p_theta,t || p*_t) = KL(p_theta,t || p~_ref,t) - alpha_rew E[r~_t(x_t)] + const,
    r~_t(x) = log E_{p~_ref(x0 | x_t = x)}[exp(alpha_rew r(x0))] / alpha_rew,

and Gaussian smoothing loses nothing (p_t = q_t only if p = q), so this divergence between p_theta and p* is
zero at p* alone, at any t. Its gradient is the DI++ surrogate at t, plus the reward carried to x_t by the
reference's denoiser: r~_t(x_t) ~ r(D~_ref(x_t)), exact for a linear reward where the reference is locally
Gaussian; otherwise off by O(alpha_rew sigma_t^2 / alpha_t^2 * the reward's curvature). Scoring r(x0) against
a KL at t instead would tilt by 1 + sigma_t^2 / (alpha_t^2 s^2), s the data's local spread: 16% at s = 0.08.
"""

from dataclasses import dataclass

from bench.method import GeneratorBatch, retune
from methods.di_pp import DIpp


@dataclass
class KLRLHF(DIpp):
    alpha_rew: float = retune("alpha_rew", 20.0)
    fake_steps: int = retune("fake_steps", 4)
    time: str = retune("time", "point")
    t_min: float = retune("t_min", 0.005)
    weighting: str = retune("weighting", "uniform")

    def reward_term(self, b: GeneratorBatch):
        return b.reward(b.denoised(b.x_t, self.alpha_cfg))
