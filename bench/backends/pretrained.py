"""Backends on real pretrained text-to-image diffusion pipelines: SD1.5, PixArt-alpha, SDXL and SD3 / 3.5, by hub id
or folder.

Every network is a denoiser of the reference's architecture: an eps prediction on a VP path (SD1.5, PixArt, SDXL),
or a velocity v = eps - x0 on flow matching's path x_t = (1 - s) x0 + s eps (SD3), read as eps = x_t + alpha_t v,
so that the trainer and the methods see one kind of network on any Gaussian path:

    reference  frozen; the prompt's and the unconditional embeddings give classifier-free guidance
    generator  a one-step model: the denoiser's x0 from pure noise z read at timestep t_init,
               (z - sigma_init eps) / alpha_init, or z - s_init v for a flow model (defined at s_init = 1 too). The
               denoiser is the reference's own (as DMD2 and SiD start from their teacher), or an existing one-step
               model (`backend.init`), as DI* post-trained DMD2's one-step SDXL
    fake       a copy of the reference, trained by denoising score matching on the generator's samples

Each trained copy is fully fine-tuned, or is a frozen copy carrying a LoRA adapter (peft) that starts at zero.
The method's times t in (0, 1) map to the reference's own discrete timesteps, so x_t is always a noisy latent
the reference was trained on. Rewards see VAE-decoded pixels, with the gradient through decoder and reward.

A family (SD15Backend, PixArtAlphaBackend, SDXLBackend, SD3Backend) only says how its denoiser is called, how its
prompts are encoded, and whether it is a flow model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from bench.analytic.world import ExactWorld, load_mixture
from bench.backends.diffusers_io import load_pipeline, pipeline_folder
from bench.diffusion import DiscreteSchedule, FlowSchedule, broadcast, image_noise, inner
from bench.errors import UsageError
from bench.fields import param
from bench.prompts import PromptSet, load_prompt_set

# Attention projections: where LoRA adapts a UNet or a DiT (the convention of diffusers' training scripts), and the
# text stream's projections of SD3's joint attention (add_*, to_add_out; RTDMD's SD3.5 targets), which the other
# families do not have.
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
EVAL_BATCH = 16


class TextCondition(NamedTuple):
    """Prompts as the denoisers see them (tensors only, so data-parallel wrappers can move them)."""

    ids: Tensor  # rows of the backend's prompt list: the reward reads the texts by them
    embeds: Tensor
    mask: Tensor  # the text encoder's attention mask (all ones where the family does not use one)
    pooled: Tensor  # a pooled text embedding a prompt (SDXL's second encoder); width 0 where a family has none


def reference_model(default: str):
    """The `backend.model` key, with a family's default pipeline."""
    return param(default, "reference pipeline: a hub id or a local folder written by save_pretrained")


@dataclass
class PretrainedConfig:
    name: ClassVar[str]

    model: str = reference_model("")
    t_init: int = param(399, "timestep the one-step generator reads its denoiser at: the reference's (399, as DMD2 "
                        "and DI*), or the one backend.init was distilled for (DMD2's SDXL 399, SD-Turbo 999)",
                        ge=1, le=999)
    init: str = param("", "start the generator from an existing one-step model instead of the reference: a diffusers "
                      "model or pipeline folder or hub id, or a weights file (.safetensors, .bin) of the reference's "
                      "denoiser, such as DMD2's one-step SDXL UNet; the fake score still starts from the reference")
    resolution: int = param(0, "image side in pixels for training and evaluation (0: the model's own)", ge=0)
    lora_gen: int = param(0, "LoRA rank of the generator (0: full fine-tuning)", ge=0)
    lora_fake: int = param(0, "LoRA rank of the fake-score network (0: full fine-tuning)", ge=0)
    grad_ckpt: bool = param(False, "gradient checkpointing in every denoiser (less memory, about 30% slower)")
    decode_batch: int = param(1, "images decoded and scored together when the reward's gradient is taken; each "
                              "group's VAE activations are freed before the next (0: the whole batch at once). The "
                              "gradient is the same; memory grows with this number", ge=0)
    prompts: str = param("builtin", "training prompts: builtin, coco:PATH, hps_v2:DIR, parti:PATH or text:PATH")
    eval_prompts: int = param(8, "prompts of the training set that the in-training evaluation uses", ge=1)


class EpsNetwork(nn.Module):
    """eps(x_t; t, c) of one denoiser copy, called the way its family calls it."""

    def __init__(self, net: nn.Module, backend: PretrainedBackend):
        super().__init__()
        self.net = net
        self.call, self.schedule = backend.call_denoiser, backend.schedule

        self.as_eps = backend.as_eps

    def forward(self, x_t: Tensor, t: Tensor, alpha: Tensor, sigma: Tensor, cond: TextCondition) -> Tensor:
        return self.as_eps(self.call(self.net, x_t, self.schedule.timestep(t), cond), x_t, alpha)


class OneStepGenerator(nn.Module):
    """The denoiser's x0 from z read at timestep t_init: what the exported pipeline's one step computes."""

    def __init__(self, net: nn.Module, backend: PretrainedBackend, t_init: int):
        super().__init__()
        self.net, self.call, self.t_init, self.flow = net, backend.call_denoiser, t_init, backend.flow
        self.alpha, self.sigma = backend.schedule.at_timestep(t_init)

    def forward(self, z: Tensor, cond: TextCondition) -> Tensor:
        timestep = torch.full((len(z),), self.t_init, device=z.device, dtype=torch.float32 if self.flow else torch.long)
        out = self.call(self.net, z, timestep, cond).float()
        # The flow form needs no division by alpha, which is 0 at s_init = 1, where flow models start from.
        return z - self.sigma * out if self.flow else (z - self.sigma * out) / self.alpha


def trainable_copy(net: nn.Module, lora_rank: int) -> nn.Module:
    """A copy to train: all of it, or a frozen copy with a zero-initialised LoRA adapter."""
    net = copy.deepcopy(net)
    if not lora_rank:
        return net.requires_grad_(True).train()
    from peft import LoraConfig, inject_adapter_in_model

    net.requires_grad_(False)
    config = LoraConfig(r=lora_rank, lora_alpha=lora_rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS)
    return inject_adapter_in_model(config, net).train()


def merged(net: nn.Module, clean: nn.Module) -> nn.Module:
    """`clean` (an adapter-free copy of the architecture) with `net`'s weights, LoRA folded in."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    net, clean = copy.deepcopy(net), copy.deepcopy(clean)
    for layer in net.modules():
        if isinstance(layer, BaseTunerLayer):
            layer.merge()
    state = {key.replace(".base_layer.", "."): value for key, value in net.state_dict().items() if "lora_" not in key}
    clean.load_state_dict(state)
    return clean


class PretrainedBackend:
    Config: ClassVar[type]
    denoiser: ClassVar[str]  # the pipeline component that is the denoiser: "unet" or "transformer"
    shardable: ClassVar[bool] = True  # train.parallel=fsdp: its networks are called only through their forward

    def __init__(self, cfg, device: torch.device):
        settings = cfg.backend
        self.settings, self.device = settings, device
        folder = pipeline_folder(settings.model)
        self.pipe = pipe = load_pipeline(folder, **self.load_options())
        pipe.set_progress_bar_config(disable=True)
        missing = [name for name in self.components if getattr(pipe, name, None) is None]
        if missing:
            raise UsageError(f"{settings.model} is a {type(pipe).__name__}, which has no {missing[0]}; "
                             f"backend={settings.name} needs a {self.pipeline_name}")
        self.schedule = self.schedule_of(pipe.scheduler)
        self.reference_net = getattr(pipe, self.denoiser)
        for name in ("vae", *self.components):
            getattr(pipe, name).requires_grad_(False).eval().to(device)
        if settings.grad_ckpt:
            self.reference_net.enable_gradient_checkpointing()  # gradients reach x_t through it (DI*)
        self.generator_start = one_step_start(settings.init, self) if settings.init else self.reference_net
        self.generator = OneStepGenerator(trainable_copy(self.generator_start, settings.lora_gen), self,
                                          settings.t_init)
        self.fake = EpsNetwork(trainable_copy(self.reference_net, settings.lora_fake), self)
        self.reference = EpsNetwork(self.reference_net, self)
        factor = pipe.vae_scale_factor
        side = settings.resolution or self.reference_net.config.sample_size * factor
        if side % factor:
            raise UsageError(f"backend.resolution={side} must be a multiple of the VAE's downsampling factor {factor}")
        self.resolution = side
        self.shape = (pipe.vae.config.latent_channels, side // factor, side // factor)
        taught = load_mixture(folder)
        self.latent_reward = False  # whether the reward reads latents (a taught world's) or decoded pixels
        if taught is None:
            self.world, self.prompt_set = None, load_prompt_set(settings.prompts)
            self.captions = list(self.prompt_set.prompts)
            self.reward_model = image_reward(cfg.reward, cfg.weights or None, settings.name).to(device)
        else:
            self.captions, mixture, shape = taught
            if shape != self.shape:
                raise UsageError(f"{settings.model} was taught on latents of shape {list(shape)}; leave "
                                 f"backend.resolution unset (it gives {list(self.shape)})")
            if settings.prompts != "builtin":
                raise UsageError(f"{settings.model} is a taught world, whose prompts are its captions; leave "
                                 f"backend.prompts unset (got {settings.prompts})")
            self.prompt_set = PromptSet("taught", tuple(self.captions))
            self.reward_model, self.latent_reward = taught_reward(cfg.reward, cfg.weights or None, self.captions,
                                                                  shape)
            self.reward_model.to(device)
            form = self.reward_model.quadratic_form() if self.latent_reward else None
            self.world = ExactWorld(mixture, self.captions, self.cpu_scores, form,
                                    cfg.eval.target_alpha_rew or cfg.method.alpha_rew)
        self.empty = self.unconditional()

    # -- family hooks -------------------------------------------------------------------------------------

    pipeline_name: ClassVar[str]
    components: ClassVar[tuple[str, ...]]  # the pipeline's denoiser and text encoders
    flow: ClassVar[bool] = False  # a flow-matching model (velocity prediction) rather than a VP eps-predictor

    def load_options(self) -> dict:
        """Keyword arguments of the pipeline's from_pretrained (a family may leave a component out)."""
        return {}

    def call_denoiser(self, net, x: Tensor, timestep: Tensor, cond: TextCondition) -> Tensor:
        raise NotImplementedError

    def embed(self, texts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        """(embeddings, attention mask, pooled embeddings) of prompts."""
        raise NotImplementedError

    def unconditional(self) -> TextCondition:
        """The condition of the unconditional score: the empty prompt, as the family was trained to drop text."""
        return self.encode(torch.zeros(1, dtype=torch.long), texts=[""])

    def schedule_of(self, scheduler):
        """The model's noise levels from its scheduler: alphas_cumprod for an eps-predictor, the flow's shift."""
        settings, config = self.settings, scheduler.config
        if self.flow:
            if "shift" not in config or config.get("use_dynamic_shifting"):
                raise UsageError(f"{settings.model} has a {type(scheduler).__name__}; backend={settings.name} needs "
                                 "FlowMatchEulerDiscreteScheduler with a fixed shift (use_dynamic_shifting false)")
            return FlowSchedule(float(config["shift"]), int(config["num_train_timesteps"]))
        prediction = config.get("prediction_type", "epsilon")
        if prediction != "epsilon" or not hasattr(scheduler, "alphas_cumprod"):
            raise UsageError(f"{settings.model} predicts {prediction if prediction != 'epsilon' else 'a flow'}; "
                             f"backend={settings.name} needs an epsilon-prediction model")
        return DiscreteSchedule(scheduler.alphas_cumprod, self.device)

    def as_eps(self, out: Tensor, x_t: Tensor, alpha: Tensor) -> Tensor:
        """The network's output as eps: itself, or from a velocity v = eps - x0, eps = x_t + alpha_t v."""
        return x_t + broadcast(alpha, x_t) * out if self.flow else out

    # -- the backend seam ---------------------------------------------------------------------------------

    def sample_inputs(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Generator noise (latents) and prompt rows for a batch."""
        ids = torch.randint(len(self.captions), (n,), generator=generator)
        return torch.randn((n, *self.shape), generator=generator), ids

    @torch.no_grad()
    def encode(self, ids: Tensor, texts: list[str] | None = None) -> TextCondition:
        """Each distinct prompt of a batch is encoded once: a small prompt set repeats within every batch, and on a
        tiny model tokenising 32 prompts twice a step was a third of the step (a taught world's four captions)."""
        texts = texts if texts is not None else [self.captions[int(i)] for i in ids]
        distinct = {text: row for row, text in enumerate(dict.fromkeys(texts))}
        rows = torch.tensor([distinct[text] for text in texts], device=self.device)
        return TextCondition(ids.to(self.device), *(part[rows] for part in self.embed(list(distinct))))

    def ref_score(self, x: Tensor, t: Tensor, alpha: Tensor, sigma: Tensor, cond: TextCondition | None) -> Tensor:
        if cond is None:
            cond = TextCondition(torch.zeros(len(x), dtype=torch.long, device=x.device),
                                 self.empty.embeds.expand(len(x), -1, -1), self.empty.mask.expand(len(x), -1),
                                 self.empty.pooled.expand(len(x), -1))
        eps = self.reference(x, t, alpha, sigma, cond).float()
        return -eps / sigma.reshape(-1, 1, 1, 1)

    def cpu_scores(self, latents: Tensor, ids: Tensor) -> Tensor:
        """The reward of latents for prompt rows, from and to the CPU: what a taught world's metrics read."""
        return self.scores(latents.to(self.device), ids).cpu()

    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> pixels in [0, 1], differentiably."""
        vae = self.pipe.vae
        # SD3's VAE also centres its latents (shift_factor); the others have none.
        images = vae.decode(latents / vae.config.scaling_factor + (vae.config.get("shift_factor") or 0)).sample.float()
        return ((images + 1) / 2).clamp(0, 1)

    def reward(self, latents: Tensor, cond: TextCondition) -> Tensor:
        """r(decode(latents)) for the batch's prompts, with its gradient to the latents.

        The VAE decoder's activations are the largest a step keeps for its backward (about 3 GB an image at
        512 px in bf16, three times a UNet's), so they are not kept: the images are decoded and scored
        `decode_batch` at a time, each group's gradient to its latents is taken at once and its activations
        freed, and the surrogate <sg[dr/dL], L> carries those gradients into the step's backward. An image's
        reward depends on its own latents only, so this is the same gradient at no extra compute.
        """
        return self.scores(latents, cond.ids)

    def scores(self, latents: Tensor, ids: Tensor) -> Tensor:
        """The reward for prompt rows `ids`: the prompts' texts are all an image scorer reads of the condition."""
        if self.latent_reward:
            return self.reward_model(latents.float(), ids).float()
        texts = [self.captions[int(i)] for i in ids]
        group = self.settings.decode_batch or len(latents)
        if group >= len(latents) or not (torch.is_grad_enabled() and latents.requires_grad):
            return self.reward_model(self.decode(latents), texts).float()
        values, grads = [], []
        for start in range(0, len(latents), group):
            part = latents[start:start + group].detach().requires_grad_(True)
            value = self.reward_model(self.decode(part), texts[start:start + group]).float()
            grads.append(torch.autograd.grad(value.sum(), part)[0])
            values.append(value.detach())
        surrogate = inner(torch.cat(grads), latents)
        return torch.cat(values) + surrogate - surrogate.detach()

    # -- evaluation ---------------------------------------------------------------------------------------

    def eval_prompts(self) -> list[int]:
        return list(range(min(self.settings.eval_prompts, len(self.captions))))

    @torch.no_grad()
    def generated(self, generator: nn.Module, ids, seed: int):
        """(condition, latents) of images i = 0.. for prompt rows `ids`, from the fixed evaluation noise, in batches
        that bound memory."""
        for start in range(0, len(ids), EVAL_BATCH):
            rows = torch.as_tensor(ids[start:start + EVAL_BATCH])
            z = torch.stack([image_noise(self.shape, seed, start + k) for k in range(len(rows))]).to(self.device)
            cond = self.encode(rows)
            yield cond, generator(z, cond)

    @torch.no_grad()
    def images(self, generator: nn.Module, ids: list[int], seed: int) -> tuple[Tensor, Tensor]:
        """Pixels of image i = 0.. for prompt rows `ids`, and their rewards."""
        pixels, rewards = [], []
        for cond, latents in self.generated(generator, ids, seed):
            pixels.append(self.decode(latents).cpu())
            rewards.append(self.reward(latents, cond).cpu())
        return torch.cat(pixels), torch.cat(rewards)

    def evaluate(self, generator: nn.Module, total: int, seed: int,
                 exact_kl: bool = False) -> tuple[dict[str, float], list[dict]]:
        """The reward on the evaluation prompts; a real model has no exact density, so no KL. On a taught world, its
        exact metrics on the generator's latents as well, every caption alike."""
        if self.world is not None:
            cond = self.world.eval_captions(total)
            latents = torch.cat([x.float().cpu() for _, x in self.generated(generator, cond, seed)])
            return self.world.metrics(latents, cond, seed)
        prompts = self.eval_prompts()
        per_prompt = max(1, total // len(prompts))
        _, rewards = self.images(generator, [p for p in prompts for _ in range(per_prompt)], seed)
        rows = [{"caption": self.captions[p], "reward": float(r.mean())}
                for p, r in zip(prompts, rewards.reshape(len(prompts), per_prompt), strict=True)]
        return {"reward": float(rewards.mean())}, rows

    def describe_optimum(self, total: int, seed: int) -> dict | None:
        """p* in closed form on a taught world with a latent linear or quadratic reward; none for a real model."""
        if self.world is None:
            return None
        return self.world.describe_optimum(self.world.eval_captions(total), seed)

    def grid(self, generator: nn.Module, per_prompt: int = 4):
        """Rows are evaluation prompts, columns samples from the fixed evaluation noise."""
        from PIL import Image

        prompts = self.eval_prompts()
        pixels, _ = self.images(generator, [p for p in prompts for _ in range(per_prompt)], seed=0)
        side = self.resolution
        grid = pixels.reshape(len(prompts), per_prompt, 3, side, side).permute(0, 3, 1, 4, 2)
        grid = (grid.reshape(len(prompts) * side, per_prompt * side, 3) * 255).round().to(torch.uint8)
        return Image.fromarray(grid.numpy())

    # -- export -------------------------------------------------------------------------------------------

    def export(self, generator: OneStepGenerator, folder: Path, info: dict) -> Path:
        """The generator as a standard diffusers pipeline that samples in one step (`one_step_scheduler`).
        Sample with `pipe(prompt, num_inference_steps=1, guidance_scale=1.0)`: the guidance is already inside."""
        from bench.store.files import atomic_write_json, replace_folder

        scheduler, call = self.one_step_scheduler(generator.t_init)
        net = merged(generator.net, self.generator_start).to(torch.float32)
        pipe = type(self.pipe)(**{**self.pipe.components, self.denoiser: net, "scheduler": scheduler})
        partial = folder.with_name(f".{folder.name}.saving")
        pipe.save_pretrained(partial, safe_serialization=True)
        atomic_write_json(partial / "one_step.json", {
            **info, "num_inference_steps": 1, **call, "timestep": generator.t_init, "guidance_scale": 1.0,
            "scheduler": type(scheduler).__name__, "reference": self.settings.model, "resolution": self.resolution})
        replace_folder(partial, folder)
        return folder

    def one_step_scheduler(self, t_init: int):
        """A scheduler whose one inference step from unit noise returns the denoiser's x0 at t_init, and what else
        the pipeline's call needs to say.

        VP: DDIM on the reference's own betas cut at t_init (num_train_timesteps = t_init + 1), "trailing" spacing
        and alpha_0 = 1: its one step runs exactly timestep t_init. (A steps_offset of t_init would say the same,
        but StableDiffusionPipeline resets steps_offset to 1.) Flow: one Euler step from s_init to 0, x0 = z - s_init
        v; unshifted, so that s_init = 1 (the default, SD3's pure noise) is the scheduler's own first sigma and any
        other is passed as `sigmas=[s_init]`.
        """
        from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

        config = self.pipe.scheduler.config
        if self.flow:
            sigma = self.schedule.at_timestep(t_init)[1]
            return FlowMatchEulerDiscreteScheduler.from_config(config, shift=1.0), ({} if sigma == 1 else
                                                                                     {"sigmas": [sigma]})
        betas = self.pipe.scheduler.betas[: t_init + 1]
        return DDIMScheduler.from_config(
            config, num_train_timesteps=t_init + 1, trained_betas=betas.tolist(), timestep_spacing="trailing",
            set_alpha_to_one=True, steps_offset=1, clip_sample=False, thresholding=False,
            prediction_type="epsilon"), {}


def one_step_start(source: str, backend: PretrainedBackend) -> nn.Module:
    """The denoiser of an existing one-step model, in the reference denoiser's class, frozen until copied to train.

    A folder or hub id holds a diffusers model (config.json) or a pipeline (model_index.json, whose denoiser is
    taken); a file holds a state dict for the reference's architecture (DMD2 publishes its UNets so).
    """
    from bench.backends.diffusers_io import local_path

    reference, kind = backend.reference_net, type(backend.reference_net)
    path = local_path(source, what="one-step model")
    if path.is_file():
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only: no code runs
        net = copy.deepcopy(reference)
        own = net.state_dict()
        missing = [k for k in own if k not in state]
        unknown = [k for k in state if k not in own]
        reshaped = [k for k in own if k in state and state[k].shape != own[k].shape]
        if missing or unknown or reshaped:
            odd = (missing or unknown or reshaped)[0]
            raise UsageError(f"backend.init={source} does not hold weights of the reference's {kind.__name__} "
                             f"({len(missing)} of its tensors missing, {len(unknown)} unknown, {len(reshaped)} of "
                             f"another shape, e.g. {odd}); pass a one-step model of the reference's architecture")
        net.load_state_dict(state)
        return net.requires_grad_(False).eval()
    if (path / "model_index.json").is_file():
        subfolder = backend.denoiser
    elif (path / "config.json").is_file():
        subfolder = None
    else:
        raise UsageError(f"backend.init={source} is neither a weights file nor a diffusers model or pipeline folder "
                         "(no config.json or model_index.json there)")
    try:
        net = kind.from_pretrained(path, subfolder=subfolder, local_files_only=True)
    except (OSError, ValueError, TypeError, RuntimeError) as err:
        raise UsageError(f"backend.init={source}: not a {kind.__name__} ({str(err).splitlines()[0]})") from None
    differ = sorted(k for k in set(net.config) | set(reference.config)
                    if not k.startswith("_") and net.config.get(k) != reference.config.get(k))
    if differ:
        raise UsageError(f"backend.init={source} is a {kind.__name__} of another shape than the reference's "
                         f"({', '.join(differ[:4])} differ); the generator must share the reference's latents "
                         "and text embeddings")
    return net.requires_grad_(False).eval().to(backend.device)


def taught_reward(spec: str, weights: str | None, texts: list[str], shape: tuple[int, ...]) -> tuple[nn.Module, bool]:
    """A taught world's reward, and whether it reads latents: latent rewards (the analytic world's, read on its
    latents) or image scorers (on decoded pixels)."""
    from bench.rewards import SCORERS, parse_reward
    from bench.rewards.analytic import ANALYTIC_REWARDS, build_reward

    latent = [name in ANALYTIC_REWARDS for name in parse_reward(spec, (*ANALYTIC_REWARDS, *SCORERS))]
    if any(latent) and not all(latent):
        raise UsageError(f"reward={spec} mixes latent rewards ({', '.join(ANALYTIC_REWARDS)}) with image scorers; on "
                         "a taught pipeline use one kind: latent rewards alone, or image scorers alone")
    if all(latent):
        return build_reward(spec, texts, shape, weights).requires_grad_(False).eval(), True
    return image_reward(spec, weights, "a taught pipeline"), False


def image_reward(spec: str, weights: str | None, backend: str) -> nn.Module:
    """The configured reward as a module of (images in [0, 1], prompts); frozen."""
    from bench.rewards import SCORERS, load_scorer, parse_reward
    from bench.rewards.analytic import ANALYTIC_REWARDS
    from bench.rewards.scorer import WeightedReward

    terms = parse_reward(spec, (*ANALYTIC_REWARDS, *SCORERS))
    if any(name in ANALYTIC_REWARDS for name in terms):
        raise UsageError(f"reward={spec} is defined on the analytic world's pictures; backend={backend} scores real "
                         f"images with image scorers ({', '.join(SCORERS)}): use e.g. reward=hpsv2")
    parts = {name: (term, load_scorer(name, weights)) for name, term in terms.items()}
    return WeightedReward(spec, parts).requires_grad_(False).eval()


@dataclass
class SD15Config(PretrainedConfig):
    model: str = reference_model("stable-diffusion-v1-5/stable-diffusion-v1-5")


class SD15Backend(PretrainedBackend):
    """Stable Diffusion 1.5: UNet2DConditionModel on CLIP ViT-L text states, 4-channel latents of AutoencoderKL."""

    Config = SD15Config
    denoiser, pipeline_name, components = "unet", "StableDiffusionPipeline", ("unet", "text_encoder")

    def call_denoiser(self, net, x, timestep, cond):
        return net(x, timestep, encoder_hidden_states=cond.embeds).sample

    def embed(self, texts):
        embeds, _ = self.pipe.encode_prompt(texts, self.device, 1, False)
        return embeds, torch.ones(embeds.shape[:2], device=self.device), embeds.new_zeros(len(texts), 0)


@dataclass
class PixArtAlphaConfig(PretrainedConfig):
    model: str = reference_model("PixArt-alpha/PixArt-XL-2-512x512")


class PixArtAlphaBackend(PretrainedBackend):
    """PixArt-alpha: a DiT (PixArtTransformer2DModel) on T5 text states with their mask; learned-variance output."""

    Config = PixArtAlphaConfig
    denoiser, pipeline_name, components = "transformer", "PixArtAlphaPipeline", ("transformer", "text_encoder")

    def call_denoiser(self, net, x, timestep, cond):
        extra = {"resolution": None, "aspect_ratio": None}
        if net.use_additional_conditions:  # the 1024 px model is told the image's size and aspect ratio
            side = float(x.shape[-1] * self.pipe.vae_scale_factor)
            extra = {"resolution": x.new_tensor([[side, side]]).expand(len(x), 2),
                     "aspect_ratio": x.new_tensor([[1.0]]).expand(len(x), 1)}
        out = net(x, encoder_hidden_states=cond.embeds, encoder_attention_mask=cond.mask, timestep=timestep,
                  added_cond_kwargs=extra).sample
        # The second half of the channels is the learned variance, which sampling (and this suite) ignores.
        return out[:, : x.shape[1]]

    def embed(self, texts):
        embeds, mask, _, _ = self.pipe.encode_prompt(texts, do_classifier_free_guidance=False, device=self.device)
        return embeds, mask, embeds.new_zeros(len(texts), 0)


@dataclass
class SDXLConfig(PretrainedConfig):
    model: str = reference_model("stabilityai/stable-diffusion-xl-base-1.0")


class SDXLBackend(PretrainedBackend):
    """SDXL: a UNet on two CLIP encoders' penultimate states side by side, the second one's pooled embedding, and
    size and crop conditioning (here: a square image at the training resolution, uncropped, as SDXL samples)."""

    Config = SDXLConfig
    denoiser, pipeline_name = "unet", "StableDiffusionXLPipeline"
    components = ("unet", "text_encoder", "text_encoder_2")

    def call_denoiser(self, net, x, timestep, cond):
        side = x.shape[-1] * self.pipe.vae_scale_factor
        # (original height, width, crop top, left, target height, width), as the pipeline builds them
        time_ids = x.new_tensor([[side, side, 0, 0, side, side]]).expand(len(x), 6)
        return net(x, timestep, encoder_hidden_states=cond.embeds,
                   added_cond_kwargs={"text_embeds": cond.pooled.to(x.dtype), "time_ids": time_ids}).sample

    def embed(self, texts):
        embeds, _, pooled, _ = self.pipe.encode_prompt(texts, device=self.device, num_images_per_prompt=1,
                                                       do_classifier_free_guidance=False)
        return embeds, torch.ones(embeds.shape[:2], device=self.device), pooled

    def unconditional(self) -> TextCondition:
        """SDXL base drops text as zeros, embeddings and pooled alike (its pipeline's force_zeros_for_empty_prompt),
        not as the empty prompt's encoding."""
        cond = super().unconditional()
        if not self.pipe.config.get("force_zeros_for_empty_prompt", False):
            return cond
        return cond._replace(embeds=torch.zeros_like(cond.embeds), pooled=torch.zeros_like(cond.pooled))


@dataclass
class SD3Config(PretrainedConfig):
    model: str = reference_model("stabilityai/stable-diffusion-3.5-medium")
    t_init: int = param(1000, "timestep the one-step generator reads its transformer at, s_init = t_init / 1000 after "
                        "the shift: 1000 is pure noise, where SD3's own sampler and its one-step distillations start",
                        ge=1, le=1000)
    t5: bool = param(True, "load the T5 text encoder; false leaves it out as StableDiffusion3Pipeline allows (its text "
                     "states are zeros: about 9 GB less memory, weaker prompt following)")


class SD3Backend(PretrainedBackend):
    """Stable Diffusion 3 and 3.5: an MMDiT (SD3Transformer2DModel) predicting the flow's velocity, on two CLIP
    encoders' penultimate states beside T5's (optional), the CLIPs' pooled embeddings side by side, and 16-channel
    latents; the flow-matching scheduler with its fixed shift (3 for SD3 and 3.5)."""

    Config = SD3Config
    denoiser, pipeline_name, flow = "transformer", "StableDiffusion3Pipeline", True

    @property
    def components(self) -> tuple[str, ...]:
        return ("transformer", "text_encoder", "text_encoder_2", *(("text_encoder_3",) if self.settings.t5 else ()))

    def load_options(self) -> dict:
        return {} if self.settings.t5 else {"text_encoder_3": None, "tokenizer_3": None}

    def call_denoiser(self, net, x, timestep, cond):
        return net(hidden_states=x, timestep=timestep, encoder_hidden_states=cond.embeds,
                   pooled_projections=cond.pooled.to(x.dtype)).sample

    @property
    def t5_tokens(self) -> int:
        """T5's sequence: the pipeline's default 256 tokens, or fewer where the folder's T5 tokenizer declares a
        shorter model_max_length (a taught teacher's), so that runs read a teacher as it was taught."""
        tokenizer = self.pipe.tokenizer_3
        return 256 if tokenizer is None else min(256, tokenizer.model_max_length)

    def embed(self, texts):
        embeds, _, pooled, _ = self.pipe.encode_prompt(texts, None, None, device=self.device,
                                                       do_classifier_free_guidance=False,
                                                       max_sequence_length=self.t5_tokens)
        return embeds, torch.ones(embeds.shape[:2], device=self.device), pooled
