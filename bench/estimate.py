"""What a run costs before it starts (`bench run ... --dry-run`): memory a GPU and GPU-hours, from FLOPs counted on
the real architectures.

The denoiser and the VAE decoder of each family are built at their released sizes on PyTorch's meta device (shapes,
no memory, no weights) and run once under torch.utils.flop_counter at the run's resolution. A training step's cost
a generated image is then, with D a denoiser forward, V a VAE decode, R a reward forward and T a prompt's text
encoding (2 x parameters x tokens, summed over the family's text encoders), all at batch 1:

    every draw             T: the prompts of each of the K + 1 batches are encoded afresh
    K fake-score updates   K x (D generator, no grad + 3 D fake forward and backward)
    generator update       3 D generator forward and backward
                           + (2 or 3 score networks) x 2 D: fake, reference conditional, and unconditional when
                             alpha_cfg != 1, each with a backward to x_t (an upper bound: DI* needs it, DI++ not)
                           + 2 V + 2 R: decode and reward, with a backward to the latents

Memory counts weights, gradients and Adam state (16 bytes a trained parameter, 4 more for the generator's EMA),
frozen networks in fp32 (4 bytes), per GPU under data parallelism (every GPU holds everything). Activations are
counted too: the tensors autograd keeps for backward, recorded while the meta-device networks run (attention kept as
a fused kernel keeps it), in fp32 and halved for bf16 (measured: 0.48 to 0.49 for SD1.5's UNet and VAE at 512 px).
Their peak is in the generator update: the generator's, every score network's with its input's gradient (the same
upper bound as for FLOPs) and the decoder's for one group of `backend.decode_batch` images; the reward's and, under
gradient checkpointing, the checkpointed blocks' inputs are not counted. From them, the largest per-GPU batch that
fits each GPU. GPU-hours assume a model FLOP utilisation of MFU (stated with the figures): a planning number, not a
measurement.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from bench.activations import SavedActivations

# Dense bf16 peak TFLOP/s and memory (GB) of common training GPUs, from their vendors' data sheets.
GPUS = {"A100 80GB": (312, 80), "H100 SXM": (989, 80), "H200": (989, 141), "L40S": (362, 48)}
BF16_ACTIVATIONS = 0.5  # bf16 activations against fp32 (measured 0.48 to 0.49, see the module's text)
FSDP_GPUS = 8  # the GPUs a sharded run is costed on (one node)
MFU = 0.35  # assumed: large diffusion training commonly reaches 30 to 45% on these GPUs
# Parameters of the networks that only read (text encoders, reward models), from their released checkpoints.
CLIP_L, CLIP_G, T5_XXL = 123e6, 695e6, 4.76e9  # CLIP ViT-L/14 and OpenCLIP bigG text towers; T5-XXL's encoder
# Each family's text encoders as (parameters, tokens a prompt is padded to), as its pipeline encodes a prompt.
# SD3's T5 reads 256 tokens (StableDiffusion3Pipeline's max_sequence_length) and is optional (backend.t5).
TEXT_ENCODERS = {"sd15": ((CLIP_L, 77),), "pixart_alpha": ((T5_XXL, 120),), "sdxl": ((CLIP_L, 77), (CLIP_G, 77)),
                 "sd3": ((CLIP_L, 77), (CLIP_G, 77), (T5_XXL, 256))}
REWARDS = {"hpsv2": 986e6, "hpsv2.1": 986e6, "pickscore": 986e6, "image_reward": 447e6, "aesthetic": 428e6,
           "clip_score": 428e6}  # ViT-H-14 CLIP; BLIP-L; ViT-L-14 CLIP (+ a small MLP)
REWARD_TOKENS = 257  # a ViT at 224 px with patch 14 (16 x 16 patches and the class token)


def sd15_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8), 77, 768


def sdxl_unet():
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
        use_linear_projection=True)
    return unet, 77, 2048


def pixart_transformer():
    from diffusers import PixArtTransformer2DModel

    net = PixArtTransformer2DModel(sample_size=64, num_layers=28, num_attention_heads=16, attention_head_dim=72,
                                   in_channels=4, out_channels=8, patch_size=2, caption_channels=4096,
                                   cross_attention_dim=1152, norm_type="ada_norm_single",
                                   norm_elementwise_affine=False, norm_eps=1e-6)
    return net, 120, 4096


def sd3_transformer():
    """SD3.5 Medium's MMDiT-X (2.24B parameters; its file's 2.47B add a fixed position table): SD3's joint blocks
    with QK normalisation and, in its first 13, a second attention over the image tokens alone. Its text sequence is
    the CLIPs' 77 tokens followed by T5's 256 (zeros without T5: the sequence keeps its length)."""
    from diffusers import SD3Transformer2DModel

    net = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                                num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                                pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                                dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
    return net, 77 + 256, 4096


# Family -> (denoiser builder, its native image side in pixels, latent channels). All use SD's 8x VAE layout; SD3's
# has 16 latent channels.
FAMILIES = {"sd15": (sd15_unet, 512, 4), "pixart_alpha": (pixart_transformer, 512, 4), "sdxl": (sdxl_unet, 1024, 4),
            "sd3": (sd3_transformer, 1024, 16)}


@dataclass
class Counted:
    denoiser_params: float
    vae_params: float
    denoiser_flops: float  # one forward, one image
    vae_decode_flops: float
    lora_params_per_rank: float  # LoRA on the attention projections, as the backends place it, at rank 1
    # Bytes autograd keeps for backward, one image, fp32: a denoiser being trained, one frozen with the gradient
    # going to its input (a score network in the generator update), each with gradient checkpointing; the decoder.
    act_trained: float
    act_scored: float
    act_trained_ckpt: float
    act_scored_ckpt: float
    act_decode: float


SDPA = torch.nn.functional.scaled_dot_product_attention  # torch's own, kept while fused_attention() replaces it


class FusedAttention(torch.autograd.Function):
    """Attention that keeps for its backward what a fused kernel keeps (flash attention: q, k, v, the output and a
    log-sum-exp a query), not the attention matrix that the meta device's reference implementation would."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale):
        with torch.no_grad():
            out = SDPA(q, k, v, attn_mask=mask, scale=scale)
        ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("FusedAttention only counts activations")


@contextmanager
def fused_attention():
    """diffusers' attention processors call F.scaled_dot_product_attention by name: point it at FusedAttention."""
    functional = torch.nn.functional
    functional.scaled_dot_product_attention = \
        lambda q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_: \
        FusedAttention.apply(q, k, v, attn_mask, scale)
    try:
        yield
    finally:
        functional.scaled_dot_product_attention = SDPA


def saved_bytes(run, module) -> float:
    """Peak bytes of activations that `run()` leaves for backward (module's own weights not counted)."""
    with fused_attention(), SavedActivations(module) as saved:
        run()
    return saved.peak


@functools.cache  # the same architecture at the same size counts the same
def count(family: str, side: int) -> Counted:
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode

    build, _, channels = FAMILIES[family]
    latent = side // 8
    with torch.device("meta"):
        net, tokens, width = build()
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=channels, layers_per_block=2)
        x, t, text = torch.empty(1, channels, latent, latent), torch.empty(1), torch.empty(1, tokens, width)
        time_ids = torch.empty(1, 6)

    def denoise(x):
        if family == "pixart_alpha":
            return net(x, encoder_hidden_states=text, timestep=t,
                       added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
        if family == "sdxl":
            return net(x, t, encoder_hidden_states=text,
                       added_cond_kwargs={"text_embeds": x.new_empty(1, 1280), "time_ids": time_ids}).sample
        if family == "sd3":
            return net(hidden_states=x, timestep=t, encoder_hidden_states=text,
                       pooled_projections=x.new_empty(1, 2048)).sample
        return net(x, t, encoder_hidden_states=text).sample

    with FlopCounterMode(display=False) as counter:
        denoise(x)
    denoiser = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        vae.decode(x)
    decode = counter.get_total_flops()
    params = sum(p.numel() for p in net.parameters())
    from bench.backends.pretrained import trainable_copy

    adapted = trainable_copy(net, lora_rank=1)
    lora = sum(p.numel() for name, p in adapted.named_parameters() if "lora_" in name)
    vae.requires_grad_(False)
    x_grad = x.clone().requires_grad_(True)
    act = {}
    for ckpt in (False, True):
        if ckpt:
            net.enable_gradient_checkpointing()
        act["trained", ckpt] = saved_bytes(lambda: denoise(x), net.requires_grad_(True))
        act["scored", ckpt] = saved_bytes(lambda: denoise(x_grad), net.requires_grad_(False))
    return Counted(params, sum(p.numel() for p in vae.parameters()), denoiser, decode, lora,
                   act["trained", False], act["scored", False], act["trained", True], act["scored", True],
                   saved_bytes(lambda: vae.decode(x_grad), vae))


def reward_flops(reward: str) -> tuple[float, float]:
    """(parameters, forward FLOPs an image) of the reward's scorers: 2 x parameters x tokens for a ViT."""
    from bench.rewards import parse_reward

    names = parse_reward(reward, tuple(REWARDS))
    params = sum(REWARDS[name] for name in names)
    return params, 2 * params * REWARD_TOKENS


def encoding_flops(encoders) -> float:
    """Forward FLOPs of a prompt's encoding: 2 x parameters x tokens for each (parameters, tokens) encoder."""
    return sum(2 * params * tokens for params, tokens in encoders)


def estimate(cfg) -> dict:
    """The cost of cfg's run: counted FLOPs, memory a GPU in GB and GPU-hours a GPU type (as figures)."""
    family = cfg.backend.name
    side = cfg.backend.resolution or FAMILIES[family][1]
    # SD3 without T5 (backend.t5=false) encodes with the CLIPs alone; the transformer still reads T5's zeros.
    encoders = TEXT_ENCODERS[family][:2] if family == "sd3" and not cfg.backend.t5 else TEXT_ENCODERS[family]
    counted = count(family, side)
    reward_params, reward = reward_flops(cfg.reward)
    d, v = counted.denoiser_flops, counted.vae_decode_flops
    guided = cfg.method.guided
    # Score networks read with a backward to x_t: the fake and the reference (twice when guided), and the reference
    # again at each further step of a method's k-step denoise of x_t (DIDR's diffused reward).
    scores = 2 + guided + (getattr(cfg.method, "denoise_steps", 1) - 1) * (1 + guided)
    text = encoding_flops(encoders)
    per_image = (cfg.method.fake_steps + 1) * text + cfg.method.fake_steps * 4 * d + 3 * d + scores * 2 * d \
        + 2 * v + 2 * reward
    images = cfg.train.steps * cfg.train.batch_size
    total = per_image * images

    def trained(rank: int) -> float:  # bytes of a trained copy: all of it, or a LoRA on a frozen copy
        if not rank:
            return 16 * counted.denoiser_params
        return 4 * counted.denoiser_params + 16 * rank * counted.lora_params_per_rank

    ema = 4 * (cfg.backend.lora_gen * counted.lora_params_per_rank if cfg.backend.lora_gen
               else counted.denoiser_params)  # of the trained weights only
    trained_state = (trained(cfg.backend.lora_gen) + ema + trained(cfg.backend.lora_fake)) / 1e9
    frozen = (4 * counted.denoiser_params  # the frozen reference
              + 4 * (counted.vae_params + sum(params for params, _ in encoders) + reward_params)) / 1e9
    memory = trained_state + frozen
    # train.parallel=fsdp shards the trained state (weights, gradients, Adam, EMA) over the GPUs; frozen networks
    # and activations stay whole on each.
    memory_fsdp = trained_state / FSDP_GPUS + frozen
    scale = BF16_ACTIVATIONS if cfg.train.precision in ("bf16", "auto") else 1.0  # auto is bf16 on a GPU
    ckpt = cfg.backend.grad_ckpt
    an_image = scale * ((counted.act_trained_ckpt if ckpt else counted.act_trained)
                        + scores * (counted.act_scored_ckpt if ckpt else counted.act_scored))
    decoder = scale * counted.act_decode
    group = min(cfg.backend.decode_batch, cfg.train.batch_size)
    if group:  # one group of decoded images at a time, whatever the batch
        group_bytes = group * decoder
    else:  # the whole batch decoded at once: the decoder's activations grow with it
        group_bytes, an_image = 0.0, an_image + decoder
    def largest_batch(held: float, gb: float) -> int:
        return max(0, min(cfg.train.batch_size, int((gb * 1e9 - held * 1e9 - group_bytes) // an_image)))

    batch = {gpu: largest_batch(memory, gb) for gpu, (_, gb) in GPUS.items()}
    batch_fsdp = {gpu: largest_batch(memory_fsdp, gb) for gpu, (_, gb) in GPUS.items()}
    hours = {gpu: total / (peak * 1e12 * MFU) / 3600 for gpu, (peak, _) in GPUS.items()}
    return {"family": family, "side": side, "denoiser_params": counted.denoiser_params,
            "denoiser_tflops": d / 1e12, "vae_decode_tflops": v / 1e12, "reward_tflops": reward / 1e12,
            "text_tflops": text / 1e12,
            "step_tflops_per_image": per_image / 1e12, "images": images, "total_pflops": total / 1e15,
            "memory_gb": memory, "memory_fsdp_gb": memory_fsdp, "batch_per_gpu_fsdp": batch_fsdp,
            "activations_gb_per_image": an_image / 1e9, "decoder_group_gb": group_bytes / 1e9,
            "gpu_hours": hours, "mfu": MFU, "batch_per_gpu": batch,
            "fits": {gpu: size > 0 for gpu, size in batch.items()}}


INCEPTION_FLOPS = 11.5e9  # FID's Inception v3 at 299 px: 5.7 G multiply-adds an image


def eval_estimate(family: str, metrics: tuple[str, ...], images: int, side: int = 0, steps: int = 1,
                  fid: bool = True) -> dict:
    """The cost of `bench eval` of a `steps`-step generator of the family: counted FLOPs an image (prompt encoding,
    denoiser, VAE decode, each scorer, FID's features) and hours on each GPU type's (and 8 of them) at MFU."""
    counted = count(family, side or FAMILIES[family][1])
    scoring = reward_flops("{" + ", ".join(f"{name}: 1" for name in metrics) + "}")[1] if metrics else 0.0
    per_image = encoding_flops(TEXT_ENCODERS[family]) + steps * counted.denoiser_flops + counted.vae_decode_flops \
        + scoring + fid * INCEPTION_FLOPS
    hours = {gpu: images * per_image / (peak * 1e12 * MFU) / 3600 for gpu, (peak, _) in GPUS.items()}
    return {"tflops_per_image": per_image / 1e12, "gpu_hours": hours, "mfu": MFU}


def report(cfg) -> str:
    if cfg.backend.name == "analytic":
        return ("no estimate for the analytic world: it runs on the CPU in seconds to minutes "
                "(README, Speed)")
    if cfg.backend.name not in FAMILIES:
        return (f"no cost estimate for backend={cfg.backend.name}: its architecture is not counted yet "
                "(bench/estimate.py)")
    e = estimate(cfg)
    lines = [
        f"cost estimate ({e['family']} at {e['side']} px; FLOPs counted on the released architecture, "
        f"MFU {e['mfu']:.0%} assumed):",
        f"  denoiser {e['denoiser_params'] / 1e9:.2f}B parameters, {e['denoiser_tflops']:.2f} TFLOP a forward; "
        f"VAE decode {e['vae_decode_tflops']:.2f}; reward {e['reward_tflops']:.2f}; a prompt's encoding "
        f"{e['text_tflops']:.2f}",
        f"  a training step: {e['step_tflops_per_image']:.1f} TFLOP an image x {e['images']:,} images "
        f"= {e['total_pflops']:,.0f} PFLOP",
        f"  memory a GPU: weights, gradients, Adam and EMA {e['memory_gb']:.0f} GB; activations "
        f"{e['activations_gb_per_image']:.1f} GB an image"
        + (f" and {e['decoder_group_gb']:.1f} GB for the decoder's group of images" if e["decoder_group_gb"] else ""),
    ]
    lines.append(f"  with train.parallel=fsdp over {FSDP_GPUS} GPUs: {e['memory_fsdp_gb']:.0f} GB a GPU (weights, "
                 "gradients, Adam and EMA sharded; frozen networks and activations whole)")
    remedies = "LoRA" if cfg.backend.grad_ckpt else "LoRA or backend.grad_ckpt=true"
    for gpu, hours in e["gpu_hours"].items():
        size, sharded = e["batch_per_gpu"][gpu], e["batch_per_gpu_fsdp"][gpu]
        if size:
            fits = f"; a per-GPU batch of up to {size}"
        elif sharded:
            fits = (f"  (does not fit in {GPUS[gpu][1]} GB data-parallel: needs train.parallel=fsdp, with a per-GPU "
                    f"batch of up to {sharded})")
        else:
            fits = f"  (does not fit in {GPUS[gpu][1]} GB, sharded or not: use {remedies})"
        lines.append(f"  {gpu:<10} {hours:>10,.1f} GPU-hours{fits}")
    return "\n".join(lines)
