"""The analytic world is exact: scores, denoiser, tilted optimum, sampler and metrics (acceptance a)."""

import math

import pytest
import torch

from bench.analytic.metrics import frechet_distance, mmd2, world_metrics
from bench.analytic.mixture import GaussianMixture
from bench.analytic.pictures import captions, component_means
from bench.diffusion import VPSchedule
from bench.rewards.analytic import ColorfulnessReward, LinearReward, QuadraticReward

SIZE = 4


def world(prompts=3, components=3, s0=0.1) -> GaussianMixture:
    means = component_means(captions(prompts), components, SIZE)
    log_weights = torch.log_softmax(torch.tensor([[0.0, 0.5, -0.5]] * prompts)[:, :components], -1)
    return GaussianMixture(means.double(), log_weights.double(), s0**2)


@pytest.mark.parametrize("t", [0.0, 0.02, 0.2, 0.5, 0.9])
@pytest.mark.parametrize("conditional", [True, False])
def test_score_is_gradient_of_log_density(t, conditional):
    mixture = world()
    alpha, sigma = VPSchedule().alpha_sigma(torch.full((6,), t, dtype=torch.float64))
    cond = torch.tensor([0, 1, 2, 0, 1, 2]) if conditional else None
    gen = torch.Generator().manual_seed(1)
    x = mixture.sample(torch.tensor([0, 1, 2, 2, 1, 0]), gen).reshape(6, 3, SIZE, SIZE)
    x = (alpha.reshape(-1, 1, 1, 1) * x + sigma.reshape(-1, 1, 1, 1) * torch.randn(x.shape, generator=gen,
                                                                                     dtype=x.dtype))
    x.requires_grad_(True)
    (autograd,) = torch.autograd.grad(mixture.log_prob(x, alpha, sigma, cond).sum(), x)
    torch.testing.assert_close(mixture.score(x, alpha, sigma, cond), autograd, rtol=1e-9, atol=1e-9)


def test_denoiser_is_the_posterior_mean_of_the_components():
    mixture = world()
    alpha, sigma = VPSchedule().alpha_sigma(torch.full((4,), 0.4, dtype=torch.float64))
    cond = torch.tensor([0, 1, 2, 1])
    x = torch.randn(4, 3 * SIZE * SIZE, dtype=torch.float64)
    # Posterior of x0 given x_t and component m is Gaussian; average its mean over responsibilities.
    v = alpha**2 * mixture.var + sigma**2
    means = mixture.means[cond]
    logits = mixture.log_weights[cond] - (x[:, None] - alpha[:, None, None] * means).pow(2).sum(-1) / (2 * v[:, None])
    gain = (alpha * mixture.var / v)[:, None, None]
    posterior = means + gain * (x[:, None] - alpha[:, None, None] * means)
    expected = (logits.softmax(-1)[..., None] * posterior).sum(1)
    torch.testing.assert_close(mixture.denoise(x, alpha, sigma, cond), expected)


@pytest.mark.parametrize("reward_cls, alpha_rew", [(LinearReward, 3.0), (QuadraticReward, 0.5)])
def test_tilted_mixture_is_the_reward_tilted_reference(reward_cls, alpha_rew):
    """p* from the closed form against self-normalised importance weights exp(a r) on reference samples."""
    mixture = world(prompts=1, s0=0.3)
    reward = reward_cls((3, SIZE, SIZE))
    optimum = mixture.tilt(*reward.quadratic_form(), alpha_rew)
    gen = torch.Generator().manual_seed(0)
    cond = torch.zeros(400_000, dtype=torch.long)
    x = mixture.sample(cond, gen)
    weights = torch.softmax(alpha_rew * reward(x.float()).double(), 0)
    assert 1 / weights.pow(2).sum() > 1e5, "too strong a tilt for importance sampling to be a reference"
    expected_mean = weights @ x
    mean, _ = optimum.moments(0)
    assert (mean - expected_mean).norm() < 0.05 * (mean - mixture.moments(0)[0]).norm()
    component = mixture.assign(x, cond)
    expected_weights = torch.bincount(component, weights=weights, minlength=3)
    torch.testing.assert_close(optimum.log_weights[0].exp(), expected_weights, atol=0.01, rtol=0)


def test_colorfulness_has_no_closed_form_optimum_but_a_gradient():
    reward = ColorfulnessReward((3, SIZE, SIZE))
    assert reward.quadratic_form() is None
    x = torch.rand(5, 3, SIZE, SIZE, requires_grad=True)
    (grad,) = torch.autograd.grad(reward(x).sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_sampler_has_the_exact_moments():
    mixture = world(prompts=1)
    x = mixture.sample(torch.zeros(200_000, dtype=torch.long), torch.Generator().manual_seed(3))
    mean, cov = mixture.moments(0)
    torch.testing.assert_close(x.mean(0), mean, atol=5e-3, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=5e-3, rtol=0)


def test_frechet_distance_of_diagonal_gaussians():
    a, b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([4.0, 1.0, 1.0])
    m1, m2 = torch.zeros(3), torch.tensor([1.0, 0.0, 2.0])
    expected = 5.0 + ((a.sqrt() - b.sqrt()) ** 2).sum()
    assert frechet_distance(m1, torch.diag(a), m2, torch.diag(b)) == pytest.approx(float(expected), rel=1e-5)


def test_mmd_separates_laws_and_not_samples_of_one_law():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 5, generator=gen), torch.randn(400, 5, generator=gen)
    assert abs(mmd2(x, y, 5.0)) < 0.01
    assert mmd2(x, y + 1.0, 5.0) > 0.1


def test_metrics_see_mode_dropping_and_reference_samples_score_well():
    mixture = world(prompts=2, components=3)
    reward = LinearReward((3, SIZE, SIZE))
    gen = torch.Generator().manual_seed(0)
    cond = torch.arange(2).repeat_interleave(300)
    samples = mixture.sample(cond, gen).float().reshape(-1, 3, SIZE, SIZE)
    good, rows = world_metrics(samples, cond, mixture.float(), reward, None, gen)
    assert good["coverage"] == 1.0 and good["precision"] > 0.98
    assert [r["caption"] for r in rows] == [0, 1]
    assert good["reward"] == pytest.approx(float(reward(samples, cond).mean()), rel=1e-5)
    assert rows[1]["reward"] == pytest.approx(float(reward(samples[cond == 1], cond[cond == 1]).mean()), rel=1e-5)
    collapsed = mixture.means[cond, 0] + 0.1 * torch.randn(len(cond), mixture.dim, generator=gen, dtype=torch.float64)
    bad, _ = world_metrics(collapsed.float().reshape(-1, 3, SIZE, SIZE), cond, mixture.float(), reward, None, gen)
    assert bad["coverage"] == pytest.approx(1 / 3)
    assert bad["mmd_ref"] > 10 * abs(good["mmd_ref"]) and bad["fd_ref"] > good["fd_ref"]
    assert math.isfinite(good["nll_ref"])


def log_density_ratio(generator, law: GaussianMixture, z: torch.Tensor) -> torch.Tensor:
    """log p_theta(x) - log law(x) at x = g(z) for caption 0: a sample of the exact KL, as the backend takes it."""
    from bench.analytic.metrics import generator_log_density, log_prob_clean

    x, log_p = generator_log_density(generator, z, caption=0)
    return log_p - log_prob_clean(law, x, 0)


class LinearGenerator(torch.nn.Module):
    """x = mu + A z: a Gaussian N(mu, A A^T) whose KL to a Gaussian reference is closed-form."""

    def __init__(self, mu, a):
        super().__init__()
        self.mu, self.a = mu, a

    def forward(self, z, cond):
        return self.mu + z @ self.a.T


def test_exact_kl_by_change_of_variables_is_the_closed_form_on_a_gaussian_generator():
    from gaussian_case import kl_gaussians

    reference, mu, a, _, gen = gaussian_world()
    dim = len(mu)
    z = torch.randn(20_000, dim, generator=gen, dtype=torch.float64)
    samples = log_density_ratio(LinearGenerator(mu, a), reference, z)
    exact = kl_gaussians(mu, a @ a.T, reference.means[0, 0], reference.var * torch.eye(dim, dtype=torch.float64))
    assert float(samples.mean()) == pytest.approx(float(exact), abs=4 * float(samples.std()) / 20_000**0.5)
    assert float(exact) > 0.5



def gaussian_world(dim: int = 6):
    """A one-component reference N(m, 0.7^2 I), a Gaussian generator N(mu, A A^T) and a quadratic reward
    -0.3 |x|^2 + b . x: p* is Gaussian too, so every KL here is closed form."""
    gen = torch.Generator().manual_seed(0)
    reference = GaussianMixture(torch.randn(1, 1, dim, generator=gen, dtype=torch.float64),
                                torch.zeros(1, 1, dtype=torch.float64), 0.7**2)
    a = torch.tril(0.3 * torch.randn(dim, dim, generator=gen, dtype=torch.float64)) + 0.9 * torch.eye(dim)
    mu = reference.means[0, 0] + 0.4 * torch.randn(dim, generator=gen, dtype=torch.float64)
    slope = torch.randn(dim, generator=gen, dtype=torch.float64)
    return reference, mu, a, (0.3, slope), gen


def test_kl_to_the_optimum_is_kl_ref_less_the_reward_plus_log_z_in_closed_form():
    """KL(q || p*) = KL(q || p_ref) - alpha E_q[r] + log Z, every term exact on Gaussians: checks log Z (its
    precision term and sign) and p*'s law together, for two temperatures."""
    from gaussian_case import kl_gaussians

    reference, mu, a, (curvature, slope), _ = gaussian_world()
    eye = torch.eye(len(mu), dtype=torch.float64)
    cov = a @ a.T
    kl_ref = kl_gaussians(mu, cov, reference.means[0, 0], reference.var * eye)
    mean_reward = -curvature * (mu @ mu + torch.trace(cov)) + slope @ mu
    for alpha in (0.5, 3.0):
        optimum = reference.tilt(curvature, slope, alpha)
        exact = kl_gaussians(mu, cov, optimum.means[0, 0], optimum.var * eye)
        log_z = reference.log_normaliser(curvature, slope, alpha)[0]
        assert float(kl_ref - alpha * mean_reward + log_z) == pytest.approx(float(exact), rel=1e-9)
        assert float(exact) > 0.5


def test_kl_to_the_optimum_by_change_of_variables_is_the_closed_form():
    from gaussian_case import kl_gaussians

    reference, mu, a, (curvature, slope), gen = gaussian_world()
    optimum = reference.tilt(curvature, slope, 2.0)
    z = torch.randn(20_000, len(mu), generator=gen, dtype=torch.float64)
    samples = log_density_ratio(LinearGenerator(mu, a), optimum, z)
    eye = torch.eye(len(mu), dtype=torch.float64)
    exact = kl_gaussians(mu, a @ a.T, optimum.means[0, 0], optimum.var * eye)
    assert float(samples.mean()) == pytest.approx(float(exact), abs=4 * float(samples.std()) / 20_000**0.5)


def test_log_normaliser_of_a_mixture_is_the_monte_carlo_mean_of_the_tilt():
    gen = torch.Generator().manual_seed(1)
    mixture = GaussianMixture(0.5 * torch.randn(2, 3, 4, generator=gen, dtype=torch.float64),
                              torch.log_softmax(torch.randn(2, 3, generator=gen, dtype=torch.float64), 1), 0.3**2)
    curvature, slope, alpha = 0.4, torch.randn(4, generator=gen, dtype=torch.float64), 1.5
    exact = mixture.log_normaliser(curvature, slope, alpha)
    for caption in range(2):
        x = mixture.sample(torch.full((400_000,), caption), gen)
        tilt = alpha * (-curvature * x.pow(2).sum(1) + x @ slope)
        assert float(torch.logsumexp(tilt, 0) - math.log(len(x))) == pytest.approx(float(exact[caption]), abs=0.01)


class FoldingGenerator(torch.nn.Module):
    """x0 = z0^3 - z0, the rest unchanged: two-to-one (three) where |z0| < 1/sqrt(3), a fold."""

    def forward(self, z, cond):
        return torch.cat([z[:, :1] ** 3 - z[:, :1], z[:, 1:]], 1)


def test_exact_kl_is_nan_where_the_generator_folds():
    """A generator trained continuously from the orientation-preserving start can reach a determinant <= 0 only
    by folding, where its density sums over several preimages: those samples give NaN, never a wrong number."""
    reference = GaussianMixture(torch.zeros(1, 1, 3, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64), 1.0)
    z = torch.tensor([[0.1, 0.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64)
    ratio = log_density_ratio(FoldingGenerator(), reference, z)
    assert torch.isnan(ratio[0]) and torch.isfinite(ratio[1])


@pytest.mark.parametrize("init", ["ode", "denoiser"])
def test_the_generators_own_jacobian_is_autograds(init):
    """The analytic generator's hand-carried Jacobian (the exact KL's determinant) equals forward mode through the
    whole map, with a residual that is not zero; a wrong factor or sign in the tangent denoiser would not."""
    from bench.backends.analytic import Generator

    mixture = world(prompts=2, components=3).float()
    generator = Generator(mixture, VPSchedule(), init, 0.25, (3, SIZE, SIZE), hidden=16)
    torch.manual_seed(0)
    for p in generator.residual.parameters():
        torch.nn.init.normal_(p, std=0.3)
    z = torch.randn(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    cond = torch.tensor([0, 1, 1, 0, 1])
    expected = torch.stack([torch.func.jacfwd(lambda f, c=c: generator(f.reshape(1, 3, SIZE, SIZE), c[None]).flatten())(
        one.flatten()) for one, c in zip(z, cond, strict=True)])
    assert torch.allclose(generator.jacobian(z, cond), expected, rtol=1e-4, atol=1e-5)
