"""FID under clean-fid's protocol ("clean" mode), without importing clean-fid.

clean-fid imports torchvision when it loads, and torchvision does not import against the CPU-only torch
(ECOSYSTEM.md), so its three steps are reproduced here and checked against it by
`benchmarks/reference_parity.py`:

1. every image (uint8 RGB) is resized to 299 x 299 per channel in float with PIL's bicubic filter;
2. features are the 2048-d pool3 output of the TorchScript Inception `inception-2015-12-05.pt` (clean-fid's
   file) on (x - 128) / 128;
3. FID is the Frechet distance of the Gaussians fitted to the two feature sets.

Optionally images are first centre-cropped and resized with LANCZOS to `pre_resize` (256 for the usual COCO
protocol). Reference statistics are `.npz` files with `mu` and `sigma`, the format of clean-fid's own
statistics, so those load as they are; statistics of a reference folder are computed once and kept in the
results store under fid_stats/.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from bench.errors import UsageError
from bench.provenance import file_sha256
from bench.store.files import atomic_write_bytes

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_ENV = "BENCH_INCEPTION"
PIN_ENV = "BENCH_INCEPTION_SHA256"
# Loading TorchScript runs the file's code, so only a file whose sha256 is pinned is loaded: the one below, or one
# the user pins (inception_sha256=HASH or BENCH_INCEPTION_SHA256). The sha256 of nvlabs' inception-2015-12-05.pt,
# the file clean-fid downloads, belongs here; it could not be obtained offline where this was written.
OFFICIAL_SHA256: str | None = None
EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
PROTOCOL = "clean-fid clean mode: PIL bicubic float resize to 299, TorchScript Inception pool3, 2048-d"


def prepare(image: Image.Image, pre_resize: int = 0) -> np.ndarray:
    """uint8 RGB -> float32 299 x 299 x 3 in [0, 255], as clean-fid's 'clean' resize."""
    image = image.convert("RGB")
    if pre_resize:
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((pre_resize, pre_resize), Image.LANCZOS)
    pixels = np.asarray(image)
    channels = [np.asarray(Image.fromarray(pixels[..., c].astype(np.float32), mode="F")
                           .resize((299, 299), resample=Image.BICUBIC)).clip(0, 255) for c in range(3)]
    return np.stack(channels, axis=-1).astype(np.float32)


class Inception:
    """The TorchScript Inception of clean-fid: (B, 3, 299, 299) in [0, 255] -> (B, 2048)."""

    def __init__(self, path: Path, device: torch.device, pin: str | None = None):
        self.path, self.sha256 = path, file_sha256(path)
        pinned = {h.lower() for h in (pin, os.environ.get(PIN_ENV), OFFICIAL_SHA256) if h}
        if self.sha256 not in pinned:
            raise UsageError(f"FID: {path} has sha256 {self.sha256}, which is not a pinned Inception file, and loading "
                             f"one runs its code; if it is nvlabs' {INCEPTION_FILE} (or a network you mean to use), "
                             f"pin it: inception_sha256={self.sha256} or {PIN_ENV}={self.sha256}")
        with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format the file comes in
            warnings.simplefilter("ignore", DeprecationWarning)
            self.layers = torch.jit.load(str(path), map_location=device).eval().layers
        self.device = device

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.layers((batch.to(self.device) - 128) / 128).reshape(len(batch), -1)


def locate_inception(path: str | None) -> Path:
    candidates = [Path(p) for p in (path, os.environ.get(INCEPTION_ENV)) if p]
    weights = os.environ.get("BENCH_WEIGHTS")
    candidates += [Path(weights) / "fid" / INCEPTION_FILE] if weights else []
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UsageError(f"FID needs the Inception weights {INCEPTION_FILE}; looked in "
                     f"{', '.join(str(c) for c in candidates)}; pass inception=PATH or set {INCEPTION_ENV}=PATH "
                     "(download: https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
                     f"{INCEPTION_FILE})")


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS)


def features(files: list[Path], extractor, pre_resize: int = 0, batch: int = 64, progress: bool = False) -> np.ndarray:
    chunks = []
    for start in tqdm(range(0, len(files), batch), desc="fid features", unit="batch", disable=not progress):
        pixels = np.stack([prepare(Image.open(f), pre_resize) for f in files[start:start + batch]])
        chunks.append(extractor(torch.from_numpy(pixels).permute(0, 3, 1, 2)).double().cpu().numpy())
    return np.concatenate(chunks)


def statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return feats.mean(0), np.cov(feats, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), with tr((S1 S2)^(1/2)) from the symmetric eigenproblem.

    (S1 S2)^(1/2) has the eigenvalues of A S2 A with A = S1^(1/2), which is symmetric positive semi-definite:
    two symmetric eigendecompositions in float64 instead of a general matrix square root.
    """
    s1, s2 = torch.as_tensor(sigma1, dtype=torch.float64), torch.as_tensor(sigma2, dtype=torch.float64)
    values, vectors = torch.linalg.eigh(s1)
    root = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    middle = torch.linalg.eigvalsh(root @ s2 @ root).clamp(min=0).sqrt().sum()
    diff = torch.as_tensor(mu1, dtype=torch.float64) - torch.as_tensor(mu2, dtype=torch.float64)
    return float(diff @ diff + torch.trace(s1) + torch.trace(s2) - 2 * middle)


def reference_statistics(ref: str, extractor, store_root: Path, pre_resize: int,
                         progress: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    """mu, sigma of a reference: an .npz file (clean-fid format), or a folder whose statistics are cached."""
    path = Path(ref)
    if path.suffix == ".npz":
        if not path.is_file():
            raise UsageError(f"FID reference statistics {path} not found; pass fid_ref=FILE.npz or fid_ref=FOLDER")
        data = np.load(path)
        return data["mu"], data["sigma"], {"kind": "statistics", "path": str(path.resolve()),
                                           "sha256": file_sha256(path)}
    files = image_files(path) if path.is_dir() else []
    if len(files) < 2:
        raise UsageError(f"FID reference folder {path} holds {len(files)} images; it needs at least 2 "
                         f"({', '.join(EXTENSIONS)}), or pass fid_ref=FILE.npz")
    # The cache key covers the file list with sizes, the Inception weights and the resize, so a changed folder
    # is recomputed instead of reused.
    listing = json.dumps([[str(f.relative_to(path)), f.stat().st_size] for f in files])
    key = hashlib.sha256(f"{listing}|{extractor.sha256}|{pre_resize}".encode()).hexdigest()[:16]
    cached = store_root / "fid_stats" / f"{path.name}-{key}.npz"
    info = {"kind": "folder", "path": str(path.resolve()), "images": len(files), "cache": str(cached)}
    if cached.is_file():
        data = np.load(cached)
        return data["mu"], data["sigma"], info
    mu, sigma = statistics(features(files, extractor, pre_resize, progress=progress))
    cached.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, mu=mu, sigma=sigma)
    atomic_write_bytes(cached, buffer.getvalue())
    return mu, sigma, info
