"""`bench teach`: a learned world, so that the real families' code is measured against exact answers on a CPU.

A teacher of a family's own classes (its denoiser, text encoder, tokenizer, VAE and scheduler configuration, tiny)
is trained on a Gaussian mixture over its latents (the analytic world's pictures as latents, one mixture per
caption) by regression onto the mixture's exact eps (a flow model's: velocity), through the backend's own calls
(its timestep indexing into alphas_cumprod, its prompt encoding), and on the unconditional condition the family's
pipeline builds for guidance (the empty prompt, or SDXL's zeros) for the captions it drops. The folder it writes is
a standard pipeline that `bench run backend=FAMILY backend.model=DIR` uses like any other, plus the world it was taught
(world.safetensors: runs on it are scored exactly) and the teacher's own error (teacher.json: no student can beat
its teacher).
"""

from __future__ import annotations

import json
import math
import shutil
import string
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from bench.analytic.metrics import frechet_distance, sample_moments
from bench.analytic.world import picture_mixture, save_mixture
from bench.diffusion import noised
from bench.errors import UsageError
from bench.fields import param

FAMILIES = ("sd15", "pixart_alpha", "sdxl", "sd3")
TEACHER_FILE = "teacher.json"
# Latent channels of each family's VAE: SD3's has 16, the others 4.
LATENT_CHANNELS = {"sd15": 4, "pixart_alpha": 4, "sdxl": 4, "sd3": 16}
# Timesteps at which the teacher's eps error against the exact one is recorded.
ERROR_TIMESTEPS = (10, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 990)


@dataclass
class TeachConfig:
    family: str = param("sd15", "the family whose classes the teacher is built from", choices=FAMILIES)
    out: str = param("", "folder to write the taught pipeline to (replaced if it exists)")
    seed: int = param(0, "seed of the weights, the world's samples and the checks", ge=0, le=2**63 - 1)
    steps: int = param(1200, "updates of the teacher", ge=1, le=10**7)
    batch_size: int = param(64, "exact mixture samples an update", ge=2, le=65536)
    lr: float = param(4e-3, "AdamW learning rate, decayed to zero on a cosine", gt=0, le=1)
    prompts: int = param(4, "captions of the world", ge=2, le=16)
    components: int = param(2, "mixture components a caption", ge=1, le=8)
    s0: float = param(0.25, "standard deviation of every component, per latent value. Not smaller: KL-RLHF reads "
                      "the teacher at t 0.02 (noise 0.14), and at s0 0.1 the tiny teacher's denoiser there shrank "
                      "x_t too little (its reward gradient 1.17 times the exact one), which tilted runs past p*",
                      gt=0, le=1)
    side: int = param(4, "latent side: the teacher's sample_size", choices=(4, 8))
    drop: float = param(0.5, "share of samples taught unconditionally (the caption dropped as the family drops it). "
                        "Half, not the 10% of real training: guidance reads the unconditional law of overlapping "
                        "captions, the harder one to learn: at 10% SDXL's guided score along the line between two "
                        "overlapping captions was 1.85 times the exact one at t 0.2, at half 4% off", ge=0, lt=1)
    off_path: float = param(0.25, "share of each batch taught off the forward process's path: x_t = alpha x0 + "
                            "sigma (eps + u spread n), u uniform in [0, 1] and n a second noise, where the exact eps "
                            "is known too. A sampler's early errors walk its samples there: taught on the path "
                            "alone, PixArt's DiT sent 1% of them to a far-off place it never unlearnt (its sampler "
                            "6 and 47 times the floor at seeds 0 and 1; 1.1 and 1.2 times with this)", ge=0, le=1)
    spread: float = param(2.0, "largest extra noise of an off-path point, in units of sigma_t", gt=0, le=100)
    sampler_steps: int = param(25, "DPM-Solver++ steps (Karras times) of the sampler check", ge=1, le=1000)
    samples: int = param(256, "samples a caption in the sampler check", ge=8, le=100000)


def clip_vocabulary(folder: Path) -> None:
    """CLIP's tokenizer files for a byte-pair vocabulary of single letters; end-of-text has the largest id, as in
    CLIP's."""
    folder.mkdir(parents=True, exist_ok=True)
    letters = string.ascii_lowercase
    tokens = [*letters, *(c + "</w>" for c in letters), "<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    clip_vocabulary(folder)
    return CLIPTokenizer.from_pretrained(folder, model_max_length=32)


def t5_tokenizer(folder: Path, length: int = 120):
    """A T5TokenizerFast on a Unigram model over letters: T5's pieces, padding and </s>, a vocabulary of 32;
    `length` tokens a prompt (PixArt's 120)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(letter, -3.0) for letter in string.ascii_lowercase + ",."]
    model = Tokenizer(models.Unigram(pieces, unk_id=2))
    model.pre_tokenizer = pre_tokenizers.Metaspace()
    model.decoder = decoders.Metaspace()
    model.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = T5TokenizerFast(tokenizer_object=model, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                extra_ids=0, model_max_length=length)
    tokenizer.save_pretrained(folder)
    return T5TokenizerFast.from_pretrained(folder)


def tiny_vae(scaling_factor: float, channels: int = 4, shift_factor: float | None = None):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=channels,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=4, scaling_factor=scaling_factor, shift_factor=shift_factor)


def unet(side: int, cross: int, **extra):
    """A small UNet2DConditionModel. One attention head a block: diffusers' `attention_head_dim` is the number of
    heads, and heads of two channels made CPU attention half the teacher's time."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=side,
                                in_channels=4, out_channels=4, cross_attention_dim=cross,
                                norm_num_groups=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=1, **extra)


CLIP_TEXT = dict(vocab_size=54, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 max_position_embeddings=32, bos_token_id=52, eos_token_id=53, pad_token_id=53)


def blank_pipeline(family: str, side: int, folder: Path):
    """The family's pipeline with random weights in its own classes and its own scheduler configuration."""
    from transformers import CLIPTextConfig, CLIPTextModel

    if family == "sd15":
        from diffusers import PNDMScheduler, StableDiffusionPipeline

        scheduler = PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                  skip_prk_steps=True, set_alpha_to_one=False)
        return StableDiffusionPipeline(unet=unet(side, 32), vae=tiny_vae(0.18215),
                                       text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_TEXT)),
                                       tokenizer=clip_tokenizer(folder / "clip"), scheduler=scheduler,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if family == "sdxl":
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
        from transformers import CLIPTextModelWithProjection

        pooled, time_width = 32, 8
        tokenizer = clip_tokenizer(folder / "clip")
        scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                           steps_offset=1, timestep_spacing="leading")
        net = unet(side, 2 * CLIP_TEXT["hidden_size"], addition_embed_type="text_time",
                   addition_time_embed_dim=time_width, projection_class_embeddings_input_dim=pooled + 6 * time_width)
        return StableDiffusionXLPipeline(
            vae=tiny_vae(0.13025), text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_TEXT)),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_TEXT, projection_dim=pooled)),
            tokenizer=tokenizer, tokenizer_2=tokenizer, unet=net, scheduler=scheduler,
            force_zeros_for_empty_prompt=True)
    if family == "sd3":
        return sd3_pipeline(side, folder)
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    transformer = PixArtTransformer2DModel(sample_size=side, num_layers=4, patch_size=1, attention_head_dim=32,
                                           num_attention_heads=2, caption_channels=32, in_channels=4,
                                           out_channels=8, cross_attention_dim=64,  # eps and a learned variance
                                           norm_elementwise_affine=False, norm_eps=1e-6, norm_type="ada_norm_single")
    text = T5EncoderModel(T5Config(vocab_size=32, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                                   pad_token_id=0, eos_token_id=1))
    scheduler = DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
    return PixArtAlphaPipeline(tokenizer=t5_tokenizer(folder / "t5"), text_encoder=text, vae=tiny_vae(0.18215),
                               transformer=transformer, scheduler=scheduler)


def sd3_pipeline(side: int, folder: Path):
    """SD3's own classes: an MMDiT (2 x 2 patches) on two CLIP encoders with projections and a T5 encoder, the
    16-channel VAE with SD3's scaling and shift, and the flow-matching scheduler with SD3's shift 3. T5's tokenizer
    takes 24 tokens, enough for any caption of the world (the backend reads its model_max_length): the joint
    attention's text sequence is the CLIPs' 32 and T5's, and at the pipeline's 256 T5 tokens a step cost seven
    times what it costs at 8. Two heads of 64 channels (SD3's own head width): a 2 x 2 patch of 16 channels is 64
    values, and at an inner width of 64 (heads of 32, four blocks) the teacher's largest eps error was 0.03 and its
    sampler 2.7 times the floor; at 128 with four blocks 0.002 and at the floor, and with two, the same at half
    the time."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    pooled, joint, heads, head_width = 16, 64, 2, 64
    transformer = SD3Transformer2DModel(sample_size=side, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                                        attention_head_dim=head_width, num_attention_heads=heads,
                                        joint_attention_dim=joint, caption_projection_dim=heads * head_width,
                                        pooled_projection_dim=2 * pooled,
                                        pos_embed_max_size=side // 2)
    text = dict(CLIP_TEXT, projection_dim=pooled)
    tokenizer = clip_tokenizer(folder / "clip")
    text_3 = T5EncoderModel(T5Config(vocab_size=32, d_model=joint, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                                     pad_token_id=0, eos_token_id=1))
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=tiny_vae(1.5305, 16, 0.0609), text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(**text)),
        tokenizer=tokenizer, text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text)), tokenizer_2=tokenizer,
        text_encoder_3=text_3, tokenizer_3=t5_tokenizer(folder / "t5", length=24))


def recorded_settings(cfg: TeachConfig) -> dict:
    """The settings teacher.json records: all but `out`, which is no part of the teacher."""
    return {key: value for key, value in vars(cfg).items() if key != "out"}


def teach(cfg: TeachConfig, progress: bool = True) -> Path:
    """Write the taught pipeline folder `cfg.out`; returns it."""
    if not cfg.out:
        raise UsageError("bench teach needs out=DIR, the folder to write the taught pipeline to")
    out = Path(cfg.out).expanduser().resolve()
    partial = out.with_name(f".{out.name}.teaching")
    threads = torch.get_num_threads()
    # One thread: a CPU's float sums depend on how many threads share them, so a seed gives the same teacher bit for
    # bit only at one thread count (and on the same kind of CPU and torch build).
    torch.set_num_threads(1)
    try:
        return taught_folder(cfg, out, partial, progress)
    finally:
        torch.set_num_threads(threads)


def taught_folder(cfg: TeachConfig, out: Path, partial: Path, progress: bool) -> Path:
    from bench.backends import load_backend
    from bench.config import build_config
    from bench.store.files import atomic_write_json, replace_folder

    torch.manual_seed(cfg.seed)
    shape = (LATENT_CHANNELS[cfg.family], cfg.side, cfg.side)
    texts, world = picture_mixture(cfg.prompts, cfg.components, cfg.side, shape[0], cfg.s0)
    shutil.rmtree(partial, ignore_errors=True)
    blank_pipeline(cfg.family, cfg.side, partial / ".tokenizer").save_pretrained(partial)
    shutil.rmtree(partial / ".tokenizer")
    save_mixture(partial, texts, world, shape)
    # The backend the runs will use, on the blank folder: its calls are the ones the teacher learns through.
    run_cfg = build_config([f"backend={cfg.family}", f"backend.model={partial}", "reward=linear"])
    backend = load_backend(cfg.family)(run_cfg, torch.device("cpu"))
    net = backend.reference_net.requires_grad_(True).train()
    losses = fit(backend, world, cfg, progress)
    net.requires_grad_(False).eval()
    # Diffusers records the folder each part was loaded from (here `partial`): a teacher is the same bytes wherever
    # it is taught, so that is not written.
    for part in (backend.pipe, *backend.pipe.components.values()):
        if hasattr(part, "register_to_config"):
            part.register_to_config(_name_or_path="")
    backend.pipe.save_pretrained(partial)
    report = {"family": cfg.family, "config": recorded_settings(cfg), "final_loss": losses,
              "eps_error": eps_error(backend, world, cfg.seed),
              "sampler": sampler_check(backend, world, cfg)}
    atomic_write_json(partial / TEACHER_FILE, report)
    replace_folder(partial, out)
    return out


@torch.no_grad()
def pipeline_unconditional(backend):
    """The unconditional condition as the family's own pipeline builds it for classifier-free guidance, its negative
    prompt left unset: the empty prompt's encoding, or zeros where SDXL's pipeline forces them. The teacher learns
    its unconditional law on this rather than on the backend's own `empty`, so that a run whose `empty` is wrong
    (SDXL's empty prompt in place of its zeros) reads a condition the teacher never saw, and fails the guidance
    check instead of agreeing with a teacher taught the same mistake."""
    from bench.backends.pretrained import TextCondition

    pipe, prompt, device, family = backend.pipe, backend.captions[:1], backend.device, backend.settings.name
    if family == "sd15":
        _, embeds = pipe.encode_prompt(prompt, device, 1, True)
    elif family == "pixart_alpha":
        _, _, embeds, mask = pipe.encode_prompt(prompt, device=device)
    elif family == "sd3":
        _, embeds, _, pooled = pipe.encode_prompt(prompt, None, None, device=device,
                                                  max_sequence_length=backend.t5_tokens)
    else:
        _, embeds, _, pooled = pipe.encode_prompt(prompt, device=device)
    if family != "pixart_alpha":
        mask = torch.ones(embeds.shape[:2], device=device)
    if family in ("sd15", "pixart_alpha"):
        pooled = embeds.new_zeros(1, 0)
    return TextCondition(torch.zeros(1, dtype=torch.long), embeds, mask, pooled)


def draw_condition(captions: Tensor, dropped: Tensor, table, unconditional):
    """The batch's text condition: each caption's rows of `table`, or the `unconditional` condition where dropped."""
    def pick(rows: Tensor, blank: Tensor) -> Tensor:
        where = dropped.reshape(-1, *([1] * (rows.dim() - 1)))
        return torch.where(where, blank.expand_as(rows), rows)

    return type(table)(captions, *(pick(field[captions], blank) for field, blank in zip(table[1:], unconditional[1:],
                                                                                          strict=True)))


def fit(backend, world, cfg: TeachConfig, progress: bool) -> float:
    """Regression onto the exact eps (a flow model's: velocity), times uniform over the family's timesteps, with an EMA.

    The world's eps is known at every x_t, so the target is the exact E[eps | x_t] rather than denoising score
    matching's noise that made x_t (the same minimiser, none of its variance, which at PixArt's last timesteps hides
    an eps of ~0.006 in a target of ~1), and it is known off the forward process's path too (`off_path`)."""
    from bench.train.trainer import EMA

    net = backend.reference_net
    rng = torch.Generator().manual_seed(cfg.seed + 1)
    optimiser = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda k: 0.5 * (1 + math.cos(math.pi * k / cfg.steps)))
    average = EMA(net, 0.0)
    table = backend.encode(torch.arange(len(backend.captions)))
    unconditional = pipeline_unconditional(backend)
    bar = tqdm(range(cfg.steps), desc=f"teach {cfg.family}", unit="step", disable=not progress, file=sys.stderr)
    recent = []
    for step in bar:
        captions = torch.randint(len(backend.captions), (cfg.batch_size,), generator=rng)
        x0 = world.sample(captions, rng).reshape(-1, *backend.shape)
        t = torch.rand(cfg.batch_size, generator=rng)
        eps = torch.randn(x0.shape, generator=rng)
        dropped = torch.rand(cfg.batch_size, generator=rng) < cfg.drop
        off = torch.rand(cfg.batch_size, 1, 1, 1, generator=rng) < cfg.off_path
        extra = cfg.spread * torch.rand(cfg.batch_size, 1, 1, 1, generator=rng) * torch.randn(x0.shape, generator=rng)
        alpha, sigma, x_t = noised(backend.schedule, x0, t, torch.where(off, eps + extra, eps))
        target = torch.where(dropped.reshape(-1, 1, 1, 1), exact_output(backend, world, x_t, alpha, sigma, None),
                             exact_output(backend, world, x_t, alpha, sigma, captions))
        cond = draw_condition(captions, dropped, table, unconditional)
        output = backend.call_denoiser(net, x_t, backend.schedule.timestep(t), cond).float()
        loss = (output - target).pow(2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        average.decay = min(0.995, (1 + step) / (10 + step))  # a short warm-up, then about 200 updates
        average.update(net)
        recent = [*recent[-49:], float(loss.detach())]
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
    EMA.copy_to(net, average.params)
    return sum(recent) / len(recent)


@torch.no_grad()
def exact_output(backend, world, x_t: Tensor, alpha: Tensor, sigma: Tensor, captions: Tensor | None) -> Tensor:
    """What the family's network predicts, exactly: E[eps | x_t], or a flow model's velocity E[eps - x0 | x_t].
    Regressed on eps, a flow model's velocity error counts alpha^2 times: nothing near pure noise, where SD3's
    one-step generator reads it (taught on eps, SD3's x0 there was off by half the prior's variance)."""
    eps = exact_eps(world, x_t, alpha, sigma, captions)
    if not backend.flow:
        return eps
    return eps - world.posterior_mean(x_t.flatten(1), alpha, sigma, captions).reshape(x_t.shape)


@torch.no_grad()
def exact_eps(world, x_t: Tensor, alpha: Tensor, sigma: Tensor, captions: Tensor | None) -> Tensor:
    """eps = -sigma * score of the diffused mixture (captions None: the unconditional law, all captions alike)."""
    score = world.score(x_t.flatten(1), alpha, sigma, captions)
    return (-sigma.reshape(-1, 1) * score).reshape(x_t.shape)


@torch.no_grad()
def eps_error(backend, world, seed: int, per_caption: int = 64) -> dict[str, dict[str, float]]:
    """Per timestep: the teacher's mean squared eps error against the exact eps (per latent value), conditional and
    unconditional, beside the exact eps's own mean square (what the error is small against)."""
    rng = torch.Generator().manual_seed(seed + 2)
    captions = torch.arange(len(backend.captions)).repeat_interleave(per_caption)
    table = backend.encode(torch.arange(len(backend.captions)))
    unconditional = pipeline_unconditional(backend)
    out = {}
    for timestep in ERROR_TIMESTEPS:
        t = torch.full((len(captions),), backend.schedule.time_of_timestep(timestep))
        x0 = world.sample(captions, rng).reshape(-1, *backend.shape)
        alpha, sigma, x_t = noised(backend.schedule, x0, t, torch.randn(x0.shape, generator=rng))
        row = {}
        for name, dropped in (("conditional", False), ("unconditional", True)):
            cond = draw_condition(captions, torch.full_like(captions, dropped, dtype=torch.bool), table,
                                  unconditional)
            exact = exact_eps(world, x_t, alpha, sigma, None if dropped else captions)
            row[name] = float((backend.reference(x_t, t, alpha, sigma, cond).float() - exact).pow(2).mean())
        row["exact_mean_square"] = float(exact.pow(2).mean())
        out[str(timestep)] = row
    return out


@torch.no_grad()
def sampler_check(backend, world, cfg: TeachConfig) -> dict:
    """The teacher's own multi-step sampler (the pipeline's call: DPM-Solver++ on Karras times for the VP families,
    SD3's own flow-matching Euler sampler for SD3) against the world: each caption's FD to its exact moments beside
    the FD of as many exact samples (the finite-sample floor) and of the same solver on the exact answer (its
    discretisation), and the share of components that receive at least a quarter of their expected samples.
    Uniform times left the VP solver itself at 3.6 times the floor at 25 steps (s0 0.1, SD1.5's schedule); Karras
    times reach 1.15."""
    from diffusers import DPMSolverMultistepScheduler

    pipe = backend.pipe
    if not backend.flow:
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True)
    rng = torch.Generator().manual_seed(cfg.seed + 3)
    captions = torch.arange(len(backend.captions)).repeat_interleave(cfg.samples)
    z = torch.randn((len(captions), *backend.shape), generator=rng)
    extra = {}
    if cfg.family == "pixart_alpha":
        extra = {"use_resolution_binning": False}
    if cfg.family == "sd3":  # T5's sequence as the backend reads it
        extra = {"max_sequence_length": backend.t5_tokens}
    side = backend.resolution
    taught = torch.cat([pipe([backend.captions[int(c)] for c in captions[start:start + 256]],
                             latents=z[start:start + 256], num_inference_steps=cfg.sampler_steps, guidance_scale=1.0,
                             output_type="latent", height=side, width=side, **extra).images
                        for start in range(0, len(captions), 256)]).flatten(1).float()
    solver = pipe.scheduler
    solver.set_timesteps(cfg.sampler_steps)
    x, posterior_mean = z.clone(), world.denoiser(captions)
    for timestep in solver.timesteps:
        # The exact answer from the posterior mean, which is defined at flow matching's s = 1 (alpha 0) too: eps
        # for an eps-predictor, the velocity eps - x0 for a flow model.
        alpha, sigma = backend.schedule.at_timestep(timestep.item())
        x0 = posterior_mean(x.flatten(1), alpha, sigma).reshape(x.shape)
        eps = (x - alpha * x0) / sigma
        x = solver.step(eps - x0 if backend.flow else eps, timestep, x).prev_sample
    samples = {"fd": taught, "fd_exact_eps": x.flatten(1), "fd_exact_samples": world.sample(captions, rng)}
    rows = []
    for caption in range(len(backend.captions)):
        pick = captions == caption
        counts = torch.bincount(world.assign(taught[pick], captions[pick]), minlength=world.means.shape[1])
        expected = pick.sum() * world.log_weights[caption].exp()
        rows.append({"caption": backend.captions[caption],
                     **{key: frechet_distance(*sample_moments(x[pick]), *world.moments(caption))
                        for key, x in samples.items()},
                     "coverage": float((counts >= 0.25 * expected).float().mean())})
    return {"steps": cfg.sampler_steps, "samples_a_caption": cfg.samples,
            **{key: sum(r[key] for r in rows) / len(rows) for key in (*samples, "coverage")}, "captions": rows}
