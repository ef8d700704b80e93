"""DI++: reward maximisation regularised by the Integral KL divergence to the CFG-guided reference.

Objective: -alpha_rew E[r(x0, c)] + int w(t) KL(p_theta,t || p~_ref,t) dt. A guided reference is itself an
implicit reward (CFG as RLHF), so alpha_cfg matters as much as alpha_rew.
"""

from dataclasses import dataclass

from bench.method import GeneratorBatch, Method, ikl_surrogate, retune


@dataclass
class DIpp(Method):
    alpha_rew: float = retune("alpha_rew", 0.2)

    def regulariser(self, b: GeneratorBatch):
        return ikl_surrogate(b, b.cfg)
