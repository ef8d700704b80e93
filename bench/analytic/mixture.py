"""Isotropic Gaussian mixtures under VP diffusion, with everything in closed form.

p_t(x | c) = sum_m pi_cm N(x; alpha_t mu_cm, V_t I), V_t = alpha_t^2 var + sigma_t^2, so the diffused
log-density, score and denoiser E[x0 | x_t] are exact log-sum-exp expressions. The unconditional law is the
uniform mixture over captions, which is what classifier-free guidance needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from bench.diffusion import broadcast


@dataclass
class GaussianMixture:
    """means [P, M, D] (caption, component, pixel), log_weights [P, M] normalised per caption, scalar var."""

    means: Tensor
    log_weights: Tensor
    var: float

    def float(self) -> GaussianMixture:
        return GaussianMixture(self.means.float(), self.log_weights.float(), self.var)

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    def _components(self, cond: Tensor | None, batch: int) -> tuple[Tensor, Tensor]:
        """Per-sample component means [B, K, D] and log weights [B, K]; cond None is the unconditional law."""
        if cond is None:
            captions = self.means.shape[0]
            means = self.means.reshape(1, -1, self.dim).expand(batch, -1, -1)
            logw = (self.log_weights.reshape(1, -1) - math.log(captions)).expand(batch, -1)
            return means, logw
        return self.means[cond], self.log_weights[cond]

    def _responsibilities(self, x: Tensor, alpha: Tensor, sigma: Tensor, cond: Tensor | None):
        flat = x.flatten(1)
        means, logw = self._components(cond, flat.shape[0])
        a = alpha.reshape(-1, 1, 1)
        v = (alpha**2 * self.var + sigma**2).reshape(-1, 1)
        sq = (flat.unsqueeze(1) - a * means).pow(2).sum(-1)
        logits = logw - sq / (2 * v)
        return flat, means, a, v, logits

    def log_prob(self, x: Tensor, alpha: Tensor, sigma: Tensor, cond: Tensor | None) -> Tensor:
        *_, v, logits = self._responsibilities(x, alpha, sigma, cond)
        return torch.logsumexp(logits, -1) - 0.5 * self.dim * torch.log(2 * math.pi * v.squeeze(1))

    def score(self, x: Tensor, alpha: Tensor, sigma: Tensor, cond: Tensor | None) -> Tensor:
        flat, means, a, v, logits = self._responsibilities(x, alpha, sigma, cond)
        r = logits.softmax(-1).unsqueeze(-1)
        return ((r * a * means).sum(1) - flat).div(v).reshape(x.shape)

    def denoise(self, x: Tensor, alpha: Tensor, sigma: Tensor, cond: Tensor | None) -> Tensor:
        """E[x0 | x_t] = (x_t + sigma_t^2 score) / alpha_t (Tweedie)."""
        score = self.score(x, alpha, sigma, cond)
        return (x + broadcast(sigma, x) ** 2 * score) / broadcast(alpha, x)

    def posterior_mean(self, x: Tensor, alpha: Tensor, sigma: Tensor, cond: Tensor | None) -> Tensor:
        """E[x0 | x_t] per sample from the components' posteriors, m + (alpha var / V)(x_t - alpha m), m their
        responsibility-weighted mean: denoise()'s value without its division by alpha, so also at flow matching's
        pure noise (alpha 0), where it is the caption's mean."""
        flat, means, _, v, logits = self._responsibilities(x, alpha, sigma, cond)
        mean = (logits.softmax(-1).unsqueeze(-1) * means).sum(1)
        a = alpha.reshape(-1, 1)
        return (mean + a * self.var / v * (flat - a * mean)).reshape(x.shape)

    def denoiser(self, cond: Tensor) -> Callable[[Tensor, float, float], Tensor]:
        """E[x0 | x_t] for captions `cond` at a time every sample shares (a sampler's step), as a function of
        (x_t, alpha, sigma): the same posterior mean as denoise(), with the captions' components found once.

        Per component E[x0 | x_t, m] = mu + (alpha var / V)(x_t - alpha mu); |x_t|^2 is common to the components
        and leaves the responsibilities, so they need only mu . x_t: one product with every component's mean (a
        single matrix product is far cheaper than a batch of tiny ones), of which each sample keeps its caption's.
        """
        components = self.means.shape[1]
        means = self.means.reshape(-1, self.dim)
        index = (cond.reshape(-1, 1) * components + torch.arange(components, device=cond.device)).to(means.device)
        logw = self.log_weights[cond]
        half_norms = 0.5 * means.pow(2).sum(-1)[index]

        def denoise(x: Tensor, alpha: float, sigma: float) -> Tensor:
            # The sampler's inner loop: scalars folded into add's alpha and in-place ops, a tenth of its time.
            flat = x.flatten(1)
            v = alpha**2 * self.var + sigma**2
            logits = torch.add(logw, half_norms, alpha=-(alpha**2) / v).add_(
                (flat @ means.T).gather(1, index), alpha=alpha / v)
            weights = torch.zeros(len(flat), len(means), dtype=flat.dtype, device=flat.device)
            mean = weights.scatter_(1, index, logits.softmax(-1)) @ means
            gain = alpha * self.var / v
            return mean.mul_(1 - alpha * gain).add_(flat, alpha=gain).reshape(x.shape)

        return denoise

    def tangent_denoiser(self, cond: Tensor) -> Callable[[Tensor, float, float], Tensor]:
        """denoiser(cond) carrying tangent vectors: input [B, 1 + n, D] is a point and n directions, output the
        posterior mean at the point and its Jacobian applied to each direction (forward-mode by hand).

        The mean is m = sum_k p_k mu_k with logits linear in x (slope alpha mu_k / v), so its Jacobian applied to
        u is (alpha / v) sum_k p_k (mu_k . u - sum_j p_j mu_j . u) mu_k: a few products with the caption's K means,
        where autograd's forward mode pays its bookkeeping on every operation of every solver step.
        """
        means, logw = self.means[cond], self.log_weights[cond]
        half_norms = 0.5 * means.pow(2).sum(-1)

        def denoise(x: Tensor, alpha: float, sigma: float) -> Tensor:
            v = alpha**2 * self.var + sigma**2
            along = x @ means.transpose(1, 2)  # [B, 1 + n, K]: mu_k . x for the point, mu_k . u for each direction
            p = (logw + alpha * (along[:, 0] - alpha * half_norms) / v).softmax(-1)[:, None]
            tangent = (alpha / v) * (p * (along[:, 1:] - (p * along[:, 1:]).sum(-1, keepdim=True))) @ means
            gain = alpha * self.var / v
            mean = torch.cat([p @ means, tangent], 1)
            return (1 - alpha * gain) * mean + gain * x

        return denoise

    def sample(self, cond: Tensor, generator: torch.Generator) -> Tensor:
        means, logw = self._components(cond, cond.shape[0])
        pick = torch.multinomial(logw.exp(), 1, generator=generator).squeeze(1)
        chosen = means[torch.arange(cond.shape[0]), pick]
        return chosen + math.sqrt(self.var) * torch.randn(chosen.shape, generator=generator)

    def assign(self, x: Tensor, cond: Tensor) -> Tensor:
        """Most responsible component of each clean sample (its mode)."""
        zero = torch.zeros(x.shape[0])
        return self._responsibilities(x, zero + 1, zero, cond)[-1].argmax(-1)

    def moments(self, caption: int) -> tuple[Tensor, Tensor]:
        """Exact mean and covariance of one caption's clean law (for Frechet distances)."""
        w = self.log_weights[caption].exp()
        mu = self.means[caption]
        mean = w @ mu
        centred = mu - mean
        cov = centred.T @ (w[:, None] * centred) + self.var * torch.eye(self.dim)
        return mean, cov

    def log_normaliser(self, curvature: float, slope: Tensor, alpha_rew: float) -> Tensor:
        """log E_p[exp(alpha_rew (-curvature |x|^2 + slope . x))] per caption: the log Z of p* in closed form.

        A component contributes (var P)^(-D/2) exp(gain), P and gain as in tilt; a constant term of the reward adds
        alpha_rew times itself.
        """
        precision, _, gain = self._tilted(curvature, slope, alpha_rew)
        return torch.logsumexp(self.log_weights + gain, -1) - 0.5 * self.dim * math.log(self.var * precision)

    def data_std(self) -> float:
        """The clean law's standard deviation per pixel, averaged over captions: EDM's sigma_data."""
        captions = self.means.shape[0]
        return math.sqrt(sum(float(torch.trace(self.moments(c)[1])) for c in range(captions)) / (captions * self.dim))

    def tilt(self, curvature: float, slope: Tensor, alpha_rew: float) -> GaussianMixture:
        """The KL-optimal aligned law p* ~ p exp(alpha_rew r) for r(x) = -curvature |x|^2 + slope . x.

        Each component stays Gaussian with precision P = 1/var + 2 a q and mean (mu / var + a b) / P; its
        weight gains exp(P |mu'|^2 / 2 - |mu|^2 / (2 var)) (the common normalising factor cancels).
        """
        precision, means, gain = self._tilted(curvature, slope, alpha_rew)
        return GaussianMixture(means, torch.log_softmax(self.log_weights + gain, -1), 1 / precision)

    def _tilted(self, curvature: float, slope: Tensor, alpha_rew: float) -> tuple[float, Tensor, Tensor]:
        """Each component times exp(alpha_rew r): precision P, mean m, log gain P |m|^2 / 2 - |mu|^2 / (2 var)."""
        precision = 1 / self.var + 2 * alpha_rew * curvature
        means = (self.means / self.var + alpha_rew * slope) / precision
        return precision, means, 0.5 * precision * means.pow(2).sum(-1) - self.means.pow(2).sum(-1) / (2 * self.var)

