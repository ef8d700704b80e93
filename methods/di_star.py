"""DI*: reward maximisation regularised by a pseudo-Huber score divergence to the CFG-guided reference.

Objective: -alpha_rew E[r] + int w(t) E_{p_theta,t}[d(s_theta,t - s~_ref,t)] dt, d(y) = sqrt(|y|^2 + c^2) - c.

The divergence is intractable but its gradient is not. With every network's parameters frozen and the
gradient flowing only through x_t = alpha_t g_theta(z, c) + sigma_t eps,

    y = s_fake(x_t) - s~_ref(x_t),   n = -eps / sigma_t,   loss_t = d(y) - d'(y)^T (s_fake(x_t) - n)

has exactly the divergence's gradient when s_fake is the generator's score: the second term is the
theta-dependence of s_theta, turned by integration by parts into E[-div u - u^T s] with u = d'(y) held as a
function, and the divergence replaced through E_{p_t}[div u] = -E[u^T grad log p(x_t | x0)]. Nothing is
detached: d'(y) and s_fake stay functions of x_t.

estimator=sim is the Score Implicit Matching form -d'(sg[y])^T (s~_ref(x_t) - n), kept for comparison: it gets
the gradient of the mean right but not that of the spread.
"""

from dataclasses import dataclass

import torch

from bench.diffusion import broadcast, inner
from bench.fields import param
from bench.method import GeneratorBatch, Method, retune


@dataclass
class DIStar(Method):
    alpha_rew: float = retune("alpha_rew", 0.2)
    c: float = param(1.0, "pseudo-Huber constant c in d(y) = sqrt(|y|^2 + c^2) - c", gt=0)
    estimator: str = param("exact", "gradient estimator: exact, or sim (Score Implicit Matching form)",
                           choices=("exact", "sim"))
    cfg: str = param("inside", "CFG inside d (y uses the guided score) or outside (added as implicit reward)",
                     choices=("inside", "outside"))

    def regulariser(self, b: GeneratorBatch):
        inside = self.cfg == "inside"
        s_fake = b.fake_score(b.x_t)
        s_ref = b.ref_score(b.x_t, b.cfg if inside else 1.0)
        y = s_fake - s_ref
        norm = torch.sqrt(y.pow(2).flatten(1).sum(1) + self.c**2)
        d_prime = y / broadcast(norm, y)
        noise_score = -b.eps / b.sigma
        if self.estimator == "exact":
            loss = (norm - self.c) - inner(d_prime, s_fake - noise_score)
        else:
            loss = -inner(d_prime.detach(), s_ref - noise_score)
        b.logs["div"] = (norm - self.c).mean().detach()
        loss = b.weight * loss
        if not inside and b.cfg != 1:
            # sg[s~ - s_c] = (alpha_cfg - 1) sg[s_c - s_u]: the guidance as a DI++-style implicit reward.
            with torch.no_grad():
                direction = b.ref_cond(b.x_t) - b.ref_uncond(b.x_t)
            loss = loss - (b.cfg - 1) * b.weight * inner(direction, b.x_t)
        return loss
