"""The README's table of what each paper's preset costs, from `bench run preset=NAME --dry-run`'s own estimate.

    python benchmarks/preset_costs.py

Counts FLOPs and activations on the meta device (no weights, no GPU); a minute or so on a CPU. Presets of ours
(smoke, distill, wide16) are analytic or tiny and are left out. Nothing here is a test.
"""

from __future__ import annotations

from bench.config import OUR_PRESETS, PRESET_DIR, build_config
from bench.estimate import estimate


def describe(cfg, side: int) -> str:
    """What sets a preset's cost apart: its side, checkpointing, LoRA, fake updates and denoise steps."""
    notes = [f"{side} px"]
    if cfg.backend.grad_ckpt:
        notes.append("checkpointed")
    if cfg.backend.lora_gen:
        notes.append(f"LoRA {cfg.backend.lora_gen}")
    if cfg.method.fake_steps > 1:
        notes.append(f"{cfg.method.fake_steps} fake updates a step")
    if getattr(cfg.method, "denoise_steps", 1) > 1:
        notes.append(f"a {cfg.method.denoise_steps}-step denoise")
    return ", ".join(notes)


def main() -> None:
    print("| preset | a step (TFLOP an image) | images | weights and optimiser a GPU | activations an image "
          "(+ the decoder's group) | per-GPU batch, H100 / H200 (decoding the whole batch) | H100 SXM | A100 80GB "
          "| L40S |\n|---|---|---|---|---|---|---|---|---|")
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        if path.stem in OUR_PRESETS:
            continue
        cfg = build_config([f"preset={path.stem}"])
        e = estimate(cfg)
        whole = estimate(build_config([f"preset={path.stem}", "backend.decode_batch=0"]))

        def batch(gpu: str, e=e, whole=whole) -> tuple[str, str]:
            return f"{e['batch_per_gpu'][gpu] or '-'}", f"{whole['batch_per_gpu'][gpu] or '-'}"

        (h100, h100_whole), (h200, h200_whole) = batch("H100 SXM"), batch("H200")
        hours = " | ".join(f"{e['gpu_hours'][gpu]:,.1f} h" for gpu in ("H100 SXM", "A100 80GB", "L40S"))
        print(f"| `{path.stem}` ({describe(cfg, e['side'])}) | {e['step_tflops_per_image']:.1f} | {e['images']:,} | "
              f"{e['memory_gb']:.0f} GB | {e['activations_gb_per_image']:.1f} GB (+ {e['decoder_group_gb']:.1f}) | "
              f"{h100} / {h200} ({h100_whole} / {h200_whole}) | {hours} |", flush=True)


if __name__ == "__main__":
    main()
