"""The Hugging Face hub as this suite meets it: a cache first, the network only when it answers.

A machine without network must hear so at once, not after the hub client's retries (27 to 68 s measured), so
whether the hub answers is decided once per process by a TCP connection with a short timeout (in a thread, since
name resolution has no timeout of its own); when it does not, files come from the cache alone.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
from urllib.parse import urlparse

PROBE_SECONDS = 3.0


@functools.cache
def reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    answered = []

    def probe():
        try:
            socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=PROBE_SECONDS).close()
            answered.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(PROBE_SECONDS + 0.5)
    return bool(answered)


def download_file(repo: str, filename: str) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo, filename, local_files_only=not reachable())


def download_folder(repo: str, **kwargs) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(repo, local_files_only=not reachable(), **kwargs)
