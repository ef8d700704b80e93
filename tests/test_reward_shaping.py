"""Reward shaping every method can use: a hinge margin per reward, a cold start, a CFG scale drawn per step."""

import pytest
import torch

from bench.config import build_config
from bench.rewards import RewardTerm, parse_reward, reward_text
from bench.rewards.analytic import ANALYTIC_REWARDS, build_reward
from bench.train.trainer import FAKE_PHASE, GENERATOR_PHASE

from world_checks import train, trainer_for

SHAPE = (3, 4, 4)


def test_a_margin_is_a_hinge_below_it_and_nothing_above():
    """-relu(m - r): below the margin the reward's own gradient (times its weight), at and above it none. A hinge on
    the wrong side (relu(r - m)) or one that keeps pulling past the margin fails."""
    spec = "{linear: {weight: 2.0, margin: 0.5}}"
    shaped, plain = build_reward(spec, ["a"], SHAPE, None), ANALYTIC_REWARDS["linear"](SHAPE)
    direction = plain.w.reshape(1, *SHAPE)
    x = (torch.tensor([-1.0, 0.2, 0.49, 0.51, 3.0]).reshape(-1, 1, 1, 1) * direction).requires_grad_(True)
    value = shaped(x, None)
    (grad,) = torch.autograd.grad(value.sum(), x)
    r = plain(x.detach())
    torch.testing.assert_close(value.detach(), 2.0 * torch.clamp(r - 0.5, max=0))
    below = r < 0.5
    torch.testing.assert_close(grad[below], (2.0 * direction).expand_as(x)[below])
    assert grad[~below].abs().max() == 0
    assert below.any() and (~below).any()


def test_reward_specs_with_margins_round_trip():
    terms = parse_reward("{linear: {weight: 1, margin: 0.3}, quadratic: 0.5}", ANALYTIC_REWARDS)
    assert terms == {"linear": RewardTerm(1.0, 0.3), "quadratic": RewardTerm(0.5)}
    assert parse_reward(reward_text(terms), ANALYTIC_REWARDS) == terms
    assert reward_text(parse_reward("linear", ANALYTIC_REWARDS)) == "linear"
    # A margin makes a different objective: it is part of the reward's name in the store and on the leaderboard.
    assert reward_text(parse_reward("{linear: {margin: 0.3}}", ANALYTIC_REWARDS)) != "linear"


def generator_weights(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.unwrapped(trainer.generator).parameters()])


@pytest.mark.parametrize("method", ["di_pp", "kl_rlhf"])
def test_cold_start_trains_without_the_reward_for_exactly_its_steps(method):
    """With cold_start=N the first N generator steps are those of alpha_rew 0 and step N+1 is not: a start one step
    early or late fails."""
    cold, plain = (trainer_for([f"method={method}", *extra])
                   for extra in (["method.alpha_rew=5", "method.cold_start=3"], ["method.alpha_rew=0"]))
    train(cold, 3)
    train(plain, 3)
    torch.testing.assert_close(generator_weights(cold), generator_weights(plain), rtol=0, atol=0)
    train(cold, 1)
    train(plain, 1)
    assert (generator_weights(cold) - generator_weights(plain)).abs().max() > 1e-6


def test_cfg_scale_is_drawn_per_step_in_its_range_and_leaves_other_draws_alone():
    ranged = trainer_for(["method=di_pp", "method.alpha_cfg=1.5", "method.alpha_cfg_max=4"])
    fixed = trainer_for(["method=di_pp", "method.alpha_cfg=1.5"])
    scales = []
    for step in range(40):
        ranged.counters.step = fixed.counters.step = step
        d, same = ranged.draw(GENERATOR_PHASE), fixed.draw(GENERATOR_PHASE)
        assert same["cfg"] == 1.5
        for key in ("z", "t", "eps"):
            torch.testing.assert_close(d[key], same[key], rtol=0, atol=0)
        assert d["cfg"] == ranged.draw(GENERATOR_PHASE)["cfg"]  # a resumed step draws the same scale
        scales.append(d["cfg"])
    assert 1.5 <= min(scales) < 2.0 and 3.5 < max(scales) <= 4.0
    assert ranged.draw(FAKE_PHASE)["cfg"] != scales[-1]  # each update has its own stream


def test_the_batch_carries_the_steps_scale_to_the_method():
    """The regulariser reads the step's drawn scale, not alpha_cfg: DI++ with a scale drawn from [2, 2] is DI++ at
    scale 2 (a range of zero width still goes through the draw)."""
    drawn = trainer_for(["method=di_pp", "method.alpha_cfg=2", "method.alpha_cfg_max=2.000001"])
    fixed = build_config(["method=di_pp", "method.alpha_cfg=2"])
    d = drawn.draw(GENERATOR_PHASE)
    assert d["cfg"] == pytest.approx(2.0, abs=1e-5)
    x0 = drawn.generator(d["z"], d["cond"]).detach()
    batch = drawn.generator_batch(x0, d["t"], d["eps"], d["cond"], d["cfg"])
    unguided = drawn.generator_batch(x0, d["t"], d["eps"], d["cond"], 1.0)
    assert batch.cfg == d["cfg"] and fixed.method.alpha_cfg == 2
    assert (drawn.method.regulariser(batch) - drawn.method.regulariser(unguided)).abs().max() > 1e-4
