"""Self-describing safetensors checkpoints.

A segzoo checkpoint is a plain safetensors file whose header metadata holds
``{"segzoo": version, "spec": ModelSpec as JSON, "classes": JSON list, "content_digest": ...}``,
so that ``segzoo.load(path)`` rebuilds the model with no other input. Writes are atomic (a
temporary file in the same folder, fsync, then rename), so an interrupted save never
leaves a half-written checkpoint behind, and new files get the permissions the user's umask
gives.

Reading trusts nothing in the file. ``content_digest`` covers the spec, the class names and
every tensor's name, dtype, shape and bytes (:func:`content_digest`). It is verified on every
read, so a flipped byte anywhere is an error, not a model whose outputs are silently wrong. Older files
carry only ``keys_sha256``, a digest of the tensor names, and are still read. The header
is validated before anything is built: the spec's types and ranges, ``num_classes`` against
the tensors in the file, the class names against ``num_classes``. :func:`load` then builds the
header's model on the meta device (no memory) and compares every tensor's name, shape and
dtype kind with the file. It never opens a path written in the header: a spec that names
``weights`` or ``backbone_weights`` is refused. Every problem is one :class:`CheckpointError`
that names the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import struct
import warnings
import zlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segzoo.spec import ModelSpec
from segzoo.version import __version__

PathLike = str | os.PathLike
PATH_ARGS = ("weights", "backbone_weights")  # the registry's file arguments: never read from a header
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit


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
            fd, tmp = _create_temp(path)
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


def _create_temp(path: Path) -> tuple[int, str]:
    """A new temporary file beside ``path``; mode 0o666 less the umask, as ``open()`` would give."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), str(tmp)
        except FileExistsError:
            continue


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
    """A state dict as the bytes of a safetensors file with string metadata.

    When the metadata holds a segzoo ``spec``, the digests that reading verifies are added.
    """
    from safetensors.torch import save

    tensors = _tensors_for_saving(state)
    if metadata is not None and "spec" in metadata:
        metadata = {**metadata, "keys_sha256": _keys_digest(tensors),
                    "content_digest": content_digest(tensors, metadata["spec"], metadata.get("classes", "null"))}
    return save(tensors, metadata=metadata)


def save(model: nn.Module, path: PathLike, classes: list[str] | None = None) -> Path:
    """Save a built model's weights with its spec in the header.

    Args:
        model: a model made by ``segzoo.build`` (it must have ``model.spec``).
        path: destination ``.safetensors`` file; written atomically.
        classes: optional class names, stored in the header (``len == num_classes``).

    Returns:
        The path written.
    """
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
        if len(classes) != spec.num_labels:  # a binary model: background and foreground
            raise ValueError(
                f"{len(classes)} class names given but the model has num_classes="
                f"{spec.num_classes}; pass one name per class"
                + (" (binary models: two, background and foreground)" if spec.num_labels != spec.num_classes else "")
            )
    state = model.state_dict()
    metadata = {
        "segzoo": __version__,
        "spec": spec.to_json(),
        "classes": json.dumps(classes),
    }
    save_state_dict(state, path, metadata)
    return Path(path)


# ---------------------------------------------------------------------------- reading


def _keys_digest(keys) -> str:
    """A digest of the tensor names (all that checkpoints written before content_digest carry)."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


def _tensor_crc32(t: torch.Tensor) -> int:
    data = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()  # the bytes, no copy
    return zlib.crc32(data.data)  # releases the GIL: tensors are checked in parallel threads


def content_digest(state: Mapping[str, torch.Tensor], spec: str, classes: str) -> str:
    """The ``content_digest`` of a checkpoint: what a flipped byte anywhere in it changes.

    A sha256 over the spec and class JSON strings and, in name order, every tensor's name,
    dtype, shape and CRC-32 of its bytes. CRC-32 (as in PNG and zip) catches every error burst up
    to 32 bits and any other corruption but one in 4 billion, at about twice the speed of sha256
    over the bytes, so verifying costs well under reading the file. It detects damage, not
    tampering: whoever can edit the file can recompute it.
    """
    names = sorted(state)
    tensors = [state[k] for k in names]
    big = sum(t.numel() * t.element_size() for t in tensors) > 16 * 2**20
    workers = min(8, os.cpu_count() or 1) if big else 1
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            crcs = list(pool.map(_tensor_crc32, tensors))
    else:
        crcs = [_tensor_crc32(t) for t in tensors]
    h = hashlib.sha256()
    h.update(spec.encode() + b"\0" + classes.encode() + b"\0")
    for name, t, crc in zip(names, tensors, crcs):
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0{crc:08x}\0".encode())
    return h.hexdigest()


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
        if n > MAX_HEADER_BYTES and n <= size - 8:
            raise CheckpointError(f"{path} has a {n}-byte header, over the {MAX_HEADER_BYTES} safetensors allows: "
                                  "the file is corrupted")
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
    """Read any safetensors file, with clear errors, as ``(state_dict, metadata)``.

    The digests a segzoo file carries (``content_digest``, or ``keys_sha256`` in older files)
    are verified.
    """
    from safetensors.torch import load_file

    path = Path(path)
    header = _check_file(path)
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own exception types
        raise CheckpointError(f"{path} is corrupted and could not be read: {e}") from None
    meta = header.get("__metadata__") or {}
    if not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise CheckpointError(f"{path} has a corrupted safetensors header (its metadata is not a string table)")
    _verify_digests(path, state, meta)
    return state, dict(meta)


def read_checkpoint(path: PathLike) -> tuple[dict[str, torch.Tensor], ModelSpec, list | None]:
    """Read a segzoo checkpoint as ``(state_dict, spec, classes)``, validated (see the module docstring)."""
    state, meta = read_safetensors(path)
    if "segzoo" not in meta or "spec" not in meta:
        raise CheckpointError(
            f"{path} is a safetensors file but not a segzoo checkpoint (no segzoo spec in its "
            "header); load it with segzoo.build(name, backbone_weights=...) if it holds timm "
            "weights, or convert it with tools/convert.py"
        )
    spec = _parse_spec(path, meta["spec"], state)
    classes = _parse_classes(path, meta.get("classes", "null"), spec.num_labels)
    return state, spec, classes


def _verify_digests(path: PathLike, state: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> None:
    if "content_digest" in meta:
        if meta["content_digest"] != content_digest(state, meta.get("spec", ""), meta.get("classes", "null")):
            raise CheckpointError(
                f"{path} is corrupted: its weights or header differ from the digest stored when it was saved "
                "(a damaged copy or download, or a hand-edited header); copy or download it again")
    elif "keys_sha256" in meta and meta["keys_sha256"] != _keys_digest(state):
        raise CheckpointError(
            f"{path} is corrupted: its tensor names do not match the digest stored when it was saved"
        )


def corrupt_header(path: PathLike, what: str) -> CheckpointError:
    return CheckpointError(f"{path} has a corrupted or edited segzoo header: {what}")


def _parse_spec(path: PathLike, text: str, state: Mapping[str, torch.Tensor]) -> ModelSpec:
    """The header's ModelSpec, with its types and ranges checked against the tensors in the file."""
    try:
        spec = ModelSpec.from_json(text)
    except (ValueError, TypeError, AttributeError) as e:  # bad JSON, unknown or missing fields
        raise corrupt_header(path, f"the spec does not parse ({e})") from None
    if not isinstance(spec.name, str) or not spec.name or not isinstance(spec.task, str):
        raise corrupt_header(path, f"name={spec.name!r} and task={spec.task!r} must be non-empty strings")
    n = spec.num_classes
    largest = max((max(t.shape, default=1) for t in state.values()), default=0)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= largest:
        raise corrupt_header(path, f"num_classes={n!r}, but the class layers of a model with the {len(state)} "
                                    f"tensors in the file have at most {largest} outputs")
    if not isinstance(spec.kwargs, dict):
        raise corrupt_header(path, f"the spec's kwargs are a {type(spec.kwargs).__name__}, not a dict")
    paths = sorted(k for k in spec.kwargs if k in PATH_ARGS and spec.kwargs[k] is not None)
    if paths:
        raise corrupt_header(path, f"its spec names files ({', '.join(f'{k}={spec.kwargs[k]!r}' for k in paths)}); "
                                    "segzoo.load never opens a path written in a checkpoint: remove them")
    for field in ("mean", "std"):
        values = getattr(spec, field)
        ok = len(values) == 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                      for v in values)
        if not ok or (field == "std" and min(values) <= 0):
            raise corrupt_header(path, f"{field}={list(values)!r} is not 3 finite numbers"
                                        + (" > 0" if field == "std" else ""))
    for k in PATH_ARGS:  # a null path opens nothing
        spec.kwargs.pop(k, None)
    return spec


def _parse_classes(path: PathLike, text: str, num_classes: int) -> list[str] | None:
    try:
        classes = json.loads(text)
    except (ValueError, TypeError) as e:
        raise corrupt_header(path, f"the class names do not parse ({e})") from None
    if classes is None:
        return None
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise corrupt_header(path, "the class names are not a list of strings")
    if len(classes) != num_classes:
        raise corrupt_header(path, f"{len(classes)} class names for {num_classes} labels")
    return classes


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


def _kind(dtype: torch.dtype) -> str:
    if dtype.is_floating_point:
        return "float"
    if dtype.is_complex:
        return "complex"
    return "bool" if dtype == torch.bool else "integer"


def _compare(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], class_keys: set[str]):
    """``(missing, unexpected, mismatched, class_mismatched, wrong_kind)`` between a model and a file."""
    # BatchNorm's step counter is optional: FrozenBatchNorm2d (train.freeze_backbone_bn) has none, and
    # BatchNorm's own loading fills in a missing one
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched: list[str] = []
    class_mismatched: list[str] = []
    wrong_kind: list[str] = []
    for k, v in state.items():
        if k not in own:
            continue
        if tuple(v.shape) != tuple(own[k].shape):
            (class_mismatched if k in class_keys else mismatched).append(
                f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}")
        if _kind(v.dtype) != _kind(own[k].dtype):
            wrong_kind.append(f"{k}: {v.dtype} in the file where the model has {own[k].dtype}")
    return missing, unexpected, mismatched, class_mismatched, wrong_kind


def load_weights(
    model: nn.Module, source: PathLike | Mapping[str, torch.Tensor], strict: bool = True
) -> nn.Module:
    """Load a segzoo checkpoint (or a state dict) into a built model.

    Loading is strict: every missing, unexpected or mis-shaped key is named in one error, and
    so is a tensor whose dtype kind differs from the model's (integers where it has floats).
    The exception is the class-dependent layers (``model.class_layers``) when the
    checkpoint was trained with another ``num_classes``: they keep their fresh
    initialisation and a warning names them, which is what fine-tuning needs.
    """
    where = None
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        state, spec, _ = read_checkpoint(source)
        where = source
        own = getattr(model, "spec", None)
        if own is not None and spec.name != own.name:
            raise CheckpointError(
                f"{source} holds a {spec.name!r} model but this model is {own.name!r}; "
                f"build {spec.name!r} (or use segzoo.load) to use these weights"
            )
    return load_state(model, state, where, strict=strict, reinit_class_layers=True)


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], where: PathLike | None, strict: bool,
                reinit_class_layers: bool) -> nn.Module:
    own_state = model.state_dict()
    missing, unexpected, mismatched, reinit, wrong_kind = _compare(own_state, state, set(class_dependent_keys(model)))
    if reinit and not reinit_class_layers:
        mismatched, reinit = mismatched + reinit, []
    problems = []
    if missing and strict:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:20])}")
    if unexpected and strict:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}")
    if mismatched:
        problems.append(f"shape mismatch ({len(mismatched)}): {'; '.join(mismatched[:20])}")
    if wrong_kind:
        problems.append(f"wrong dtype ({len(wrong_kind)}): {'; '.join(wrong_kind[:5])}")
    if problems:
        src = f" from {where}" if where is not None else ""
        raise CheckpointError(f"cannot load weights{src}: " + " | ".join(problems))
    if reinit:
        names = sorted({r.split(":")[0].rsplit(".", 1)[0] for r in reinit})
        warnings.warn(
            "num_classes differs from the checkpoint; re-initialised the class-dependent "
            f"layers {', '.join(names)}",
            stacklevel=3,
        )
    skip = {r.split(":")[0] for r in reinit}
    filtered = {k: v for k, v in state.items() if k not in skip and k in own_state}
    model.load_state_dict(filtered, strict=False)
    return model


def check_header_model(path: PathLike, spec: ModelSpec, state: Mapping[str, torch.Tensor], build) -> None:
    """Build the header's model on the meta device (no memory) and compare it with the file's tensors."""
    try:
        with torch.device("meta"):
            probe = build(spec.name, **{**spec.kwargs, "num_classes": spec.num_classes})
    except (TypeError, ValueError, KeyError) as e:
        raise corrupt_header(path, f"the model it describes cannot be built ({e})") from None
    except Exception:  # a model that cannot be built on the meta device is checked after the real build
        return
    missing, unexpected, mismatched, class_mismatched, wrong_kind = _compare(
        probe.state_dict(), state, set(class_dependent_keys(probe)))
    if class_mismatched and not (missing or unexpected or mismatched or wrong_kind):
        raise corrupt_header(path, f"num_classes={spec.num_classes} disagrees with the class layers in the file "
                                    f"({class_mismatched[0]})")
    mismatched += class_mismatched
    problems = [f"{len(missing)} missing tensors ({', '.join(missing[:3])})" if missing else "",
                f"{len(unexpected)} unexpected tensors ({', '.join(unexpected[:3])})" if unexpected else "",
                f"shapes differ ({'; '.join(mismatched[:3])})" if mismatched else "",
                f"dtypes differ ({'; '.join(wrong_kind[:3])})" if wrong_kind else ""]
    problems = [p for p in problems if p]
    if problems:
        raise CheckpointError(f"{path} does not hold the weights of the model its header describes "
                              f"({spec.name}, {spec.kwargs}): {'; '.join(problems)}")
