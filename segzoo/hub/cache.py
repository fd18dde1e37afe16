"""Where segzoo keeps pretrained files, and the checks around them.

One cache folder of converted checkpoints (``SEGZOO_HOME``), whose content digest is checked
at every use; offline mode (``SEGZOO_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``: nothing touches the
network); a file lock so that concurrent processes download and convert once; https-only
downloads from known hosts (:func:`check_url`) and sha256 checks. The downloads themselves are
:mod:`segzoo.hub.download`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import torch
import torch.hub
from filelock import FileLock, Timeout
from tqdm import tqdm

from segzoo.checkpoint import CheckpointError, atomic_write, read_checkpoint, save

if TYPE_CHECKING:
    from segzoo.spec import ModelSpec

ENV_HOME = "SEGZOO_HOME"
ENV_OFFLINE = "SEGZOO_OFFLINE"
# bump when converted checkpoints must be made again (a converter fix, a format change)
CACHE_VERSION = 2  # 2: converted torchvision R-CNNs record trainable_backbone_layers=3 (torchvision's recipe)
# the only hosts segzoo downloads from, always over https
TRUSTED_HOSTS = frozenset({"download.pytorch.org"})
_test_servers: set[str] = set()


class WeightsError(RuntimeError):
    """Pretrained weights that cannot be fetched, verified or used; the message says what to do."""


# ---------------------------------------------------------------------------- places


def home() -> Path:
    """segzoo's cache folder: ``$SEGZOO_HOME``, else ``$XDG_CACHE_HOME/segzoo``, else ``~/.cache/segzoo``."""
    if os.environ.get(ENV_HOME):
        return Path(os.environ[ENV_HOME]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "segzoo"


def checkpoint_path(name: str) -> Path:
    """Where the converted segzoo checkpoint of ``model.tag`` is cached."""
    return home() / "checkpoints" / f"{name}.safetensors"


def downloads_dir() -> Path:
    """Where files downloaded by hand are picked up (the error for a missing file names the path)."""
    return home() / "downloads"


def torch_hub_path(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps the file of ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def is_offline() -> bool:
    """True when ``SEGZOO_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to 1/true/yes/on."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in (ENV_OFFLINE, "HF_HUB_OFFLINE"))


def looks_like_path(value: str | os.PathLike) -> bool:
    """True for a file path, False for a tag: paths are PathLike, exist, or have a separator
    or a weights suffix."""
    if not isinstance(value, str):
        return True
    return (os.sep in value or "/" in value or Path(value).suffix in (".safetensors", ".pth", ".pt", ".bin")
            or Path(value).exists())


# ---------------------------------------------------------------------------- safety


def check_url(url: str) -> None:
    """Refuse anything but https from a trusted host (a test server only through the hook)."""
    parts = urlparse(url)
    if parts.netloc in _test_servers and parts.scheme in ("http", "https"):
        return
    if parts.scheme != "https":
        raise WeightsError(f"refusing to download {url}: segzoo downloads over https only")
    if parts.hostname not in TRUSTED_HOSTS:
        raise WeightsError(
            f"refusing to download {url}: {parts.hostname} is not one of the hosts of segzoo's "
            f"weights table ({', '.join(sorted(TRUSTED_HOSTS))})"
        )


@contextlib.contextmanager
def allow_test_server(netloc: str) -> Iterator[None]:
    """Test hook: also accept (plain http) URLs on ``netloc``, e.g. ``"127.0.0.1:8765"``.

    Only loopback addresses are accepted, so the hook cannot open the door to the network.
    """
    host = netloc.rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "[::1]"):
        raise ValueError(f"only a loopback test server can be allowed, not {netloc!r}")
    _test_servers.add(netloc)
    try:
        yield
    finally:
        _test_servers.discard(netloc)


def hash_prefix(url: str) -> str | None:
    """The sha256 prefix that torch.hub reads from a ``name-<sha256 prefix>.ext`` file name."""
    match = torch.hub.HASH_REGEX.search(os.path.basename(urlparse(url).path))
    return match.group(1) if match and match.group(1) else None


def sha256_file(path: Path, desc: str | None = None) -> str:
    """The sha256 of a file, with a progress bar when ``desc`` is given."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024,
                                     desc=desc, disable=desc is None, file=sys.stderr) as bar:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


# ---------------------------------------------------------------------------- lock


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """Hold the lock of ``name`` so that one process at a time fetches and converts it.

    The lock is an OS file lock (``filelock``): it is released when its process dies.
    """
    path = home() / "locks" / f"{name}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=1)
        except Timeout:
            print(f"segzoo: waiting for another process fetching {name} (lock {path})", file=sys.stderr)
            lock.acquire()
    except OSError as e:  # SEGZOO_HOME is a file, read-only, on a full disk, ...
        raise WeightsError(unwritable_home(e)) from None
    try:
        yield
    finally:
        lock.release()


def unwritable_home(error: OSError) -> str:
    """The message for a cache folder that cannot be written, naming SEGZOO_HOME and the fix."""
    root = home()
    what = next((f"{p} is a file, not a folder" for p in (root, *root.parents) if p.is_file()), None)
    if what is None:
        what = f"it cannot be written ({error.strerror or error})"
    return (f"segzoo's weights cache {ENV_HOME}={root}: {what}; set {ENV_HOME} to a writable folder (a read-only "
            "shared cache works for weights already in it)")


# ---------------------------------------------------------------------------- cache


def _record_path(path: Path) -> Path:
    return path.with_suffix(".json")


def read_cached(name: str) -> tuple[dict[str, torch.Tensor], ModelSpec, list | None] | None:
    """The cached checkpoint of ``name`` as ``(state, spec, classes)``, or None.

    The checkpoint's own ``content_digest`` is verified on reading: a corrupted file (a disk
    error, a half-copied file, an edit), or one converted by an older segzoo (its record's
    cache version), is deleted with a warning, so that it is fetched again.
    """
    path = checkpoint_path(name)
    if not path.exists():
        return None
    record = _record_path(path)
    try:
        if record.exists() and json.loads(record.read_text()).get("cache_version") != CACHE_VERSION:
            raise CheckpointError(f"{path} was converted by another segzoo version")
        return read_checkpoint(path)
    except (CheckpointError, OSError, ValueError) as e:
        warnings.warn(f"{e}; deleting the cached copy and fetching it again", stacklevel=3)
        discard_cached(name)
        return None


def discard_cached(name: str) -> None:
    """Delete the cached checkpoint of ``name`` (left in place, silently, in a read-only cache)."""
    path = checkpoint_path(name)
    for p in (path, _record_path(path)):
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass


def store_checkpoint(name: str, model: torch.nn.Module, classes: list[str], source: dict) -> Path:
    """Save a converted model as the cached checkpoint of ``name`` (atomically, with its
    content digest and class names in the header) and record where it came from."""
    path = checkpoint_path(name)
    save(model, path, classes=classes)
    atomic_write(_record_path(path), json.dumps({"cache_version": CACHE_VERSION, "source": source}, indent=1).encode())
    return path

