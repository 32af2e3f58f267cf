"""Weights of open_clip's pretrained tags: from the local caches first, downloaded only where the
network answers. Offline (HF_HUB_OFFLINE=1, or the hub not reachable within a few seconds) a
tag whose weights are not cached fails at once with a message that names it, instead of waiting
on the network's retries."""
from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

import open_clip

PROBE_SECONDS = 3.0


def _offline_by_setting() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def reachable(host: str, port: int = 443, seconds: float = PROBE_SECONDS) -> bool:
    """Whether a TCP connection to host:port opens within `seconds` (name lookup included: it runs
    in a thread, since the resolver itself has no timeout)."""
    outcome: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=seconds).close()
            outcome.append(True)
        except OSError:
            outcome.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(seconds + 0.5)
    return bool(outcome and outcome[0])


def _cached_hub_file(repo: str, filename: str | None) -> str | None:
    """A file of a Hugging Face hub repo already in the local hub cache, safetensors preferred."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None
    names = [filename] if filename else []
    names = ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"] if not names else names
    if filename and filename.endswith((".bin", ".pth")):
        names.insert(0, filename[: filename.rindex(".")] + ".safetensors")
    for name in names:
        try:
            # the cache folder read at call time (huggingface_hub reads HF_HUB_CACHE once, at import)
            return hf_hub_download(repo_id=repo, filename=name, local_files_only=True,
                                   cache_dir=os.environ.get("HF_HUB_CACHE") or None)
        except Exception:  # noqa: BLE001 - not cached (the hub raises several kinds)
            continue
    return None


def download_tag_weights(model_name: str, tag: str, tag_config: dict) -> str:
    """Local path of the weights of open_clip tag `tag` of `model_name` (`tag_config`: open_clip's
    record of it)."""
    hub = tag_config.get("hf_hub", "")
    url = tag_config.get("url", "")
    if "file" in tag_config:
        return tag_config["file"]
    places = []
    if hub:
        repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), None)
        cached = _cached_hub_file(repo, filename)
        if cached:
            return cached
        places.append(f"the Hugging Face hub cache (repo {repo})")
    if url:
        cached = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(cached):
            return cached
        places.append(cached)
    host = "huggingface.co" if hub else urlparse(url).hostname or "the download host"
    why = "HF_HUB_OFFLINE is set" if _offline_by_setting() else None
    if why is None and not reachable(host):
        why = f"{host} cannot be reached"
    if why:
        raise FileNotFoundError(
            f"the weights of open_clip tag {tag!r} of {model_name} are not cached locally "
            f"(looked in {' and '.join(places) or 'nowhere: the tag names no source'}) and {why}: download them where "
            f"there is a network, or set pretrained to a local weights file")
    return open_clip.download_pretrained(tag_config)
