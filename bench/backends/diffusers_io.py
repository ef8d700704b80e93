"""Loading diffusers pipelines the way users have them: a local folder or a hub id, offline-first.

A hub id is resolved to its folder in the Hugging Face cache (downloaded when online), so that what is loaded,
hashed and recorded is always one folder on disk. A folder that is not a pipeline, or a hub id that is neither
cached nor downloadable here, ends in one line that says which and how to fix it, instead of a hub traceback.
"""

from __future__ import annotations

from pathlib import Path

from bench import hub
from bench.errors import UsageError


def local_path(source: str, what: str = "pipeline") -> Path:
    """A local file or folder as given; or from the Hugging Face cache (downloaded when online), a hub id's folder
    (`owner/name`) or one file of it (`owner/name/path/in/repo`)."""
    path = Path(source).expanduser()
    on_hub = not path.exists() and source.count("/") >= 1 and not source.startswith((".", "/", "~"))
    if not on_hub:
        return path
    from huggingface_hub.constants import HF_HUB_CACHE

    owner, name, *inside = source.split("/")
    try:
        if inside:
            return Path(hub.download_file(f"{owner}/{name}", "/".join(inside)))
        return Path(hub.download_folder(source))
    except Exception as err:  # offline, unknown id, refused: the hub raises several types that mean the same
        raise UsageError(f"{what} {source} is not in the Hugging Face cache ({HF_HUB_CACHE}) and could not "
                         f"be downloaded ({type(err).__name__}); on a machine with network run "
                         f"`huggingface-cli download {source} --local-dir DIR` and pass DIR instead") from None


def pipeline_folder(source: str) -> Path:
    path = local_path(source)
    if not (path / "model_index.json").is_file():
        raise UsageError(f"{source} is not a diffusers pipeline folder (no model_index.json there); pass the folder "
                         "that DiffusionPipeline.save_pretrained wrote, or a hub id such as stabilityai/sd-turbo")
    return path


def load_pipeline(folder: Path, **kwargs):
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(folder, local_files_only=True, **kwargs)
