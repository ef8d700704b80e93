"""Classifier-free guidance: our convention, its closed form, and what it does to training (acceptance b).

Ours is diffusers': s~ = s_u + w (s_c - s_u) = grad log(p_u^(1 - w) p_c^w), so w = 1 is the conditional score
and w = 0 the unconditional one. The two mistakes worth catching: the sign flipped, s_u - w (s_c - s_u), and
the papers' other convention used with our scale, s_c + w (s_c - s_u) (that is w + 1 in ours).
"""

import pytest
import torch

import bench.method
from bench.diffusion import guided

from world_checks import generated, guided_mean_shift, shift_towards, train, trainer_for

SCALES = (0.0, 0.5, 2.5, 8.5)
# Two captions of one Gaussian each, wide enough (s0 = 1 against means 1.6 apart) to overlap: the guided
# optimum then moves visibly, and along the line between the two means it is a one-dimensional integral.
OVERLAPPING = ["backend.image_size=2", "backend.prompts=2", "backend.components=1", "backend.s0=1"]


def guided_score_error(scale: float) -> float:
    """Largest relative error of the trainer's guided reference score against autograd of the guided
    log-density (1 - w) log p_t(x) + w log p_t(x | c), at several times."""
    trainer = trainer_for(["backend.image_size=4", "backend.prompts=3"])
    reference = trainer.backend.reference
    rng = torch.Generator().manual_seed(0)
    n = 64
    z, cond = trainer.backend.sample_inputs(n, rng)
    t = torch.tensor([0.05, 0.3, 0.7, 0.95]).repeat(n // 4)
    batch = trainer.generator_batch(trainer.generator(z, cond).detach(), t, torch.randn(z.shape, generator=rng), cond)
    x = batch.x_t.detach().requires_grad_(True)
    alpha, sigma = trainer.backend.schedule.alpha_sigma(t)
    log_density = (1 - scale) * reference.log_prob(x, alpha, sigma, None) + scale * reference.log_prob(
        x, alpha, sigma, cond)
    (exact,) = torch.autograd.grad(log_density.sum(), x)
    with torch.no_grad():
        ours = batch.ref_score(x, scale)
    return float(((ours - exact).flatten(1).norm(dim=1) / exact.flatten(1).norm(dim=1)).max())


@pytest.mark.parametrize("scale", SCALES)
def test_guided_reference_score_is_the_closed_form(scale):
    assert guided_score_error(scale) < 1e-4


@pytest.mark.parametrize("mistake", [
    lambda cond, uncond, w: cond if uncond is None else uncond - w * (cond - uncond),
    lambda cond, uncond, w: cond if uncond is None else cond + w * (cond - uncond),
], ids=["sign flipped", "other convention"])
def test_either_mistake_fails_that_check(monkeypatch, mistake):
    monkeypatch.setattr(bench.method, "guided", mistake)
    assert max(guided_score_error(scale) for scale in SCALES) > 0.1
    monkeypatch.setattr(bench.method, "guided", guided)
    assert max(guided_score_error(scale) for scale in SCALES) < 1e-4


def shift_towards_the_other_caption(trainer) -> float:
    """Mean of caption 0's samples along the unit vector from its mean to caption 1's: > 0 is towards the
    unconditional law's other half, < 0 away from it."""
    means = trainer.backend.reference.means[:, 0]
    x, cond = generated(trainer, 4000)
    return shift_towards(x[cond == 0], means[0], means[1])


def guided_optimum_shift(trainer, scale: float, t: float) -> float:
    reference = trainer.backend.reference
    alpha, sigma = (float(v) for v in trainer.backend.schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
    return guided_mean_shift(reference.means[0, 0], reference.means[1, 0], reference.var, alpha, sigma, scale)


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_kl_rlhf_moves_by_the_amount_guidance_gives(scale):
    """At t = 0.2 the fake score is well determined in this wide world (at a small t its DSM targets
    drown a shift this small: see the README), so training can be held to the closed form."""
    trainer = trainer_for(["method=kl_rlhf", "method.alpha_rew=0", f"method.alpha_cfg={scale}", "method.t_min=0.2",
                           *OVERLAPPING])
    expected = guided_optimum_shift(trainer, scale, 0.2)
    assert abs(shift_towards_the_other_caption(trainer)) < 0.02 * abs(expected)  # the start is the reference
    train(trainer)
    assert expected * (scale - 1) < 0  # w > 1 away from the unconditional law, w < 1 towards it
    assert shift_towards_the_other_caption(trainer) == pytest.approx(expected, rel=0.08)


@pytest.mark.parametrize("method", ["di_pp", "di_star"])
def test_di_pp_and_di_star_move_away_above_one_and_towards_below(method):
    shifts = {}
    for scale in (0.5, 2.0):
        trainer = trainer_for([f"method={method}", "method.alpha_rew=0", f"method.alpha_cfg={scale}", *OVERLAPPING,
                               "train.steps=400"])
        train(trainer)
        shifts[scale] = shift_towards_the_other_caption(trainer)
    assert shifts[0.5] > 0.1 and shifts[2.0] < -0.1, shifts
