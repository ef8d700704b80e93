"""The diffusers backends on tiny random SD1.5, PixArt-alpha, SDXL and SD3 pipelines: training, resume, data
parallelism, export, and the messages a user sees when a model is missing."""

import json
import subprocess

import pytest
import torch
from diffusers import DiffusionPipeline

from bench.cli import main
from bench.config import build_config
from bench.store import Store
from bench.train.trainer import GENERATOR_PHASE, Trainer

from conftest import ROOT, backend_args, bench_env, launched, without

BACKENDS = ["sd15", "pixart_alpha", "sdxl", "sd3"]


def snapshot(module) -> dict:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def changed(before: dict, module) -> list[str]:
    return [name for name, value in module.state_dict().items() if not torch.equal(before[name], value)]


def generated(trainer, n: int):
    """n generator samples (latents, without gradient) and their prompts' condition."""
    z, ids = trainer.backend.sample_inputs(n, torch.Generator().manual_seed(0))
    cond = trainer.backend.encode(ids)
    with torch.no_grad():
        return trainer.generator(z.to(trainer.device), cond), cond


def trainer_for(tiny_models, backend, *extra, run=None) -> Trainer:
    return Trainer(build_config([*backend_args(tiny_models, backend), *extra]), run, progress=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["di_star", "di_pp", "kl_rlhf"])
def test_one_iteration_trains_generator_and_fake_score_and_nothing_else(tiny_models, backend, method):
    trainer = trainer_for(tiny_models, backend, f"method={method}", "method.alpha_cfg=1.5")
    b = trainer.backend
    frozen = {"reference": b.reference_net, "vae": b.pipe.vae, "reward": b.reward_model,
              **{name: getattr(b.pipe, name) for name in b.components if name.startswith("text_encoder")}}
    before = {name: snapshot(m) for name, m in {**frozen, "generator": trainer.generator, "fake": trainer.fake}.items()}

    logs = {**trainer.fake_update(), **trainer.generator_update()}

    assert all(torch.isfinite(v) for v in logs.values()), logs
    assert changed(before["generator"], trainer.generator) and changed(before["fake"], trainer.fake)
    for name, module in frozen.items():
        assert not changed(before[name], module), f"{name} changed"


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_reward_gradient_reaches_the_latents_through_the_vae_decoder(tiny_models, backend):
    trainer = trainer_for(tiny_models, backend)
    d = trainer.draw(GENERATOR_PHASE)
    x0 = trainer.generator(d["z"], d["cond"]).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(trainer.backend.reward(x0, d["cond"]).sum(), x0)
    assert grad.abs().sum() > 0 and torch.isfinite(grad).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_reward_scored_in_groups_has_the_whole_batchs_values_and_gradients(tiny_models, backend):
    trainer = trainer_for(tiny_models, backend)
    source, cond = generated(trainer, 5)
    rewards, grads = {}, {}
    for group in (0, 1, 2):  # the whole batch; one image at a time; groups of 2, 2 and 1
        trainer.backend.settings.decode_batch = group
        leaf = source.clone().requires_grad_(True)
        latents = 1.5 * leaf  # a graph before the reward, as the generator's (or kl_rlhf's denoiser's) is
        rewards[group] = trainer.backend.reward(latents, cond)
        (grads[group],) = torch.autograd.grad((rewards[group] * torch.arange(1.0, 6.0)).sum(), leaf)
    assert grads[0].flatten(1).norm(dim=1).min() > 0
    for group in (1, 2):
        torch.testing.assert_close(rewards[group], rewards[0].detach(), rtol=1e-5, atol=1e-6)
        # batched and single-image kernels round differently: tolerances relative to the gradient's size
        torch.testing.assert_close(grads[group], grads[0], rtol=1e-3, atol=1e-5 * float(grads[0].abs().max()))


def test_scoring_in_groups_keeps_one_groups_decoder_activations_not_the_batchs(tiny_models):
    from bench.activations import SavedActivations

    trainer = trainer_for(tiny_models, "sd15")
    b = trainer.backend
    source, cond = generated(trainer, 4)
    peaks = {}
    for group in (0, 1):
        b.settings.decode_batch = group
        latents = source.clone().requires_grad_(True)
        with SavedActivations(b.pipe.vae, b.reward_model) as saved:
            b.reward(latents, cond).sum().backward()
        assert saved.now == 0  # everything saved was released by the backward
        peaks[group] = saved.peak
    assert peaks[1] < 0.3 * peaks[0], peaks


@pytest.mark.parametrize("backend", BACKENDS)
def test_lora_trains_only_the_adapters(tiny_models, backend):
    trainer = trainer_for(tiny_models, backend, "backend.lora_gen=2", "backend.lora_fake=2")
    before = {"generator": snapshot(trainer.generator), "fake": snapshot(trainer.fake)}
    trainer.fake_update()
    trainer.generator_update()
    for name in before:
        moved = changed(before[name], getattr(trainer, name))
        assert moved and all("lora_" in key for key in moved), moved


@pytest.mark.parametrize("backend", ["sd15", "sdxl", "sd3"])
def test_resume_gives_the_state_of_an_uninterrupted_run(tiny_models, tmp_path, backend):
    args = [*backend_args(tiny_models, backend), "train.steps=4", "train.ckpt_every=2", "train.eval_every=3",
            "eval.grid=false"]

    def run_in(folder, on_eval=None):
        cfg = build_config([*args, f"results.dir={folder}"])
        trainer = Trainer(cfg, None, progress=False, on_eval=on_eval)
        trainer.attach(lambda: Store(folder).create(cfg.to_dict()))
        return trainer

    whole = run_in(tmp_path / "whole")
    whole.fit()

    def crash_at_step_3(step, metrics):
        if step == 3:
            raise KeyboardInterrupt

    broken = run_in(tmp_path / "broken", on_eval=crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        broken.fit()
    assert broken.step == 3  # one step past the checkpoint at 2, which the resumed run must redo
    run = broken.run
    resumed = Trainer(broken.cfg, run, progress=False)
    resumed.fit()
    assert resumed.step == 4
    for name in ("generator", "fake"):
        a, b = getattr(whole, name).state_dict(), getattr(resumed, name).state_dict()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    for key, value in whole.ema.params.items():
        torch.testing.assert_close(value, resumed.ema.params[key], rtol=1e-5, atol=1e-6)
    logged = [r["step"] for r in run.records("train")]
    assert logged == sorted(set(logged)), "the resumed run wrote the steps after the checkpoint twice"


def launch(tiny_models, results, processes: int, backend: str):
    """`bench run` on a tiny pipeline, under `accelerate launch` with `processes` CPU processes (gloo)."""
    command = launched(processes, "run", *without(backend_args(tiny_models, backend), "train.batch_size"),
                       "train.batch_size=4", "train.steps=3", "eval.grid=false")
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=bench_env(results), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = Store(results).rows()
    return json.loads(row["summary"]), Store(results).get(row["id"])


@pytest.mark.parametrize("backend", ["sd15", "sdxl", "sd3"])
def test_two_process_accelerate_launch_keeps_replicas_identical_and_the_global_batch(tiny_models, tmp_path, backend):
    two, run_two = launch(tiny_models, tmp_path / "two", 2, backend)
    one, run_one = launch(tiny_models, tmp_path / "one", 1, backend)
    assert two["distributed"]["processes"] == 2 and one["distributed"]["processes"] == 1
    assert two["distributed"]["batch_per_process"] == 2 and two["distributed"]["effective_batch"] == 4
    first, second = two["distributed"]["replica_checksums"]
    assert first == second
    # The global batch is the same samples however it is split: two processes train what one does.
    from safetensors.torch import load_file

    a = load_file(run_two.checkpoint_dir / "model.safetensors")
    b = load_file(run_one.checkpoint_dir / "model.safetensors")
    denoiser = "transformer" if backend == "sd3" else "unet"
    start = load_file(tiny_models[backend] / denoiser / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(a[key], start[key.removeprefix("net.")]) for key in a)  # and it did train


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lora", [0, 2])
def test_export_reloads_with_from_pretrained_and_samples_the_generator_in_one_step(tiny_models, backend, lora,
                                                                                   tmp_path):
    trainer = trainer_for(tiny_models, backend, f"backend.lora_gen={lora}")
    trainer.generator_update()  # weights (and LoRA factors) away from their initial values
    b = trainer.backend
    folder = b.export(trainer.generator, tmp_path / "exported", {"run": "test"})

    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    z = torch.randn(2, *b.shape, generator=torch.Generator().manual_seed(0))
    prompts = [b.captions[0], b.captions[1]]
    family = {"use_resolution_binning": False, "clean_caption": False} if backend == "pixart_alpha" else {}
    with torch.no_grad():
        expected = trainer.generator(z, b.encode(torch.tensor([0, 1])))
        images = pipe(prompts, latents=z.clone(), num_inference_steps=1, guidance_scale=1.0, output_type="pt",
                      **family).images
    assert json.loads((folder / "one_step.json").read_text())["timestep"] == b.settings.t_init
    torch.testing.assert_close(images, b.decode(expected), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend, args, message", [
    ("sd15", ["backend.model=/nowhere/sd15"], "/nowhere/sd15 is not a diffusers pipeline folder (no model_index.json"),
    ("sd15", ["backend.model=someone/no-such-model"],
     "pipeline someone/no-such-model is not in the Hugging Face cache"),
    ("sd15", ["reward=linear"], "reward=linear is defined on the analytic world's pictures; backend=sd15 scores real"),
    ("sdxl", ["backend.model=/nowhere/sdxl"], "/nowhere/sdxl is not a diffusers pipeline folder (no model_index.json"),
    ("sdxl", ["backend.model=SD15"], "is a StableDiffusionPipeline, which has no text_encoder_2; backend=sdxl needs a "
                                     "StableDiffusionXLPipeline"),
    ("sdxl", ["backend.init=someone/dmd2"], "one-step model someone/dmd2 is not in the Hugging Face cache"),
    ("sdxl", ["backend.init=SD15"], "is a UNet2DConditionModel of another shape than the reference's"),
    ("sdxl", ["backend.init=SD15_UNET_FILE"], "does not hold weights of the reference's UNet2DConditionModel"),
    ("sd3", ["backend.model=SD15"], "is a StableDiffusionPipeline, which has no transformer; backend=sd3 needs a "
                                    "StableDiffusion3Pipeline"),
    ("sd3", ["backend.t_init=1001"], "backend.t_init must be at most 1000"),
    ("sdxl", ["backend.model=SD3"], "is a StableDiffusion3Pipeline, which has no unet; backend=sdxl needs a "
                                    "StableDiffusionXLPipeline"),
])
def test_missing_models_and_wrong_rewards_give_one_clear_line(tiny_models, results, backend, args, message, capsys,
                                                              hub_unreachable):
    sd15 = tiny_models["sd15"]
    args = [a.replace("SD15_UNET_FILE", str(sd15 / "unet" / "diffusion_pytorch_model.safetensors"))
            .replace("SD15", str(sd15)).replace("SD3", str(tiny_models["sd3"])) for a in args]
    base = backend_args(tiny_models, backend)
    for arg in args:
        base = without(base, arg.partition("=")[0])
    assert main(["run", *base, *args, f"results.dir={results}"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert Store(results).rows() == []  # nothing half-made is left in the store


def test_a_finished_run_exports_a_pipeline_that_bench_eval_scores(tiny_models, results, capsys):
    assert main(["run", *backend_args(tiny_models, "sd15"), "train.steps=2", f"results.dir={results}"]) == 0
    (row,) = Store(results).rows()
    run = Store(results).get(row["id"])
    capsys.readouterr()
    assert main(["eval", f"run={run.id}", f"results.dir={results}"]) == 2
    assert f"bench eval pipeline={run.dir / 'pipeline'}" in capsys.readouterr().err
    assert main(["eval", f"pipeline={run.dir / 'pipeline'}", "prompts=builtin", "subset=2", "metrics=hpsv2",
                 f"weights={tiny_models['weights']}", f"results.dir={results}"]) == 0
    (evaluation,) = Store(results).evals()
    assert evaluation["run_id"].startswith(f"pipeline-{run.id}-")
    assert json.loads(evaluation["protocol"])["scheduler"] == "DDIMScheduler"


def one_step_model(tiny_models, folder, form: str) -> str:
    """A one-step model of the tiny SDXL's architecture, with weights of its own, saved the way `form` says."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_models["sdxl"], subfolder="unet")
    torch.manual_seed(7)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    if form == "model folder":
        unet.save_pretrained(folder)
        return str(folder)
    if form == "pipeline folder":
        pipe = DiffusionPipeline.from_pretrained(tiny_models["sdxl"])
        pipe.unet = unet
        pipe.register_modules(unet=unet)
        pipe.save_pretrained(folder)
        return str(folder)
    folder.mkdir()
    path = folder / "one_step_unet.bin"  # DMD2 publishes a bare state dict in half precision
    torch.save({k: v.half() for k, v in unet.state_dict().items()}, path)
    return str(path)


@pytest.mark.parametrize("form", ["model folder", "pipeline folder", "weights file"])
def test_the_generator_starts_from_an_existing_one_step_model_and_the_fake_score_from_the_reference(
        tiny_models, tmp_path, form):
    source = one_step_model(tiny_models, tmp_path / "dmd", form)
    trainer = trainer_for(tiny_models, "sdxl", f"backend.init={source}", "backend.t_init=250")
    b = trainer.backend
    own = torch.load(source, weights_only=True) if form == "weights file" else None
    start = b.generator_start.state_dict()
    reference = b.reference_net.state_dict()
    for key, value in trainer.generator.net.state_dict().items():
        assert torch.equal(value, start[key])
        if own is not None:
            torch.testing.assert_close(value, own[key].float())
    assert any(not torch.equal(start[k], reference[k]) for k in start)  # not the reference's weights
    for key, value in trainer.fake.net.state_dict().items():
        assert torch.equal(value, reference[key])
    assert trainer.generator.t_init == 250
    # The export merges into the one-step model's weights (read at its own timestep), not the reference's.
    trainer.generator_update()
    folder = b.export(trainer.generator, tmp_path / "exported", {"run": "test"})
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    z = torch.randn(2, *b.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = trainer.generator(z, b.encode(torch.tensor([0, 1])))
        images = pipe([b.captions[0], b.captions[1]], latents=z.clone(), num_inference_steps=1, guidance_scale=1.0,
                      output_type="pt").images
    torch.testing.assert_close(images, b.decode(expected), rtol=1e-4, atol=1e-5)


def test_sdxl_drops_text_as_zeros_and_conditions_on_pooled_embeddings_and_size(tiny_models):
    """The unconditional score of SDXL base is read at zero embeddings (force_zeros_for_empty_prompt); the pooled
    embedding and the size conditioning reach the UNet (changing either changes its output)."""
    b = trainer_for(tiny_models, "sdxl").backend
    assert torch.count_nonzero(b.empty.embeds) == 0 and torch.count_nonzero(b.empty.pooled) == 0
    cond = b.encode(torch.tensor([0]))
    assert cond.pooled.shape == (1, 8) and cond.embeds.shape[-1] == 16  # two encoders side by side
    x = torch.randn(1, *b.shape, generator=torch.Generator().manual_seed(0))
    t, side = torch.tensor([500]), float(b.resolution)
    with torch.no_grad():
        base = b.call_denoiser(b.reference_net, x, t, cond)
        other_pooled = b.call_denoiser(b.reference_net, x, t, cond._replace(pooled=cond.pooled + 1))
        pipe_eps = b.reference_net(x, t, encoder_hidden_states=cond.embeds, added_cond_kwargs={
            "text_embeds": cond.pooled, "time_ids": torch.tensor([[side, side, 0, 0, side, side]])}).sample
    assert not torch.allclose(base, other_pooled)
    torch.testing.assert_close(base, pipe_eps)  # the pipeline's time ids for a square at our size, uncropped


@pytest.mark.parametrize("backend", ["sd15", "pixart_alpha", "sdxl"])
def test_x_t_is_noised_to_the_timestep_the_denoiser_is_told(tiny_models, backend):
    """The x_t the methods build at time t is what the family's own betas give at the timestep the backend hands the
    denoiser with it (diffusers' DDPM add_noise on the pipeline's scheduler config). An index off by one between
    alphas_cumprod and that timestep, on either side, fails here, where the taught teachers' own error hides it."""
    from diffusers import DDPMScheduler

    trainer = trainer_for(tiny_models, backend, "method.alpha_cfg=1")
    b = trainer.backend
    d = trainer.draw(GENERATOR_PHASE)
    x0 = trainer.generator(d["z"], d["cond"]).detach()
    batch = trainer.generator_batch(x0, d["t"], d["eps"], d["cond"])
    told = []
    hook = b.reference_net.register_forward_pre_hook(
        lambda net, args, kwargs: told.append(kwargs["timestep"] if "timestep" in kwargs else args[1]),
        with_kwargs=True)
    with torch.no_grad():
        batch.ref_score(batch.x_t, 1.0)
    hook.remove()
    (timesteps,) = told  # the one call: the reference's, unguided
    timesteps = timesteps.flatten().long().expand(len(x0))
    assert len(set(timesteps.tolist())) > 1  # several noise levels, each its own
    expected = DDPMScheduler.from_config(b.pipe.scheduler.config).add_noise(x0, d["eps"], timesteps)
    torch.testing.assert_close(batch.x_t, expected, rtol=1e-5, atol=1e-6)


def test_sd3_reads_its_velocity_as_the_flows_own_euler_step_and_runs_without_t5(tiny_models):
    """SD3's transformer predicts v = eps - x0 on x_t = (1 - s) x0 + s eps. The reference's Tweedie x0, read through
    the eps the backend makes of v, must be where the pipeline's own scheduler steps x_t to at sigma 0: x_t - s v.
    The other sign convention (v = x0 - eps) or an eps read as if the path were VP fails. Without T5 (backend.t5=
    false) the text states are the CLIPs' beside zeros, as the pipeline makes them."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    trainer = trainer_for(tiny_models, "sd3", "method.alpha_cfg=1")
    d = trainer.draw(GENERATOR_PHASE)
    x0 = trainer.generator(d["z"], d["cond"]).detach()
    batch = trainer.generator_batch(x0, d["t"], d["eps"], d["cond"])
    b = trainer.backend
    # Unshifted, so that the sigma it is given is the batch's s itself (the batch's times already carry the shift).
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(b.pipe.scheduler.config, shift=1.0)
    with torch.no_grad():
        tweedie = batch.denoised(batch.x_t, 1.0)
        for i in range(len(x0)):
            s = float(batch.sigma.flatten()[i])
            scheduler.set_timesteps(sigmas=[s], device="cpu")
            timestep = scheduler.timesteps[:1]
            v = b.call_denoiser(b.reference_net, batch.x_t[i:i + 1], timestep, type(d["cond"])(
                *(field[i:i + 1] for field in d["cond"])))
            stepped = scheduler.step(v, timestep[0], batch.x_t[i:i + 1]).prev_sample
            torch.testing.assert_close(tweedie[i:i + 1], stepped, rtol=1e-4, atol=1e-5)
    assert float(batch.alpha.flatten()[0] ** 2 + batch.sigma.flatten()[0] ** 2) < 0.999  # not a VP path

    no_t5 = trainer_for(tiny_models, "sd3", "backend.t5=false").backend
    assert no_t5.pipe.text_encoder_3 is None
    cond, full = no_t5.encode(torch.tensor([0])), b.encode(torch.tensor([0]))
    torch.testing.assert_close(cond.embeds[:, :77], full.embeds[:, :77])  # the CLIPs' 77 rows, padded to T5's width
    assert torch.count_nonzero(cond.embeds[:, 77:]) == 0 and torch.count_nonzero(full.embeds[:, 77:]) > 0
