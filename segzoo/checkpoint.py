"""Self-describing safetensors checkpoints.

A segzoo checkpoint is a plain safetensors file whose header metadata holds
``{"segzoo": version, "spec": ModelSpec as JSON, "classes": JSON list}``, so that
``segzoo.load(path)`` rebuilds the model with no other input. Writes are atomic (a
temporary file in the same folder, fsync, then rename), so an interrupted save never
leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segzoo.spec import ModelSpec

PathLike = str | os.PathLike


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with a message that says why."""


# ---------------------------------------------------------------------------- writing


def atomic_write(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the new one.

    The bytes go to a temporary file in the same folder, are flushed to disk, and the
    file is renamed over ``path``. On any error (a full disk, say) the temporary file is
    removed and the previous ``path`` is untouched.
    """
    atomic_write_all({path: data})


def atomic_write_all(files: Mapping[PathLike, bytes]) -> None:
    """Write several files so that an interruption leaves every old version in place.

    Every file is first written in full to a temporary file beside it and flushed to
    disk; only then are the temporaries renamed over their paths, in order. A kill or an
    error (a full disk) while writing leaves all previous files untouched; only a kill in
    the microseconds between two renames can leave a mix of old and new files.
    """
    pending: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            pending.append((tmp, path))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        while pending:
            tmp, path = pending[0]
            os.replace(tmp, path)
            pending.pop(0)
    except BaseException:
        for tmp, _ in pending:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise
    for folder in {Path(p).parent for p in files}:  # make the renames themselves durable
        try:
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass


def _tensors_for_saving(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, seen = {}, set()
    for k, v in state.items():
        v = v.detach().cpu()
        key = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else None
        # safetensors refuses tensors that share memory; give each its own copy
        if key is not None and key in seen or not v.is_contiguous():
            v = v.contiguous().clone()
        elif key is not None:
            seen.add(key)
        out[k] = v
    return out


def save_state_dict(
    state: Mapping[str, torch.Tensor], path: PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Atomically save a state dict as safetensors with string metadata."""
    atomic_write(path, encode_state_dict(state, metadata))


def encode_state_dict(state: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """A state dict as the bytes of a safetensors file with string metadata."""
    from safetensors.torch import save

    return save(_tensors_for_saving(state), metadata=metadata)


def save(model: nn.Module, path: PathLike, classes: list[str] | None = None) -> Path:
    """Save a built model's weights with its spec in the header.

    Args:
        model: a model made by ``segzoo.build`` (it must have ``model.spec``).
        path: destination ``.safetensors`` file; written atomically.
        classes: optional class names, stored in the header (``len == num_classes``).

    Returns:
        The path written.
    """
    from segzoo import __version__

    spec = getattr(model, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise TypeError(
            "model has no segzoo spec; build it with segzoo.build(name, ...) or segzoo.load() "
            "so that the checkpoint can describe it"
        )
    if classes is None:
        classes = getattr(model, "classes", None)
    if classes is not None:
        classes = [str(c) for c in classes]
        if len(classes) != spec.num_classes:
            raise ValueError(
                f"{len(classes)} class names given but the model has num_classes="
                f"{spec.num_classes}; pass one name per class"
            )
    state = model.state_dict()
    metadata = {
        "segzoo": __version__,
        "spec": spec.to_json(),
        "classes": json.dumps(classes),
        "keys_sha256": _keys_digest(state),
    }
    save_state_dict(state, path, metadata)
    return Path(path)


# ---------------------------------------------------------------------------- reading


def _keys_digest(keys) -> str:
    """A digest of the tensor names: a flipped byte in a name is then caught as corruption."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


def _is_pickle(path: Path) -> bool:
    """True for torch.save files (zip or legacy pickle), False for safetensors-shaped files.

    A safetensors file starts with its header length (8 bytes, little-endian) and then
    ``{``; its first byte can be 0x80 (one file in 256), so that alone says nothing.
    """
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return True
    if len(head) == 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n <= path.stat().st_size - 8:
            return False
    return head[:1] == b"\x80" and len(head) > 1 and head[1] in (2, 3, 4, 5)


def _check_file(path: Path) -> dict[str, Any]:
    """Validate a safetensors file's framing and return its parsed header."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass the .safetensors file inside it")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if _is_pickle(path):
            raise CheckpointError(
                f"{path} is a PyTorch pickle (.pth) file, not safetensors; convert it with "
                "`python tools/convert.py --from SOURCE --name MODEL SRC DST` (or "
                "segzoo.convert.*) first"
            )
        if len(head) < 8:
            raise CheckpointError(f"{path} is truncated ({size} bytes): not a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise CheckpointError(
                f"{path} is truncated or not a safetensors file: its header claims {n} bytes "
                f"but the file has {size}"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        ends = [
            int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"
        ]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError) as e:
        raise CheckpointError(f"{path} has a corrupted safetensors header ({e})") from None
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        raise CheckpointError(
            f"{path} is truncated: {size} bytes on disk, {expected} expected; "
            "the file was cut off while being written or copied"
        )
    return header


def read_safetensors(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read any safetensors file, with clear errors, as ``(state_dict, metadata)``."""
    from safetensors.torch import load_file

    path = Path(path)
    header = _check_file(path)
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own exception types
        raise CheckpointError(f"{path} is corrupted and could not be read: {e}") from None
    return state, dict(header.get("__metadata__") or {})


def read_checkpoint(path: PathLike) -> tuple[dict[str, torch.Tensor], ModelSpec, list | None]:
    """Read a segzoo checkpoint as ``(state_dict, spec, classes)``."""
    state, meta = read_safetensors(path)
    if "segzoo" not in meta or "spec" not in meta:
        raise CheckpointError(
            f"{path} is a safetensors file but not a segzoo checkpoint (no segzoo spec in its "
            "header); load it with segzoo.build(name, backbone_weights=...) if it holds timm "
            "weights, or convert it with tools/convert.py"
        )
    if "keys_sha256" in meta and meta["keys_sha256"] != _keys_digest(state):
        raise CheckpointError(
            f"{path} is corrupted: its tensor names do not match the digest stored when it was saved"
        )
    try:
        spec = ModelSpec.from_json(meta["spec"])
        classes = json.loads(meta.get("classes", "null"))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path} has a corrupted segzoo spec in its header ({e})") from None
    return state, spec, classes


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """Read weights from a ``.safetensors`` or ``.pth``/``.pt`` file (never unpickling code).

    Pickle files are read with ``torch.load(weights_only=True)``; common wrappers
    (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {path}")
    if _is_pickle(path):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"could not read {path} as a PyTorch weights file: {e}") from None
        for key in ("state_dict", "model", "model_state"):
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__})")
        return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    state, _ = read_safetensors(path)
    return state


# ---------------------------------------------------------------------------- loading


def class_dependent_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the layers whose shape depends on ``num_classes``.

    Models list module-name prefixes in a ``class_layers`` attribute.
    """
    prefixes = tuple(p.rstrip(".") + "." for p in getattr(model, "class_layers", ()))
    return [k for k in model.state_dict() if prefixes and k.startswith(prefixes)]


def load_weights(
    model: nn.Module, source: PathLike | Mapping[str, torch.Tensor], strict: bool = True
) -> nn.Module:
    """Load a segzoo checkpoint (or a state dict) into a built model.

    Loading is strict: every missing, unexpected or mis-shaped key is named in one error.
    The exception is the class-dependent layers (``model.class_layers``) when the
    checkpoint was trained with another ``num_classes``: they keep their fresh
    initialisation and a warning names them, which is what fine-tuning needs.
    """
    src_name = None
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        state, spec, _ = read_checkpoint(source)
        src_name = spec.name
        own = getattr(model, "spec", None)
        if own is not None and spec.name != own.name:
            raise CheckpointError(
                f"{source} holds a {spec.name!r} model but this model is {own.name!r}; "
                f"build {spec.name!r} (or use segzoo.load) to use these weights"
            )
    own_state = model.state_dict()
    class_keys = set(class_dependent_keys(model))
    missing = [k for k in own_state if k not in state]
    unexpected = [k for k in state if k not in own_state]
    mismatched, reinit = [], []
    for k, v in state.items():
        if k in own_state and tuple(v.shape) != tuple(own_state[k].shape):
            (reinit if k in class_keys else mismatched).append(
                f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own_state[k].shape)}"
            )
    problems = []
    if missing and strict:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:20])}")
    if unexpected and strict:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}")
    if mismatched:
        problems.append(f"shape mismatch ({len(mismatched)}): {'; '.join(mismatched[:20])}")
    if problems:
        where = f" from {source}" if src_name else ""
        raise CheckpointError(f"cannot load weights{where}: " + " | ".join(problems))
    if reinit:
        names = sorted({r.split(":")[0].rsplit(".", 1)[0] for r in reinit})
        warnings.warn(
            "num_classes differs from the checkpoint; re-initialised the class-dependent "
            f"layers {', '.join(names)}",
            stacklevel=2,
        )
    skip = {r.split(":")[0] for r in reinit}
    filtered = {k: v for k, v in state.items() if k not in skip and k in own_state}
    model.load_state_dict(filtered, strict=False)
    return model


def load(path: PathLike, map_location: str | torch.device = "cpu", **overrides: Any) -> nn.Module:
    """Rebuild a model from a segzoo checkpoint alone.

    Args:
        path: a ``.safetensors`` file written by :func:`save`.
        map_location: device to put the model on.
        **overrides: builder arguments to change (for example ``num_classes`` to fine-tune
            on other classes: the class-dependent layers are then re-initialised).

    Returns:
        The model in eval mode, with ``model.spec`` and ``model.classes`` set.
    """
    from segzoo.registry import build

    state, spec, classes = read_checkpoint(path)
    kwargs = {**spec.kwargs, "num_classes": spec.num_classes, **overrides}
    model = build(spec.name, **kwargs)
    load_weights(model, state)
    model.classes = classes if model.num_classes == spec.num_classes else None
    return model.to(map_location).eval()
