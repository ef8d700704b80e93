"""`bench teach` and the exact metrics of runs on a taught folder: a family's own classes trained on a mixture.

Most teachers here are taught briefly (a twelfth of the default's updates): those tests check what the folder holds,
that the real backend trains on it and is scored against the world exactly, and that the teacher learnt the exact
eps through the family's own calls. Every family's teacher, taught in full with `bench teach`'s defaults, is committed
in tests/teachers for the acceptance tests.
"""

import json
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline

from bench.analytic.world import load_mixture
from bench.cli import main
from bench.config import TrainConfig, build_config
from bench.teach import TeachConfig, exact_eps, recorded_settings, teach
from bench.train.trainer import Trainer

from conftest import bench
from world_checks import DI_PP_RATE, ema_metrics, exact_floor, trainer_on

FAMILIES = ["sd15", "pixart_alpha", "sdxl", "sd3"]
# 100 updates: SD1.5's eps error at timesteps 600 to 900 is then at most 0.035 of the exact eps's mean square (0.017
# at 150, 0.066 at 75; the largest of the four at 75, SDXL's 0.059, SD3's 0.012), against the bound of 0.1 below.
BRIEF = dict(steps=100, samples=32, sampler_steps=10)


class Taught(dict):
    """One briefly taught folder a family, taught when a test first asks for it: a test worker teaches only the
    families its own tests use (teaching all three up front cost each worker about 35 s)."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, family):
        self[family] = teach(TeachConfig(family=family, out=str(self.root / family), **BRIEF), progress=False)
        return self[family]


@pytest.fixture(scope="session")
def taught(tmp_path_factory):
    return Taught(tmp_path_factory.mktemp("taught"))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_taught_folder_is_a_pipeline_that_carries_its_world_and_its_teachers_error(taught, family):
    folder = taught[family]
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    texts, mixture, shape = load_mixture(folder)
    assert type(pipe).__name__ == {"sd15": "StableDiffusionPipeline", "pixart_alpha": "PixArtAlphaPipeline",
                                   "sdxl": "StableDiffusionXLPipeline", "sd3": "StableDiffusion3Pipeline"}[family]
    channels = 16 if family == "sd3" else 4  # SD3's VAE has 16 latent channels
    assert len(texts) == 4 and mixture.means.shape == (4, 2, channels * 4 * 4) and shape == (channels, 4, 4)
    report = json.loads((folder / "teacher.json").read_text())
    # The sampler check's own solver (10 steps here: DPM-Solver++, or SD3's flow Euler) on the exact answer reaches
    # the finite-sample floor of exact samples (measured: 1.08 to 1.17 times it; SD3's 0.65): a sign or scale off in
    # the exact eps or velocity would not.
    sampler = report["sampler"]
    assert sampler["fd_exact_eps"] <= 1.5 * sampler["fd_exact_samples"], sampler
    # Even briefly taught, the teacher's eps is far closer to the exact eps than a guess of zero is (by a tenth
    # where the noise dominates): a sign, a scale or a timestep off in the teaching loop would leave it at 1.
    # (From timestep 600: flow matching's timestep 500 is less noisy than VP's, SNR 1 against 0.4.)
    for timestep in ("600", "700", "900"):
        row = report["eps_error"][timestep]
        assert row["conditional"] < 0.1 * row["exact_mean_square"], (timestep, row)
        assert row["unconditional"] < 0.1 * row["exact_mean_square"], (timestep, row)


def test_the_exact_eps_is_minus_sigma_times_the_score_of_the_diffused_mixture():
    """exact_eps against the noise that made x_t, where the mixture is one Gaussian of known mean: E[eps | x_t]
    is (x_t - alpha mu) sigma / (alpha^2 var + sigma^2) in closed form."""
    from bench.analytic.mixture import GaussianMixture

    mu, var = torch.tensor([[[0.5, -1.0, 2.0]]]), 0.09
    world = GaussianMixture(mu, torch.zeros(1, 1), var)
    alpha, sigma = torch.tensor([0.8]), torch.tensor([0.6])
    x_t = torch.tensor([[0.3, 0.1, -0.2]])
    closed = (x_t - alpha * mu[0]) * sigma / (alpha**2 * var + sigma**2)
    assert torch.allclose(exact_eps(world, x_t, alpha, sigma, torch.tensor([0])), closed, atol=1e-6)


def test_a_flow_teachers_target_is_the_exact_velocity_also_at_pure_noise():
    """exact_output for a flow model is E[eps - x0 | x_t]: with the posterior mean it satisfies x_t = alpha E[x0 | x_t]
    + sigma E[eps | x_t] (which a sign or a missing alpha in the posterior's gain breaks), the posterior mean is
    Tweedie's where alpha > 0, and at alpha 0 (pure noise) it is the caption's mean, where Tweedie divides by 0."""
    from types import SimpleNamespace

    from bench.analytic.mixture import GaussianMixture
    from bench.teach import exact_output

    rng = torch.Generator().manual_seed(0)
    world = GaussianMixture(torch.randn(2, 3, 5, generator=rng), torch.log_softmax(torch.randn(2, 3, generator=rng), 1),
                            0.2)
    captions = torch.tensor([0, 1, 1, 0])
    x_t = torch.randn(4, 5, generator=rng)
    alpha, sigma = torch.tensor([0.9, 0.5, 0.1, 0.0]), torch.tensor([0.1, 0.5, 0.9, 1.0])
    velocity = exact_output(SimpleNamespace(flow=True), world, x_t, alpha, sigma, captions)
    eps = exact_eps(world, x_t, alpha, sigma, captions)
    x0 = eps - velocity
    assert torch.allclose(alpha[:, None] * x0 + sigma[:, None] * eps, x_t, atol=1e-5)
    assert torch.allclose(x0[:3], world.denoise(x_t[:3], alpha[:3], sigma[:3], captions[:3]), atol=1e-5)
    assert torch.allclose(x0[3], world.moments(0)[0], atol=1e-5)
    assert torch.equal(exact_output(SimpleNamespace(flow=False), world, x_t, alpha, sigma, captions), eps)


def test_a_run_on_a_taught_folder_is_scored_against_its_world_exactly(taught, results):
    folder = taught["sd15"]
    bench("run", "backend=sd15", f"backend.model={folder}", "method=kl_rlhf", "method.alpha_rew=5",
          "reward=linear", "train.steps=2", "train.batch_size=4", "eval.samples=32", "eval.grid=false",
          results=results, check=True)
    (row,) = json.loads(bench("runs", "list", "--json", results=results, check=True).stdout)
    summary = row["summary"]
    for key in ("coverage", "precision", "fd_ref", "mmd_ref", "nll_ref", "fd_star", "mmd_star", "reward"):
        assert key in summary["metrics"] and key in summary["initial"], key
    # The closed-form p* is described with its frontier: at alpha_rew 1000 every component has moved by
    # alpha var = 10 along the reward's unit direction.
    curve = summary["optimum"]["curve"]
    assert curve[-1]["alpha_rew"] == 1000 and curve[-1]["reward"] > curve[0]["reward"] + 9


def test_latent_rewards_score_latents_and_the_optimum_is_the_tilted_world(taught):
    folder = taught["sd15"]
    trainer = Trainer(build_config(["backend=sd15", f"backend.model={folder}", "reward=linear",
                                    "method=kl_rlhf", "method.alpha_rew=5", "train.batch_size=4"]), None,
                      progress=False)
    backend = trainer.backend
    _, mixture, shape = load_mixture(folder)
    latents = torch.randn(3, *shape)
    w = backend.reward_model.w
    assert torch.allclose(backend.reward(latents, backend.encode(torch.tensor([0, 1, 2]))), latents.flatten(1) @ w)
    # Tilting a component by exp(alpha r) with r linear moves its mean by alpha var w.
    moved = backend.world.optimum.means - mixture.means
    assert torch.allclose(moved, 5 * mixture.var * w.expand_as(moved), atol=1e-5)


def test_bench_teach_help_names_every_family(capsys):
    assert main(["teach", "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: bench teach family={'|'.join(FAMILIES)} out=DIR")


def test_a_taught_folder_refuses_what_does_not_fit_it(taught, capsys):
    folder = taught["sd15"]
    common = ["run", "backend=sd15", f"backend.model={folder}", "train.steps=1"]
    assert main([*common, "reward={linear: 1, hpsv2: 1}"]) == 2
    assert "mixes latent rewards" in capsys.readouterr().err
    assert main([*common, "reward=linear", "backend.prompts=coco:x.json"]) == 2
    assert "whose prompts are its captions" in capsys.readouterr().err
    assert main(["teach", "family=sd15"]) == 2
    assert "needs out=DIR" in capsys.readouterr().err


# Each family's teacher with the defaults of `bench teach`, committed (1.6 to 4.9 MB): teaching one costs two to four
# minutes of a core. `python benchmarks/taught_world.py --reproduce` teaches them again and compares every byte.
TEACHERS = Path(__file__).parent / "teachers"


@pytest.mark.parametrize("family", FAMILIES)
def test_the_committed_teachers_are_taught_with_the_defaults_of_bench_teach_and_sample_the_world(family):
    """A change to a default of `bench teach` leaves a committed teacher stale: teach it again (see above). Each
    teacher's own sampler covers every component with its FD within twice the finite-sample floor (measured: 0.9 to
    1.1 times it)."""
    report = json.loads((TEACHERS / family / "teacher.json").read_text())
    assert report["config"] == recorded_settings(TeachConfig(family=family)), \
        f"tests/teachers/{family} is stale: python benchmarks/taught_world.py --reproduce --write"
    sampler = report["sampler"]
    assert sampler["coverage"] == 1 and sampler["fd"] <= 2 * sampler["fd_exact_samples"], sampler


@pytest.mark.parametrize("family", FAMILIES)
def test_the_one_step_start_is_the_worlds_posterior_mean_at_t_init(family):
    """The one-step generator, (z - sigma eps(z; t_init)) / alpha (SD3: z - s v at s 1, pure noise), read on x_t drawn
    from the world diffused to t_init, is the posterior mean E[x0 | x_t] up to the teacher's own error: its mean
    squared distance to the exact one is a small fraction of the posterior's variance (measured: SD1.5 0.033, PixArt
    0.049, SDXL 0.022, SD3 0.008; with alpha and sigma swapped at t_init SDXL's was 0.41 and SD3's not a number; SD3
    taught on eps rather than its velocity was 0.52)."""
    folder = TEACHERS / family
    trainer = Trainer(build_config([f"backend={family}", f"backend.model={folder}", "reward=linear", "threads=1"]),
                      None, progress=False)
    backend, generator = trainer.backend, trainer.unwrapped(trainer.generator)
    world = backend.world.reference
    rng = torch.Generator().manual_seed(0)
    ids = torch.arange(len(backend.captions)).repeat_interleave(64)
    x0 = world.sample(ids, rng).reshape(len(ids), *backend.shape)
    alpha, sigma = (torch.full((len(ids),), v) for v in backend.schedule.at_timestep(generator.t_init))
    x_t = alpha[0] * x0 + sigma[0] * torch.randn(x0.shape, generator=rng)
    with torch.no_grad():
        denoised = generator(x_t, backend.encode(ids))
    exact = world.posterior_mean(x_t, alpha, sigma, ids)  # also at SD3's pure noise, where Tweedie divides by 0
    assert (denoised - exact).pow(2).mean() <= 0.15 * (exact - x0).pow(2).mean()


@pytest.mark.parametrize("family", FAMILIES)
def test_the_guided_reference_score_is_the_worlds_along_the_line_between_captions(family):
    """The guided reference score the methods read (the regulariser's batch: the backend's conditional and
    unconditional calls, combined as s_u + w (s_c - s_u)) pulls caption 0's noisy samples along the line towards
    caption 1 as the world's exact guided score does, at the times where guidance moves them most. Measured at
    t 0.3 / 0.5 / 0.7 on 2048 samples (two seeds), off the exact pull by SD1.5 20-22 / 7-9 / 14-15%, PixArt 25-26 /
    22 / 4%, SDXL 19-20 / 2-4 / 12%, SD3 37-38 / 4 / 1-2%: the teachers' own error. (At 512 samples SDXL's was 12% at
    t 0.3 on one draw and 21% on another: too few for the bound of 20% this test had.) Each mistake is 79% off or
    more at some time on every family (by hand, seed 0): CFG written s_c + w (s_c - s_u) 79 / 85 / 80 / 103% at
    t 0.3; the conditional and unconditional swapped, or the eps-to-score sign flipped, 178-297% everywhere; SD3's
    velocity read as eps = x_t - alpha v 246-340%; SDXL's unconditional from the empty prompt instead of the zeros
    its pipeline (and so the teacher) uses 95-130%; SD3's from zeros instead of its empty prompt 85% at t 0.3. Not
    caught: SD1.5's or PixArt's unconditional from zeros instead of their empty prompt (28 / 35% at t 0.3), which
    their tiny text encoders hardly tell apart."""
    scale = 3.0
    trainer = Trainer(build_config([f"backend={family}", f"backend.model={TEACHERS / family}", "reward=linear",
                                    "threads=1", f"method.alpha_cfg={scale}"]), None, progress=False)
    backend = trainer.backend
    world = backend.world.reference
    line = world.means[1, 0] - world.means[0, 0]
    line = line / line.norm()
    rng = torch.Generator().manual_seed(0)
    ids = torch.zeros(2048, dtype=torch.long)
    x0 = world.sample(ids, rng).reshape(len(ids), *backend.shape)
    cond = backend.encode(ids)
    for time in (0.3, 0.5, 0.7):
        b = trainer.generator_batch(x0, torch.full((len(ids),), time), torch.randn(x0.shape, generator=rng), cond,
                                    scale)
        alpha, sigma = b.alpha.flatten(), b.sigma.flatten()
        with torch.no_grad():
            taught = b.ref_score(b.x_t, scale).flatten(1)
        conditional, unconditional = (-exact_eps(world, b.x_t, alpha, sigma, c).flatten(1) / sigma[:, None]
                                      for c in (ids, None))
        exact = unconditional + scale * (conditional - unconditional)  # written out: not the code under test
        pull, exact_pull = (float((score @ line).mean() * sigma[0]) for score in (taught, exact))
        assert abs(pull - exact_pull) <= 0.5 * abs(exact_pull), (time, pull, exact_pull)


# The methods' criteria on the VP families' committed teachers, 300 steps at batch 16 (the benchmark's table is at
# batch 32; these halve the time and meet every criterion as it does). SD3's slower runs are the benchmark's row.
# DI++ on PixArt's DiT runs at its own generator rate (world_checks.DI_PP_RATE), as in the benchmark.
MOVING = ["sd15", "pixart_alpha", "sdxl"]


def trainer_on_teacher(family: str, *settings: str) -> Trainer:
    return trainer_on(TEACHERS / family, family, *settings, batch=16)


@pytest.mark.parametrize("family", MOVING)
def test_di_pp_with_nothing_to_gain_halves_its_distance_from_the_denoiser_start(family):
    """DI++ with alpha_rew 0, from DMD2's start (the denoiser read at t_init), at least halves its FD to the mixture
    above the floor of as many exact samples, through the real backend (measured: SD1.5 2.63 -> 1.29, PixArt 3.48 ->
    1.59, SDXL 2.61 -> 1.29, each over a floor of 0.60: 66% down). With the eps-to-score sign flipped in the
    backend's ref_score, the same run on SD1.5's teacher of a world of s0 0.1 went from 1.9 to an FD of 1.6 million."""
    trainer = trainer_on_teacher(family, "method=di_pp", "method.alpha_rew=0",
                                 f"train.lr_gen={DI_PP_RATE.get(family, TrainConfig().lr_gen)}")
    floor, start = exact_floor(trainer)["fd_ref"], ema_metrics(trainer)["fd_ref"]
    for _ in range(300):
        trainer.step_once()
    assert ema_metrics(trainer)["fd_ref"] - floor <= 0.5 * (start - floor), (floor, start)


@pytest.mark.parametrize("family", MOVING)
def test_kl_rlhf_with_a_latent_linear_reward_moves_to_p_star(family):
    """The KL-RLHF criterion through the real backend: from the denoiser start, 300 steps at alpha_rew 20 bring the
    reward within a tenth of the start-to-p* gap of p*'s (closed form: the world tilted by the latent linear reward),
    and the FD to p* down by at least 60% above the floor of as many exact samples of p*. Measured, reward against
    p*'s 1.379 and FD over a floor of 0.61: SD1.5 0.047 -> 1.340 (3% of the gap short), FD 4.37 -> 1.09 (87% down);
    PixArt 0.115 -> 1.469 (7% past), 5.04 -> 1.48 (80%); SDXL 0.027 -> 1.348 (2% short), 4.40 -> 1.05 (89%). At 200
    steps SD1.5's and SDXL's reward was 10% of the gap short, at the bound. On a world of s0 0.1 the tiny teachers'
    blur at t 0.02 tilted them past p* (README)."""
    trainer = trainer_on_teacher(family, "method=kl_rlhf", "method.alpha_rew=20")
    start, optimum = ema_metrics(trainer), trainer.backend.describe_optimum(512, 0)
    floor = exact_floor(trainer)["fd_star"]
    for _ in range(300):
        trainer.step_once()
    end = ema_metrics(trainer)
    assert abs(optimum["reward"] - end["reward"]) <= 0.1 * abs(optimum["reward"] - start["reward"]), (start, end)
    assert end["fd_star"] - floor <= 0.4 * (start["fd_star"] - floor), (floor, start, end)
