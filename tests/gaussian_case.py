"""A Gaussian generator against a Gaussian reference under a Gaussian path x_t = alpha_t x0 + sigma_t eps (VP
diffusion or flow matching): every law is Gaussian, so the divergences the methods regularise are available in
closed form (KL) or by plain autograd through exact scores (pseudo-Huber score divergence). The methods' surrogates
are checked against them, on both paths: nothing in a method may depend on which one it is given.
"""

from __future__ import annotations

import torch

from bench.diffusion import FlowSchedule, VPSchedule, broadcast
from bench.method import GeneratorBatch

DIM = 3
TIMES = (0.05, 0.15, 0.3, 0.5, 0.7, 0.9)


# The two instances of the Gaussian path the core is written for; flow matching with SD3's shift.
SCHEDULES = {"vp": VPSchedule(), "flow": FlowSchedule(shift=3.0)}


def gaussian_score(x, mean, cov):
    return -torch.linalg.solve(cov, (x - mean).T).T


def kl_gaussians(m0, c0, m1, c1):
    """KL(N(m0, c0) || N(m1, c1))."""
    diff = m1 - m0
    return 0.5 * (
        torch.trace(torch.linalg.solve(c1, c0)) + diff @ torch.linalg.solve(c1, diff) - len(m0)
        + torch.logdet(c1) - torch.logdet(c0)
    )


class GaussianCase:
    """Generator x0 = mu + L z; reference N(m, S); reward r(x) = v . x (v = 0 unless given). Parameters mu
    and L carry gradients."""

    def __init__(self, mu, chol, ref_mean, ref_cov, samples_per_time: int, seed: int = 0, reward=None,
                 schedule=SCHEDULES["vp"]):
        self.schedule = schedule
        self.mu = mu.clone().requires_grad_(True)
        self.chol = chol.clone().requires_grad_(True)
        self.ref_mean, self.ref_cov = ref_mean, ref_cov
        self.reward_weights = torch.zeros(DIM, dtype=torch.float64) if reward is None else reward
        gen = torch.Generator().manual_seed(seed)
        n = samples_per_time * len(TIMES)
        self.t = torch.tensor(TIMES).repeat_interleave(samples_per_time)
        self.z = torch.randn(n, DIM, generator=gen, dtype=torch.float64)
        self.eps = torch.randn(n, DIM, generator=gen, dtype=torch.float64)
        alpha, sigma = self.noise_level(self.t)
        self.alpha, self.sigma = alpha, sigma

    def noise_level(self, t):
        return self.schedule.alpha_sigma(torch.as_tensor(t, dtype=torch.float64))

    def params(self):
        return [self.mu, self.chol]

    def marginal(self, alpha, sigma, mu, chol):
        cov = alpha**2 * chol @ chol.T + sigma**2 * torch.eye(DIM, dtype=torch.float64)
        return alpha * mu, cov

    def per_time(self, fn):
        """fn(rows, alpha, sigma) evaluated on each time's block of rows, stacked back in order."""
        out = []
        for t in TIMES:
            rows = (self.t == t).nonzero().squeeze(1)
            out.append(fn(rows, self.alpha[rows[0]], self.sigma[rows[0]]))
        return torch.cat(out)

    def x_t(self):
        x0 = self.mu + self.z @ self.chol.T
        return x0, broadcast(self.alpha, x0) * x0 + broadcast(self.sigma, x0) * self.eps

    def generator_score(self, x, *, frozen: bool):
        mu, chol = (self.mu.detach(), self.chol.detach()) if frozen else (self.mu, self.chol)
        return self.per_time(lambda rows, a, s: gaussian_score(x[rows], *self.marginal(a, s, mu, chol)))

    def ref_score(self, x):
        return self.per_time(
            lambda rows, a, s: gaussian_score(x[rows], a * self.ref_mean,
                                              a**2 * self.ref_cov + s**2 * torch.eye(DIM, dtype=torch.float64))
        )

    def ref_score_at(self, x, t):
        """The reference's score at per-sample times t (any times, not only the grid's)."""
        alpha, sigma = (broadcast(v, x) for v in self.noise_level(t))
        # N(alpha m, alpha^2 S + sigma^2 I), solved sample by sample since each has its own time.
        cov = alpha.unsqueeze(-1) ** 2 * self.ref_cov + sigma.unsqueeze(-1) ** 2 * torch.eye(DIM, dtype=torch.float64)
        return -torch.linalg.solve(cov, (x - alpha * self.ref_mean).unsqueeze(-1)).squeeze(-1)

    def batch(self, method) -> GeneratorBatch:
        """What the trainer would hand the method, with the exact generator score as the fake score."""
        x0, x_t = self.x_t()
        return GeneratorBatch(
            x0=x0, x_t=x_t, eps=self.eps, t=self.t.double(),
            alpha=broadcast(self.alpha, x0), sigma=broadcast(self.sigma, x0),
            weight=method.weight(self.alpha, self.sigma), cfg=method.alpha_cfg,
            fake_score=lambda x: self.generator_score(x, frozen=True),
            ref_cond=self.ref_score, ref_uncond=self.ref_score,
            ref_at=lambda x, t, conditional: self.ref_score_at(x, t), noise_level=self.noise_level,
            reward=lambda x: x @ self.reward_weights,
        )

    def integrated_kl(self, weight):
        """Mean over the time grid of w(t) KL(p_theta,t || p_ref,t), in closed form; `weight(alpha, sigma)`."""
        total = 0
        for t in TIMES:
            alpha, sigma = self.noise_level(t)
            w = weight(alpha, sigma)
            gen = self.marginal(alpha, sigma, self.mu, self.chol)
            ref = self.marginal(alpha, sigma, self.ref_mean, torch.linalg.cholesky(self.ref_cov))
            total = total + w * kl_gaussians(*gen, *ref)
        return total / len(TIMES)

    def kl_to_diffused_optimum(self, alpha_rew: float, weight):
        """Mean over the time grid of w(t) KL(p_theta,t || p*_t), p* ~ N(m, S) exp(alpha_rew v . x) = N(m + alpha_rew
        S v, S) diffused to t, in closed form; `weight(alpha, sigma)`."""
        optimum_mean = self.ref_mean + alpha_rew * self.ref_cov @ self.reward_weights
        total = 0
        for t in TIMES:
            alpha, sigma = self.noise_level(t)
            gen = self.marginal(alpha, sigma, self.mu, self.chol)
            total = total + weight(alpha, sigma) * kl_gaussians(*gen, *self.marginal(
                alpha, sigma, optimum_mean, torch.linalg.cholesky(self.ref_cov)))
        return total / len(TIMES)

    def grad(self, scalar):
        return torch.autograd.grad(scalar, self.params())
