"""What `bench eval` costs: the expected time of a COCO evaluation of 30,000 images on 8 GPUs, and the measured
wall time of an evaluation on this machine in one process and in two (accelerate launch, gloo).

    python benchmarks/eval_cost.py                 # both
    python benchmarks/eval_cost.py --skip-measure  # the GPU expectation only

The expectation counts FLOPs on the released architectures (bench.estimate: the prompt's encoding, one denoiser
step, the VAE decode, each scorer at 224 px, FID's Inception) at the estimate's assumed MFU: a planning figure, not
a measurement. `scorer_speed.py --real --device cuda` measures the scorers where a GPU is lent.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
COCO_METRICS = ("clip_score", "aesthetic", "image_reward", "hpsv2")  # protocol=coco's scorers


def expectation(images: int, gpus: int) -> None:
    from bench.estimate import eval_estimate

    print(f"COCO, {images:,} images, one-step generator, scorers {', '.join(COCO_METRICS)} and FID, on {gpus} GPUs:")
    print("| generator | TFLOP an image | " + " | ".join(f"{gpus} x {gpu}" for gpu in ("A100 80GB", "H100 SXM"))
          + " |\n|---|---|---|---|")
    for family in ("sd15", "sdxl", "sd3"):
        e = eval_estimate(family, COCO_METRICS, images)
        hours = [e["gpu_hours"][gpu] / gpus * 60 for gpu in ("A100 80GB", "H100 SXM")]
        print(f"| {family} | {e['tflops_per_image']:.2f} | " + " | ".join(f"{m:.1f} min" for m in hours) + " |")
    print(f"(MFU {e['mfu']:.0%} assumed; the images split evenly over the processes, FID's features on the main one)")


def measure(images: int) -> None:
    """One process against two on this machine: the tiny SD1.5 pipeline, two tiny scorers, FID."""
    import numpy as np
    from PIL import Image

    from bench.provenance import file_sha256

    from conftest import launched
    from random_weights import write_inception, write_weights
    from tiny_pipelines import tiny_sd15

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_weights(root / "weights")
        write_inception(root / "inception.pt")
        (root / "reference").mkdir()
        for i in range(16):
            pixels = np.random.default_rng(i).integers(0, 256, (16, 16, 3)).astype(np.uint8)
            Image.fromarray(pixels).save(root / "reference" / f"{i:05d}.png")
        args = ["eval", f"pipeline={tiny_sd15(root)}", "prompts=builtin", f"n={images // 8}", "subset=8", "batch=8",
                "metrics=pickscore,aesthetic", f"weights={root / 'weights'}", f"fid_ref={root / 'reference'}",
                f"inception={root / 'inception.pt'}", f"inception_sha256={file_sha256(root / 'inception.pt')}"]
        for processes in (1, 2):
            command = launched(processes, *args)
            env = {"BENCH_RESULTS": str(root / f"results{processes}"), "OMP_NUM_THREADS": "1",
                   "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, cwd=ROOT, env=env)
            print(f"{images} images, {processes} process{'es' if processes > 1 else ''} (one thread each): "
                  f"{time.perf_counter() - started:.1f} s wall, launch included")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=30_000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--measured-images", type=int, default=8192)
    parser.add_argument("--skip-measure", action="store_true")
    args = parser.parse_args()
    expectation(args.images, args.gpus)
    if not args.skip_measure:
        measure(args.measured_images)


if __name__ == "__main__":
    main()
