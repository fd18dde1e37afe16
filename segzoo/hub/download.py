"""Where pretrained files are downloaded from: torchvision's ``Weights`` enums (through torch.hub),
Hugging Face hub repositories and timm's pretrained tags.

What the libraries already do, and segzoo leaves to them:

* torchvision's ``Weights`` enums hold the URLs, categories and metrics of their
  checkpoints; ``Weights.get_state_dict`` downloads through ``torch.hub`` into
  ``$TORCH_HOME/hub/checkpoints`` (to a temporary file, renamed once the sha256 prefix in
  the file name matches; a mismatch deletes it) and shows a progress bar.
* timm resolves pretrained tags (``resnet50.a1_in1k``) and loads them into its models from
  the Hugging Face hub cache (``huggingface_hub``: ``HF_HOME``, ``HF_HUB_OFFLINE``).

What segzoo adds: https-only downloads from known hosts, offline mode, a local copy looked up
first, and errors that say where to get a file by hand (see :mod:`segzoo.hub.cache`).
"""

from __future__ import annotations

import os
import shutil
import socket
import urllib.error
import warnings
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub
import timm
import torch

from segzoo.checkpoint import read_state_dict
from segzoo.hub.cache import (
    ENV_OFFLINE,
    WeightsError,
    check_url,
    downloads_dir,
    hash_prefix,
    is_offline,
    sha256_file,
    torch_hub_path,
)

# ---------------------------------------------------------------------------- downloads


def torchvision_state_dict(weights, what: str, manual_hint: str) -> dict[str, torch.Tensor]:
    """Fetch a torchvision ``Weights`` enum member's state dict through ``get_state_dict``.

    torch.hub downloads it into its cache (hash-checked, written to a temporary file first)
    unless it is there already; a cached file whose hash does not match its name is deleted
    and fetched again. Nothing touches the network when offline.

    Args:
        weights: a ``torchvision.models.WeightsEnum`` member.
        what: the weights' name, for messages.
        manual_hint: how to provide the file by hand (appended to errors).
    """
    url = weights.url
    check_url(url)
    prefix = hash_prefix(url)
    if prefix is None:
        raise WeightsError(f"{url} has no sha256 prefix in its file name; segzoo only downloads verified files")
    local = torch_hub_path(url)
    if local.exists() and not sha256_file(local).startswith(prefix):
        warnings.warn(f"{local} does not match the sha256 prefix {prefix} in its name; deleting it and "
                      "downloading it again", stacklevel=3)
        local.unlink()
    if not local.exists() and is_offline():
        raise WeightsError(f"{what} is not in the cache and offline mode is on ({ENV_OFFLINE} or "
                           f"HF_HUB_OFFLINE), so segzoo does not download {url}. {manual_hint}")
    try:
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True, map_location="cpu")
    except urllib.error.HTTPError as e:
        raise WeightsError(f"downloading {what} from {url} failed: HTTP {e.code} {e.reason}. "
                           f"{manual_hint}") from None
    except (urllib.error.URLError, OSError) as e:
        raise WeightsError(f"downloading {what} from {url} failed: {e}. {manual_hint}") from None
    except RuntimeError as e:
        if "invalid hash value" not in str(e):
            raise WeightsError(f"{local} could not be read as a PyTorch weights file ({e}); delete it "
                               "and try again") from None
        raise WeightsError(
            f"the download of {url} does not match its sha256 prefix {prefix} (an interrupted transfer "
            f"or a changed file: {e}); the partial file was deleted and nothing was cached. Try again; "
            f"if it persists, {manual_hint[0].lower()}{manual_hint[1:]}"
        ) from None


def huggingface_state_dict(repo: str, files: tuple[str, ...], what: str, manual: Path,
                           manual_hint: str) -> dict[str, torch.Tensor]:
    """The state dict of a Hugging Face hub repository's weight file, as timm bodies are found:
    the hub cache first (``HF_HOME``/``HF_HUB_CACHE``; no network), then ``manual`` (a copy
    downloaded by hand), then ``huggingface_hub.hf_hub_download`` unless offline.

    Args:
        repo: ``"nvidia/segformer-b0-finetuned-ade-512-512"``.
        files: the repository's weight files, tried in order (``model.safetensors``, ``pytorch_model.bin``).
        what: the weights' name, for messages.
        manual: where a copy downloaded by hand is picked up.
        manual_hint: how to provide the file by hand (appended to errors).
    """
    for filename in files:
        found = huggingface_hub.try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return read_state_dict(found)
    if manual.exists():
        return read_state_dict(manual)
    if is_offline():
        raise WeightsError(f"{what} is not in the Hugging Face or segzoo cache and offline mode is on "
                           f"({ENV_OFFLINE} or HF_HUB_OFFLINE). {manual_hint}")
    errors = []
    for filename in files:
        try:
            return read_state_dict(huggingface_hub.hf_hub_download(repo, filename))
        except huggingface_hub.errors.EntryNotFoundError as e:  # the repository has the other file
            errors.append(str(e).splitlines()[0])
        except OSError as e:  # huggingface_hub's network errors are OSErrors
            raise WeightsError(f"downloading {what} from {repo} failed: {e}. {manual_hint}") from None
    raise WeightsError(f"{repo} has none of {', '.join(files)} ({'; '.join(errors)}). {manual_hint}")


# ---------------------------------------------------------------------------- timm backbones


def timm_name(arch: str, value: str) -> str:
    """The timm pretrained name (``arch.tag``) for ``backbone_weights=value``.

    Args:
        arch: the backbone's timm architecture, e.g. ``"resnet34"``.
        value: ``"imagenet"`` (timm's default pretrained tag for ``arch``) or a timm
            pretrained name such as ``"resnet34.a1_in1k"``.
    """
    if value == "imagenet":
        if not timm.models.is_model(arch) or not timm.list_pretrained(f"{arch}.*"):
            raise WeightsError(f"timm has no pretrained weights for {arch!r}; pass a local file as backbone_weights")
        return f"{arch}.{timm.models.get_pretrained_cfg(arch).tag}"
    value_arch, tag = timm.models.split_model_name_tag(value)
    if value_arch != arch:
        raise WeightsError(
            f"backbone_weights={value!r} are for the timm model {value_arch!r} but this backbone is {arch!r}; "
            f"pass 'imagenet' or one of {', '.join(timm.list_pretrained(f'{arch}.*')[:8]) or 'no timm tags'}"
        )
    if not tag or not timm.models.is_model_pretrained(value):
        raise WeightsError(
            f"{value!r} is not a timm pretrained name; {arch} has "
            f"{', '.join(timm.list_pretrained(f'{arch}.*')[:8]) or 'none'} (timm.list_pretrained('{arch}.*'))"
        )
    return value


def _timm_source(name: str) -> tuple[str, str]:
    """(where timm downloads ``name`` from, the file name segzoo looks for in its downloads)."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg.hf_hub_id:
        repo = cfg.hf_hub_id.split("@")[0]
        filename = cfg.hf_hub_filename or "model.safetensors"
        return f"https://huggingface.co/{repo}/resolve/main/{filename}", f"{name}.safetensors"
    return cfg.url, f"{name}{Path(urlparse(cfg.url or '').path).suffix or '.pth'}"


def timm_local_file(name: str) -> Path | None:
    """A local copy of timm pretrained ``name``: in the Hugging Face hub cache, torch.hub's
    cache (timm's URL sources) or segzoo's downloads folder; None if there is none."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        for filename in ([cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]):
            found = huggingface_hub.try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str):
                return Path(found)
    if cfg.url and torch_hub_path(cfg.url).exists():
        return torch_hub_path(cfg.url)
    for suffix in (".safetensors", ".pth", ".bin"):
        if (downloads_dir() / f"{name}{suffix}").exists():
            return downloads_dir() / f"{name}{suffix}"
    return None


def timm_pretrained(name: str, **create_kwargs) -> torch.nn.Module:
    """``timm.create_model(name, pretrained=True, **create_kwargs)``: timm's own loading.

    A local copy (see :func:`timm_local_file`) is handed to timm as
    ``pretrained_cfg_overlay=dict(file=...)``, so a cached file touches no network; without
    one, timm downloads (Hugging Face hub) unless offline.
    """
    cfg = timm.models.get_pretrained_cfg(name)
    local = None if cfg.custom_load else timm_local_file(name)
    if local is not None:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(local)), **create_kwargs)
    url, file_name = _timm_source(name)
    by_hand = (f"Download {url}, then put it at {downloads_dir() / file_name} or run "
               f"`segzoo weights import {name} FILE` (or pass backbone_weights=FILE)")
    if is_offline():
        raise WeightsError(f"timm weights {name} are not in the Hugging Face or segzoo cache and offline mode is "
                           f"on ({ENV_OFFLINE} or HF_HUB_OFFLINE). {by_hand}")
    unreachable = _unreachable(url)
    if unreachable:  # fail at once: huggingface_hub would retry for about a minute before giving up
        raise WeightsError(f"cannot download timm weights {name}: {unreachable}. Without a network, set "
                           f"{ENV_OFFLINE}=1 (nothing is fetched and a missing file fails at once). {by_hand}")
    try:
        return timm.create_model(name, pretrained=True, **create_kwargs)
    except OSError as e:  # huggingface_hub's errors are OSErrors
        raise WeightsError(f"downloading timm weights {name} failed: {str(e).strip().rstrip('.')}. "
                           f"{by_hand}") from None


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def _unreachable(url: str | None, timeout: float = 3.0) -> str | None:
    """Why the host of ``url`` cannot be reached (one TCP connection, ``timeout`` seconds), or None.

    Behind a proxy the host is not contacted directly, so nothing is probed there.
    """
    parts = urlparse(url or "")
    if not parts.hostname or any(os.environ.get(v) for v in PROXY_VARIABLES):
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as e:
        return f"{parts.hostname}:{port} cannot be reached ({e.strerror or e})"
    return None


def import_timm_file(name: str, file: Path) -> Path:
    """Check that ``file`` holds the state dict of ``timm.create_model(arch)`` and copy it to
    segzoo's downloads folder, where :func:`timm_pretrained` finds it."""
    state = read_state_dict(file)
    arch = timm.models.split_model_name_tag(name)[0]
    with torch.device("meta"):
        own = timm.create_model(arch, pretrained=False).state_dict()
    bad = [k for k, v in own.items() if k not in state or tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise WeightsError(f"{file} does not hold timm {arch} weights: {len(bad)} keys are missing or mis-shaped "
                           f"({', '.join(bad[:5])})")
    suffix = ".safetensors" if file.suffix == ".safetensors" else ".pth"
    dst = downloads_dir() / f"{name}{suffix}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(file, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst
