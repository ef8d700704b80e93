"""Loading diffusers pipelines the way users have them: a local folder or a hub id, offline-first.

A folder that does not exist, or a hub id that is neither cached nor downloadable here, ends in one line that
says which, and how to fix it, instead of a hub traceback.
"""

from __future__ import annotations

from pathlib import Path

from bench.errors import UsageError


def load_pipeline(source: str | Path, **kwargs):
    from diffusers import DiffusionPipeline

    path = Path(source)
    looks_local = path.exists() or str(source).startswith((".", "/", "~")) or str(source).count("/") != 1
    if looks_local:
        if not (path / "model_index.json").is_file():
            raise UsageError(f"{source} is not a diffusers pipeline folder (no model_index.json there); pass the "
                             "folder that DiffusionPipeline.save_pretrained wrote, or a hub id such as "
                             "stabilityai/sd-turbo")
        return DiffusionPipeline.from_pretrained(path, local_files_only=True, **kwargs)
    try:
        return DiffusionPipeline.from_pretrained(str(source), **kwargs)
    except Exception as err:  # offline, unknown id, refused: the hub raises several types that mean the same
        from huggingface_hub.constants import HF_HUB_CACHE

        raise UsageError(f"pipeline {source} is not in the Hugging Face cache ({HF_HUB_CACHE}) and could not be "
                         f"downloaded ({type(err).__name__}); on a machine with network run "
                         f"`huggingface-cli download {source} --local-dir DIR` and pass DIR instead") from None
