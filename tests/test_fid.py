"""FID: clean-fid's protocol on a tiny TorchScript Inception stand-in, against an independent scipy computation."""

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from bench.errors import UsageError
from bench.eval.fid import (
    Inception,
    features,
    frechet_distance,
    image_files,
    locate_inception,
    prepare,
    reference_statistics,
)
from bench.provenance import file_sha256

from random_weights import write_inception


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    path = write_inception(tmp_path_factory.mktemp("inception") / "inception-2015-12-05.pt")
    return Inception(path, torch.device("cpu"), pin=file_sha256(path))


def test_an_unpinned_inception_file_is_refused_before_it_is_loaded(tmp_path, monkeypatch):
    """Loading TorchScript runs the file's code: only a pinned hash is loaded, and /tmp is never looked in."""
    path = write_inception(tmp_path / "inception.pt")
    monkeypatch.delenv("BENCH_INCEPTION_SHA256", raising=False)
    with pytest.raises(UsageError, match=f"has sha256 {file_sha256(path)}, which is not a pinned Inception file"):
        Inception(path, torch.device("cpu"))
    with pytest.raises(UsageError, match="not a pinned Inception file"):
        Inception(path, torch.device("cpu"), pin="0" * 64)
    monkeypatch.setenv("BENCH_INCEPTION_SHA256", file_sha256(path))
    assert Inception(path, torch.device("cpu")).sha256 == file_sha256(path)
    with pytest.raises(UsageError) as refused:
        locate_inception(None)
    assert "/tmp" not in str(refused.value)


def write_folder(folder, seed, count=40, shift=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        pixels = rng.integers(0, 256 - shift, (24 + i % 3, 32, 3)) + shift  # mixed sizes, as real folders have
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:05d}.png")
    return folder


def scipy_fid(a, b):
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_fid_matches_scipy_and_is_zero_against_itself(tmp_path, inception):
    real = write_folder(tmp_path / "real", seed=0)
    fake = write_folder(tmp_path / "fake", seed=1, shift=60)
    fr, ff = features(image_files(real), inception, batch=16), features(image_files(fake), inception, batch=7)
    assert fr.shape == (40, 6)
    mu_r, sigma_r, info = reference_statistics(str(real), inception, tmp_path / "store", 0, progress=False)
    ours = frechet_distance(mu_r, sigma_r, ff.mean(0), np.cov(ff, rowvar=False))
    assert ours > 1e-3
    assert abs(ours - scipy_fid(fr, ff)) <= 1e-4 * abs(ours)
    assert abs(frechet_distance(mu_r, sigma_r, mu_r, sigma_r)) < 1e-8
    # Computed once, then read from the store; an .npz in clean-fid's format loads as it is.
    assert (tmp_path / "store" / "fid_stats").is_dir() and info["images"] == 40
    again = reference_statistics(str(real), inception, tmp_path / "store", 0, progress=False)
    assert np.array_equal(again[1], sigma_r)
    np.savez(tmp_path / "real.npz", mu=mu_r, sigma=sigma_r)
    _, sigma, saved = reference_statistics(str(tmp_path / "real.npz"), inception, tmp_path, 0, progress=False)
    assert saved["kind"] == "statistics" and np.array_equal(sigma, sigma_r)


def test_clean_resize_is_per_channel_float_bicubic():
    pixels = np.random.default_rng(0).integers(0, 256, (30, 50, 3)).astype(np.uint8)
    out = prepare(Image.fromarray(pixels))
    assert out.shape == (299, 299, 3) and out.dtype == np.float32
    green = Image.fromarray(pixels[..., 1].astype(np.float32), mode="F").resize((299, 299), Image.BICUBIC)
    assert np.allclose(out[..., 1], np.asarray(green).clip(0, 255))
    assert not np.allclose(out, np.round(out))  # not quantised back to uint8: the point of "clean"
    assert prepare(Image.fromarray(pixels), pre_resize=16).shape == (299, 299, 3)


def test_missing_reference_and_weights_messages(tmp_path, monkeypatch):
    from bench.eval.fid import locate_inception

    monkeypatch.delenv("BENCH_INCEPTION", raising=False)
    monkeypatch.delenv("BENCH_WEIGHTS", raising=False)
    with pytest.raises(UsageError, match="pass inception=PATH or set BENCH_INCEPTION=PATH"):
        locate_inception(str(tmp_path / "nope.pt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds 0 images"):
        reference_statistics(str(tmp_path / "empty"), None, tmp_path, 0, progress=False)
