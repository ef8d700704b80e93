"""KL-RLHF reaches its closed-form optimum p* ~ p_ref exp(alpha_rew r) across a family of analytic worlds.

One setting for every world (the method's defaults, no per-world tuning): seeds, 2 to 4 components, uniform
and strongly skewed component weights, linear and quadratic rewards, s0 from 0.08 to 0.2, images 4 to 8 pixels
wide. Each world is judged against p* with 4000 samples a caption:

- the exact KL(p_theta || p*) (kl_star, change of variables against p*'s density: the objective itself, less
  its minimum) ends at most a quarter of its start, or under 0.5 nats;
- the Frechet distance to p*'s exact moments falls by at least 60% from the start, both measured above the
  finite-sample floor (the same statistic for as many exact p* samples);
- every component p* weighs receives at least a quarter of its expected samples;
- the mean reward is within 10% of the start-to-p* gap of p*'s own;
- sampled component weights are within total variation 0.05 of p*'s.

Worlds are chosen so that p* is resolvably far from the start: with alpha_rew = 20 a linear reward moves each
mode by 20 s0^2, which at s0 <= 0.1 is within the trained generator's own noise (see the README). Five
components are left out on purpose: the fifth layout is larger, so a linear or quadratic reward gives p*
weights near 0 or 1, and no method here moves mass between modes that far apart.
"""

import pytest
import torch

from world_checks import exact_kls, generated, law_stats, train, trainer_for

WORLDS = {
    "2 modes, linear, s0 0.2": "seed=0 backend.components=2 reward=linear backend.s0=0.2 backend.image_size=4 "
                               "backend.prompts=3",
    "3 modes, quadratic, s0 0.08": "seed=1 backend.components=3 reward=quadratic backend.s0=0.08 "
                                   "backend.image_size=5 backend.prompts=3",
    "4 skewed modes, linear, s0 0.15": "seed=2 backend.components=4 backend.skew=1 reward=linear backend.s0=0.15 "
                                       "backend.image_size=6 backend.prompts=2",
    "3 skewed modes, quadratic, s0 0.12": "seed=3 backend.components=3 backend.skew=1.5 reward=quadratic "
                                          "backend.s0=0.12 backend.image_size=4 backend.prompts=3",
    "2 modes, quadratic, s0 0.2, 8 px": "seed=4 backend.components=2 reward=quadratic backend.s0=0.2 "
                                        "backend.image_size=8 backend.prompts=2",
    "4 modes, linear, s0 0.18, 8 px": "seed=5 backend.components=4 reward=linear backend.s0=0.18 "
                                      "backend.image_size=8 backend.prompts=2",
    "3 skewed modes, linear, s0 0.2": "seed=6 backend.components=3 backend.skew=0.7 reward=linear backend.s0=0.2 "
                                      "backend.image_size=5 backend.prompts=3",
}
# Also at alpha_rew 5 (the core issue asks for 5 and 20) on the world where a generator correcting from the noise
# alone stopped at 1.1 nats of kl_star when KL-RLHF's loss was in the score's units. In the denoiser's units that
# generator reaches 0.62 here, inside the bound of 0.83, so this case no longer tells the two apart (README, Drift).
CASES = {**WORLDS, "3 modes, quadratic, s0 0.08, alpha_rew 5": WORLDS["3 modes, quadratic, s0 0.08"]
         + " method.alpha_rew=5"}
PER_CAPTION = 4000


# DIDR has KL-RLHF's optimum and is held to the same criteria, on a linear and a quadratic world of the family (the
# rest are in `benchmarks/drift.py optimum`, README kl_star table). Both also on a flow-matching path with SD3's
# shift, where x_t = (1 - s) x0 + s eps: the same criteria, nothing retuned.
FLOW = " backend.path=flow backend.shift=3"
RUNS = {**{f"kl_rlhf, {name}": ("kl_rlhf", world) for name, world in CASES.items()},
        **{f"didr, {name}": ("didr", WORLDS[name]) for name in ("2 modes, linear, s0 0.2",
                                                                "3 modes, quadratic, s0 0.08")},
        **{f"{method}, 3 modes, quadratic, s0 0.08, flow": (method, WORLDS["3 modes, quadratic, s0 0.08"] + FLOW)
           for method in ("kl_rlhf", "didr")}}


@pytest.mark.parametrize(("method", "world"), RUNS.values(), ids=RUNS.keys())
def test_the_tilted_optimum_is_reached(method, world):
    trainer = trainer_for([f"method={method}", *world.split()])
    optimum, reward = trainer.backend.optimum, trainer.backend.reward
    start = law_stats(*generated(trainer, PER_CAPTION, ema=False), optimum, reward)
    kl_start = exact_kls(trainer, ema=False)["kl_star"]
    train(trainer)
    kl_end = exact_kls(trainer)["kl_star"]
    x, cond = generated(trainer, PER_CAPTION)
    end = law_stats(x, cond, optimum, reward)
    exact = optimum.sample(cond, torch.Generator().manual_seed(7)).float().reshape(x.shape)
    star = law_stats(exact, cond, optimum, reward)

    assert kl_end <= max(0.25 * kl_start, 0.5), (kl_start, kl_end)
    assert end["fd"] - star["fd"] <= 0.4 * (start["fd"] - star["fd"]), (start, end, star)
    assert end["coverage"] == 1, end
    assert abs(end["reward"] - star["reward"]) <= 0.1 * abs(star["reward"] - start["reward"]), (start, end, star)
    assert end["tv"] <= 0.05, end
