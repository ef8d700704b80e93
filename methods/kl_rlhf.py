"""Plain KL-RLHF: -alpha_rew E[r] + KL(p_theta || p~_ref) at the data level, the textbook baseline.

Its optimum is the tilted reference p* ~ p~_ref exp(alpha_rew r). The estimator works at one small noise level
t, where a fake score can be fitted, and is still aimed at p* itself:

    KL(p_theta,t || p*_t) = KL(p_theta,t || p~_ref,t) - alpha_rew E[r~_t(x_t)] + const,
    r~_t(x) = log E_{p~_ref(x0 | x_t = x)}[exp(alpha_rew r(x0))] / alpha_rew,

and Gaussian smoothing loses nothing (p_t = q_t only if p = q), so this divergence between p_theta and p* is
zero at p* alone, at any t. Its gradient is the DI++ surrogate at t, plus the reward carried to x_t by the
reference's denoiser: r~_t(x_t) ~ r(D~_ref(x_t)), exact for a linear reward where the reference is locally
Gaussian; otherwise the reward's curvature is off by a factor 1 / (1 + alpha_rew v_t), v_t <= sigma_t^2 / alpha_t^2
the posterior variance. Scoring r(x0) against a KL at t instead would tilt by 1 + sigma_t^2 / (alpha_t^2 s^2), s
the data's local spread.

Both terms are weighted by w(t) = sigma_t^2 / alpha_t^2. That leaves the minimiser where it is and puts the loss
in the denoiser's units, as DI++'s and DI*'s are: the regulariser's gradient is D_fake - D_ref. In the score's
units (w = 1) the loss was 1 / w = 170 times theirs at t = 0.02, so under the trainer's shared SGD learning rate
every step was clipped to the full lr x clip along the fake score's error, and it took four fake updates a step to
hold the generator at the reference; in these units one does (README, Drift).

The time is the shared t_min, 0.02 (sigma_t 0.077), where the curvature's bias at the default alpha_rew 20 is 6%
(s0 0.08) to 10% (s0 0.2).
"""

from dataclasses import dataclass

from bench.method import GeneratorBatch, diffused_reward, retune
from methods.di_pp import DIpp


@dataclass
class KLRLHF(DIpp):
    aims_at_p_star = True
    alpha_rew: float = retune("alpha_rew", 20.0)
    time: str = retune("time", "point")

    def reward_term(self, b: GeneratorBatch):
        return diffused_reward(b)
