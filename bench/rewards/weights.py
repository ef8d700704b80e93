"""Where scorer weights come from: a local weights folder, else the Hugging Face cache or hub.

With `weights=DIR` (or BENCH_WEIGHTS=DIR) scorer NAME reads DIR/NAME/<file>, as laid out by
`huggingface-cli download REPO FILE --local-dir DIR/NAME`. Without it, files come from the hub cache and
are downloaded when the machine is online. A miss names the file, every place looked in, and the key and
variable that point elsewhere, instead of a hub traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench import hub
from bench.errors import UsageError
from bench.provenance import file_sha256

WEIGHTS_ENV = "BENCH_WEIGHTS"


def weights_root(weights: str | None) -> Path | None:
    chosen = weights or os.environ.get(WEIGHTS_ENV)
    return Path(chosen).expanduser() if chosen else None


def _fix(scorer: str, repo: str, pattern: str) -> str:
    return (f"put it in DIR/{scorer}/ and pass weights=DIR or set {WEIGHTS_ENV}=DIR (on a machine with network: "
            f"huggingface-cli download {repo} {pattern} --local-dir DIR/{scorer})")


def from_hub(fetch, scorer: str, repo: str, what: str, pattern: str) -> Path:
    """`fetch()` from the hub cache (downloading when online); any failure becomes one line with the fix."""
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        return Path(fetch())
    except Exception as err:  # hub errors differ by cause (offline, missing, refused); all mean the same here
        raise UsageError(f"{scorer}: {what} of {repo} not in the Hugging Face cache ({HF_HUB_CACHE}) and could not "
                         f"be downloaded ({type(err).__name__}); {_fix(scorer, repo, pattern)}") from None


def locate_file(scorer: str, repo: str, filename: str, weights: str | None) -> Path:
    root = weights_root(weights)
    if root is not None:
        path = root / scorer / filename
        if path.is_file():
            return path
        raise UsageError(f"{scorer}: weights file {filename} not found at {path}; {_fix(scorer, repo, filename)}")
    return from_hub(lambda: hub.download_file(repo, filename), scorer, repo, f"weights file {filename}", filename)


def locate_folder(scorer: str, repo: str, subfolder: str, needed: tuple[str, ...], weights: str | None) -> Path:
    """A model or tokenizer folder: DIR/NAME/SUBFOLDER locally, else `repo` from the hub cache."""
    pattern = f"--include {' '.join(needed)} (into {subfolder}/)"
    root = weights_root(weights)
    if root is not None:
        path = root / scorer / subfolder
        missing = [name for name in needed if not (path / name).is_file()]
        if not missing:
            return path
        raise UsageError(f"{scorer}: {', '.join(missing)} not found in {path}; {_fix(scorer, repo, pattern)}")
    return from_hub(lambda: hub.download_folder(repo, allow_patterns=list(needed)), scorer, repo,
                    ", ".join(needed), pattern)


def load_checked(module, state: dict, path: Path, *, allow_extra: bool = False) -> None:
    """Load `state` into `module`, refusing a checkpoint that lacks tensors the module needs.

    position_ids are buffers transformers rebuilds itself; `allow_extra` accepts checkpoint tensors of heads the
    scorer does not use.
    """
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or (unexpected and not allow_extra):
        raise ValueError(f"{path} does not match {type(module).__name__}: missing {missing[:3]} "
                         f"({len(missing)} in all), unexpected {unexpected[:3]} ({len(unexpected)} in all)")


def load_state_dict(path: Path) -> dict:
    """A checkpoint's tensors without running pickled code: safetensors, or torch.load(weights_only=True)."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def fingerprint(paths: list[Path]) -> dict[str, str]:
    """sha256 of every weights file a scorer read, recorded with each number it produces."""
    return {path.name: file_sha256(path) for path in paths}
