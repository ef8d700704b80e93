"""Plain KL-RLHF: -alpha_rew E[r] + KL(p_theta || p_ref) at the data level, the textbook baseline.

Its optimum is p* ~ p_ref exp(alpha_rew r). For an implicit generator the KL gradient is
E[(s_theta(x0) - s_ref(x0))^T dx0/dtheta]: the DI++ surrogate at one small noise level with w = 1. The only
difference from DI++ is the time distribution, which is exactly the "integral" in Integral KL.
"""

from dataclasses import dataclass

from bench.method import retune
from methods.di_pp import DIpp


@dataclass
class KLRLHF(DIpp):
    alpha_rew: float = retune("alpha_rew", 20.0)
    time: str = retune("time", "point")
    t_min: float = retune("t_min", 0.005)
    weighting: str = retune("weighting", "uniform")
