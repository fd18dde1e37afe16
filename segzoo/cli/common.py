"""What several subcommands share: the output-path check, ``--device``, the override and pixel-limit
arguments and ``--fast``/``--no-fast``. Nothing here imports torch or a model: ``segzoo --help`` builds
every subcommand's arguments from these."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

OVERRIDES_HELP = "config overrides such as train.epochs=2 model.backbone=resnet18"


def check_writable(path: str | os.PathLike, folder: bool = False) -> Path:
    """Raise a one-line OSError unless ``path`` (a file or, with ``folder``, a folder to write) can be created;
    creates nothing."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise NotADirectoryError(f"cannot write the output folder {path}: it is a file; give a folder")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise PermissionError(f"cannot write {path}: no write permission")
        return path
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot write {path}: no write permission in {parent}")
    return path


def device(name: str):
    """The torch device of ``--device NAME`` (its error names the flag, not the config key)."""
    from segzoo.engine.device import select_device

    try:
        return select_device(name)
    except ValueError as e:  # its message names the config key; here the flag was given
        raise ValueError(str(e).replace("train.device", "--device")) from None


def overrides_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)


def pixel_limit_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-image-pixels", default=None, metavar="N",
                   help="refuse image files whose header declares more than N pixels, before decoding them "
                        "(default: SEGZOO_MAX_IMAGE_PIXELS or 89478485, Pillow's; 0: no limit)")


def fast_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-fast", action="store_true",
                   help="run the model as loaded (default: an optimized copy with BatchNorm folded, channels_last "
                        "where faster and inference mode, equal outputs within float rounding)")
    p.add_argument("--fast", nargs="?", const="bf16,compile", default=None, metavar="EXTRAS",
                   help="also the optimizations that change numbers or cost time up front: bf16, compile or both "
                        "(default with --fast: bf16,compile)")


def fast_option(args: argparse.Namespace) -> bool | dict:
    """predict()'s fast= from --no-fast / --fast EXTRAS."""
    if args.no_fast:
        if args.fast is not None:
            raise ValueError("--no-fast and --fast contradict each other; give one of them")
        return False
    if args.fast is None:
        return True
    extras = {e.strip() for e in args.fast.split(",") if e.strip()}
    unknown = extras - {"bf16", "compile"}
    if unknown:
        raise ValueError(f"--fast takes bf16, compile or bf16,compile; got {', '.join(sorted(unknown))}")
    return {e: True for e in sorted(extras)}
