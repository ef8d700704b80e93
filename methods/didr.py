"""DIDR: Diff-Instruct with Diffused Reward (2026): the Integral KL to the reward-tilted reference at every t.

Objective: int w(t) KL(p_theta,t || p*_t) dt with p* ~ p~_ref exp(alpha_rew r). Each term is zero at p_theta = p*
alone, so its minimiser is KL-RLHF's. The tilt at noise level t is the diffused reward score
grad log E_{p~_ref(x0 | x_t)}[exp(alpha_rew r(x0))], which the paper estimates by the reward of a short,
differentiable denoise of x_t through the reference (its Diffused Reward Proxy): here `denoise_steps` DDIM steps.
Its gradient is the DI++ surrogate at t plus that diffused reward; KL-RLHF is the same at one small t. One step
(the default, ours) is Tweedie's posterior mean, which makes the proxy exact for a linear reward where the reference
is locally Gaussian; more steps end where the probability-flow ODE does, a sharper x0 that an image reward model
reads as it was trained to, at the price of that exactness and of k reference calls.

The proxy sees a reward's curvature c as c where the diffused score has c / (1 + alpha_rew c v_t), v_t <=
sigma_t^2 / alpha_t^2 the posterior variance at t (0.03 at t 0.05, 0.12 at 0.1, 1.5 at 0.3), and its step on a
curved reward grows with v_t. Both bound the time range on the analytic family's quadratic worlds at alpha_rew 20
(README, The methods' estimators): up to t 0.3 the 3-mode world diverged, up to 0.07 the 2-mode 8-pixel world did,
up to 0.05 both reach p*. So the default range is [0.02, 0.05] (ours); every t in it still has p* as its minimiser.
"""

from dataclasses import dataclass

from bench.fields import param
from bench.method import GeneratorBatch, diffused_reward, retune
from methods.di_pp import DIpp


@dataclass
class DIDR(DIpp):
    aims_at_p_star = True
    alpha_rew: float = retune("alpha_rew", 20.0)
    t_max: float = retune("t_max", 0.05)
    denoise_steps: int = param(1, "DDIM steps of the differentiable denoise that carries the reward to x_t",
                               ge=1, le=50)

    def reward_term(self, b: GeneratorBatch):
        return diffused_reward(b, self.denoise_steps)
