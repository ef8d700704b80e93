"""The methods' surrogate losses have the gradients of the divergences they claim (acceptance b, c, d), on both
Gaussian paths the core is written for (VP diffusion and flow matching): a method that assumed VP's
alpha^2 + sigma^2 = 1 anywhere would fail under flow matching."""

import pytest
import torch

from bench.config import build_config
from bench.diffusion import WEIGHTINGS, VPSchedule, ddim_denoise, time_weight
from bench.train.trainer import GENERATOR_PHASE, Trainer
from methods.di_pp import DIpp
from methods.di_star import DIStar
from methods.didr import DIDR
from methods.dmd import DMD
from methods.kl_rlhf import KLRLHF

from conftest import backend_args
from gaussian_case import SCHEDULES, GaussianCase

SAMPLES = 60_000
# Every time weighting, written out: the methods' own `weight` must agree, and the exact divergences use these.
CLOSED_FORM_WEIGHTS = {"uniform": lambda alpha, sigma: 1.0, "denoiser": lambda alpha, sigma: sigma**2 / alpha**2}


def relative_error(estimate, exact):
    return float((estimate - exact).norm() / exact.norm())


@pytest.fixture(scope="module", params=sorted(SCHEDULES))
def case(request):
    torch.manual_seed(0)
    ref_mean = torch.tensor([0.5, -0.3, 0.2], dtype=torch.float64)
    a = torch.tensor([[0.6, 0.0, 0.0], [0.2, 0.4, 0.0], [-0.1, 0.3, 0.5]], dtype=torch.float64)
    mu = torch.tensor([-0.2, 0.4, 0.1], dtype=torch.float64)
    chol = torch.tensor([[0.9, 0.0, 0.0], [-0.3, 0.7, 0.0], [0.2, 0.1, 1.1]], dtype=torch.float64)
    return GaussianCase(mu, chol, ref_mean, a @ a.T, SAMPLES, schedule=SCHEDULES[request.param])


def test_every_time_weighting_is_its_closed_form():
    assert set(CLOSED_FORM_WEIGHTS) == set(WEIGHTINGS)
    alpha, sigma = VPSchedule().alpha_sigma(torch.tensor([0.005, 0.02, 0.3, 0.7, 0.98], dtype=torch.float64))
    for kind, closed_form in CLOSED_FORM_WEIGHTS.items():
        torch.testing.assert_close(time_weight(kind, alpha, sigma), closed_form(alpha, sigma) + 0 * alpha)


@pytest.mark.parametrize("weighting", sorted(CLOSED_FORM_WEIGHTS))
def test_ikl_surrogate_gradient_matches_closed_form_integrated_kl(case, weighting):
    method = DIpp(weighting=weighting)
    surrogate = case.grad(method.regulariser(case.batch(method)).mean())
    exact = case.grad(case.integrated_kl(CLOSED_FORM_WEIGHTS[weighting]))
    for name, got, want in zip(("mean", "scale"), surrogate, exact, strict=True):
        assert relative_error(got, want) < 0.05, (name, got, want)


@pytest.mark.parametrize("method", [KLRLHF(alpha_rew=2.0), DIDR(alpha_rew=2.0)], ids=lambda m: m.name)
def test_diffused_reward_loss_has_the_gradient_of_the_kl_to_the_diffused_optimum(case, method):
    """KL-RLHF's and DIDR's loss at time t, w(t) [(s_fake - s~_ref) . x_t - alpha_rew r(D_ref(x_t))], against autograd
    of the closed-form w(t) KL(p_theta,t || p*_t) with p* the reward-tilted reference, at six times far from t = 0.

    Two plausible mistakes give the gradient of another objective, and fail here: scoring r(x0) instead of
    r(D_ref(x_t)), the diffused reward differentiated at x0 rather than x_t (its optimum tilts by
    1 + sigma_t^2 / (alpha_t^2 s^2)), and weighting the regulariser by w(t) but not the reward (its optimum is tilted
    by alpha_rew / w(t), not alpha_rew).
    """
    tilted = GaussianCase(case.mu.detach(), case.chol.detach(), case.ref_mean, case.ref_cov, SAMPLES,
                          reward=torch.tensor([0.8, -0.4, 0.3], dtype=torch.float64), schedule=case.schedule)
    exact = tilted.grad(tilted.kl_to_diffused_optimum(method.alpha_rew, CLOSED_FORM_WEIGHTS[method.weighting]))

    def gradient(reward_term):
        batch = tilted.batch(method)
        return tilted.grad((method.regulariser(batch) - method.alpha_rew * reward_term(batch)).mean())

    for name, got, want in zip(("mean", "scale"), gradient(method.reward_term), exact, strict=True):
        assert relative_error(got, want) < 0.05, (name, got, want)
    at_x0 = gradient(lambda b: b.weight * b.reward_x0)
    unweighted = gradient(lambda b: b.reward(b.denoised(b.x_t, method.alpha_cfg)))
    assert relative_error(at_x0[0], exact[0]) > 0.2
    assert relative_error(unweighted[0], exact[0]) > 0.1  # the right one: 0.0003


def pseudo_huber_divergence(case, method):
    """Mean over the time grid of w(t) E[d(s_theta,t - s_ref,t)], differentiated through everything."""
    _, x_t = case.x_t()
    y = case.generator_score(x_t, frozen=False) - case.ref_score(x_t)
    d = torch.sqrt(y.pow(2).sum(1) + method.c**2) - method.c
    return (method.weight(case.alpha, case.sigma) * d).mean()


@pytest.mark.parametrize("c", [0.3, 3.0])
def test_di_star_exact_estimator_matches_score_divergence_gradient(case, c):
    """Holds with NO stop-gradient: d'(y) and the fake score stay functions of x_t; only the networks'
    parameters are frozen (here: the generator score's mu and L are detached inside the fake score)."""
    method = DIStar(c=c, weighting="uniform")
    surrogate = case.grad(method.regulariser(case.batch(method)).mean())
    exact = case.grad(pseudo_huber_divergence(case, method))
    for name, got, want in zip(("mean", "scale"), surrogate, exact, strict=True):
        assert relative_error(got, want) < 0.05, (name, got, want)


def test_detaching_d_prime_breaks_the_spread_gradient(case):
    """The SIM form (d' detached, reference score in the inner product) is right only for the mean:
    here the mean gradient agrees to 0.1% and the scale gradient is about 15% off."""
    method = DIStar(c=0.3, weighting="uniform", estimator="sim")
    surrogate = case.grad(method.regulariser(case.batch(method)).mean())
    exact = case.grad(pseudo_huber_divergence(case, method))
    assert relative_error(surrogate[0], exact[0]) < 0.02
    assert relative_error(surrogate[1], exact[1]) > 0.10


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("method", [DIpp(), KLRLHF(), DIDR(), DMD(), DIStar(), DIStar(estimator="sim")], ids=repr)
def test_generator_equal_to_reference_is_a_fixed_point(method, schedule):
    ref_mean = torch.tensor([0.5, -0.3, 0.2], dtype=torch.float64)
    chol = torch.tensor([[0.6, 0.0, 0.0], [0.2, 0.4, 0.0], [-0.1, 0.3, 0.5]], dtype=torch.float64)
    at_reference = GaussianCase(ref_mean, chol, ref_mean, chol @ chol.T, 2000, schedule=SCHEDULES[schedule])
    moved = GaussianCase(ref_mean + 0.3, chol, ref_mean, chol @ chol.T, 2000, schedule=SCHEDULES[schedule])
    still = at_reference.grad(method.regulariser(at_reference.batch(method)).mean())
    pushed = moved.grad(method.regulariser(moved.batch(method)).mean())
    for g_still, g_pushed in zip(still, pushed, strict=True):
        assert g_still.norm() < 1e-6 * max(1.0, g_pushed.norm())
    assert pushed[0].norm() > 1e-3


@pytest.mark.parametrize("backend", ["analytic", "sd15", "pixart_alpha", "sd3"])
def test_ikl_surrogate_gradient_in_x0_is_alpha_w_score_gap_on_a_real_batch(backend, tiny_models):
    """On each backend's own networks: d/dx0 of the DI++ surrogate is alpha_t w(t) (s_psi - s~_ref)(x_t)."""
    cfg = build_config(["method=di_pp", "method.alpha_cfg=1.7", *backend_args(tiny_models, backend)])
    trainer = Trainer(cfg, run=None, progress=False)  # only its networks and noise are used here
    with torch.no_grad():  # a fake score that differs from the reference (it starts as a copy)
        for p in trainer.fake.parameters():
            p.add_(0.1 * torch.randn_like(p))
    d = trainer.draw(GENERATOR_PHASE)
    x0 = trainer.generator(d["z"], d["cond"]).detach().requires_grad_(True)
    batch = trainer.generator_batch(x0, d["t"], d["eps"], d["cond"])
    (grad,) = torch.autograd.grad(trainer.method.regulariser(batch).sum(), x0)
    with torch.no_grad():
        gap = batch.fake_score(batch.x_t) - batch.ref_score(batch.x_t, 1.7)
    expected = batch.alpha * batch.weight.reshape(-1, 1, 1, 1) * gap
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))
    assert gap.abs().mean() > 1e-3
    # DI++'s default weighting is DMD's x0-space gradient: the two denoisers' difference, by Tweedie from the
    # networks' own eps predictions.
    with torch.no_grad():
        fake_eps = trainer.unwrapped(trainer.fake)(batch.x_t, d["t"], *trainer.schedule.alpha_sigma(d["t"]), d["cond"])
        fake_x0 = (batch.x_t - batch.sigma * fake_eps.float()) / batch.alpha
        ref_x0 = batch.denoised(batch.x_t, 1.7)
    torch.testing.assert_close(grad, fake_x0 - ref_x0, rtol=1e-4, atol=1e-5 * float(grad.abs().max()))



def gaussian_flow_endpoint(case, x_t, t):
    """Where the probability-flow ODE of the Gaussian reference N(m, S) takes x_t at time t: m + S^1/2 C^-1/2
    (x_t - alpha m), C = alpha^2 S + sigma^2 I (every matrix shares S's eigenvectors)."""
    alpha, sigma = (float(v) for v in case.noise_level(t))
    values, vectors = torch.linalg.eigh(case.ref_cov)
    gain = vectors @ torch.diag((values / (alpha**2 * values + sigma**2)).sqrt()) @ vectors.T
    return case.ref_mean + (x_t - alpha * case.ref_mean) @ gain.T


def test_k_step_denoise_is_tweedie_at_one_step_and_the_flow_endpoint_at_many(case):
    """The differentiable k-step denoise that carries DIDR's reward to x_t: one step is Tweedie's E[x0 | x_t]
    exactly, and more steps converge to the probability-flow ODE's endpoint (a different point: the posterior mean
    is not where the flow ends)."""
    t = 0.7
    x_t = torch.randn(256, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    times = torch.full((len(x_t),), t, dtype=torch.float64)
    alpha, sigma = (float(v) for v in case.noise_level(t))
    tweedie = (x_t + sigma**2 * case.ref_score_at(x_t, times)) / alpha
    torch.testing.assert_close(ddim_denoise(case.ref_score_at, case.noise_level, x_t, times, 1), tweedie)
    endpoint = gaussian_flow_endpoint(case, x_t, t)
    errors = [float((ddim_denoise(case.ref_score_at, case.noise_level, x_t, times, k) - endpoint).norm(dim=1).mean())
              for k in (1, 4, 16, 64)]
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < 0.05 * errors[0], errors


@pytest.mark.parametrize("backend", ["analytic", "sd15", "sd3"])
def test_dmd_gradient_is_the_denoiser_gap_over_its_own_sample_distance(backend, tiny_models):
    """DMD2's x0 gradient, sample by sample: (D_fake - D~_ref) / mean_pixels |x0 - D~_ref|, on each backend's own
    networks. A normaliser taken over the whole batch (its mean, or its norm) or an L2 distance in place of DMD's
    mean absolute one fails; so does any dependence of one sample's step on the rest of its batch."""
    cfg = build_config(["method=dmd", "method.alpha_cfg=1.7", *backend_args(tiny_models, backend)])
    trainer = Trainer(cfg, run=None, progress=False)
    with torch.no_grad():
        for p in trainer.fake.parameters():
            p.add_(0.1 * torch.randn_like(p))
    d = trainer.draw(GENERATOR_PHASE)
    x0 = trainer.generator(d["z"], d["cond"]).detach()

    def x0_gradient(rows):
        x = x0[rows].clone().requires_grad_(True)
        cond = d["cond"][rows] if torch.is_tensor(d["cond"]) else type(d["cond"])(*(v[rows] for v in d["cond"]))
        batch = trainer.generator_batch(x, d["t"][rows], d["eps"][rows], cond, 1.7)
        (grad,) = torch.autograd.grad(trainer.method.regulariser(batch).sum(), x)
        with torch.no_grad():
            fake_eps = trainer.unwrapped(trainer.fake)(batch.x_t, batch.t, *trainer.schedule.alpha_sigma(batch.t),
                                                       cond)
            fake_x0 = (batch.x_t - batch.sigma * fake_eps.float()) / batch.alpha
            ref_x0 = batch.denoised(batch.x_t, 1.7)
        return grad, fake_x0 - ref_x0, (x - ref_x0).detach()

    grad, gap, distance = x0_gradient(slice(None))
    per_sample = distance.abs().flatten(1).mean(1).reshape(-1, *[1] * (gap.dim() - 1))
    tolerance = {"rtol": 1e-4, "atol": 1e-5 * float(grad.abs().max())}
    torch.testing.assert_close(grad, gap / per_sample, **tolerance)
    for wrong in (distance.abs().mean(), distance.flatten(1).norm(dim=1).reshape(per_sample.shape),
                  per_sample.mean()):
        assert relative_error(grad, gap / wrong) > 0.05
    half = slice(0, len(x0) // 2)
    alone, _, _ = x0_gradient(half)
    torch.testing.assert_close(alone, grad[half], **tolerance)
