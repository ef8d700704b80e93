"""Training speed and memory of the diffusers backend, per method: fp32 against bf16 with and without
gradient checkpointing, and the reward's images decoded one at a time (the default) against the whole batch at
once, in the same run.

    python benchmarks/train_speed.py                          # tiny random SD1.5 pipeline on the CPU
    python benchmarks/train_speed.py --size sd15 --device cuda  # SD1.5-sized random weights at 512 px

The SD1.5-sized pipeline (UNet 860M, VAE 84M, CLIP text 123M) has random weights, which time the same as
trained ones; it is saved to a temporary folder and loaded through the backend's real loading code. The reward
is a real-size HPSv2 (ViT-H-14) in memory. One step = one fake-score update + one generator update; images per
second counts generator samples (batch / step time); peak memory is the GPU's (not measured on the CPU).
MFU = model FLOPs of a step (counted by torch.utils.flop_counter) / step time / the GPU's dense bf16 peak
(--peak-tflops, 989 for an H100 SXM). "VAE fwd" is the share of the step's wall time in the VAE decoder's
forward passes; "reward" the share in the backend's reward: decoding and scoring, and, when decoded in groups
(backend.decode_batch), their backward too (with the whole batch at once, that backward runs later, inside the
step's). "act MiB" is the peak of the tensors autograd keeps for backward during a step (tests/activations.py):
activation memory, counted the same way on the CPU as on a GPU.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

# name: (precision, gradient checkpointing of the denoisers, images decoded together for the reward's gradient)
VARIANTS = {"fp32": ("fp32", False, 1), "bf16": ("bf16", False, 1), "bf16+ckpt": ("bf16", True, 1),
            "bf16 batch-dec": ("bf16", False, 0), "bf16+ckpt batch-dec": ("bf16", True, 0)}


def sd15_sized(folder: Path) -> Path:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from random_weights import clip_tokenizer

    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                        sample_size=512)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77))
    clip_tokenizer(folder / "tok")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tok", model_max_length=77)
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=tokenizer, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder / "sd15")
    return folder / "sd15"


def timed(owner, name: str, cuda: bool) -> list[float]:
    """Wrap owner.name so each call's wall time (forward only: its backward runs later, inside the step's) is
    appended to the returned list."""
    calls, original = [], getattr(owner, name)

    def wrapper(*args, **kwargs):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = original(*args, **kwargs)
        if cuda:
            torch.cuda.synchronize()
        calls.append(time.perf_counter() - start)
        return out

    setattr(owner, name, wrapper)
    return calls


def measure(args, model: Path, weights: Path, method: str, variant: str, reward) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from bench.activations import SavedActivations
    from bench.config import build_config
    from bench.train.trainer import Trainer

    precision, ckpt, decode_batch = VARIANTS[variant]
    cfg = build_config([f"method={method}", "backend=sd15", f"backend.model={model}", "reward=hpsv2",
                        f"weights={weights}", f"train.batch_size={args.batch}", f"train.precision={precision}",
                        f"backend.grad_ckpt={ckpt}", f"backend.decode_batch={decode_batch}",
                        f"device={args.device}", "method.alpha_cfg=4.5", *args.extra])
    trainer = Trainer(cfg, None, progress=False)
    if reward is not None:
        trainer.backend.reward_model = reward
    cuda = args.device.startswith("cuda")
    decoding = timed(trainer.backend, "decode", cuda)
    rewarding = timed(trainer.backend, "reward", cuda)

    def step():
        trainer.fake_update()
        trainer.generator_update()

    for _ in range(args.warmup):
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    b = trainer.backend
    with SavedActivations(b.generator, b.fake, b.reference_net, b.pipe.vae, b.reward_model) as saved:
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    decoding.clear()
    rewarding.clear()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    row = {"method": method, "variant": variant, "img_s": args.batch / seconds, "step_s": seconds,
           "gflop_step": counter.get_total_flops() / 1e9,
           "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
           "act_mib": saved.peak / 2**20, "decode_share": sum(decoding) / args.steps / seconds,
           "reward_share": sum(rewarding) / args.steps / seconds}
    row["mfu"] = row["gflop_step"] / 1e3 / seconds / args.peak_tflops if cuda else float("nan")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--methods", default="di_star,di_pp,kl_rlhf")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("extra", nargs="*", help="more key=value overrides for every run, e.g. backend.resolution=256")
    args = parser.parse_args()

    from random_weights import write_weights
    from tiny_pipelines import tiny_sd15

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_weights(root / "weights")
        reward = None
        if args.size == "sd15":
            from scorer_speed import real_scorers

            model = sd15_sized(root)
            reward = real_scorers(root / "real")["hpsv2"].to(args.device).requires_grad_(False)
        else:
            model = tiny_sd15(root)
        device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
        print(f"{args.size} pipeline, batch {args.batch}, {args.steps} timed steps after {args.warmup}, on {device}")
        print(f"{'method':<9}{'variant':<21}{'img/s':>8}{'s/step':>9}{'GFLOP/step':>12}{'peak GiB':>10}"
              f"{'act MiB':>9}{'MFU':>7}{'VAE fwd':>9}{'reward':>8}")
        for method in args.methods.split(","):
            for variant in args.variants.split(","):
                r = measure(args, model, root / "weights", method, variant, reward)
                gc.collect()  # the previous trainer's networks go before the next one loads
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                print(f"{r['method']:<9}{r['variant']:<21}{r['img_s']:>8.2f}{r['step_s']:>9.3f}"
                      f"{r['gflop_step']:>12.2f}{r['peak_gib']:>10.2f}{r['act_mib']:>9.1f}{r['mfu']:>7.1%}"
                      f"{r['decode_share']:>9.1%}{r['reward_share']:>8.1%}", flush=True)


if __name__ == "__main__":
    main()
