"""``segzoo infer CHECKPOINT IMAGES --out DIR``: predictions drawn and written, optionally as pre-labels."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from segzoo.cli.common import check_writable, device, fast_arguments, fast_option, pixel_limit_argument

HELP = "predict image files and folders"
DESCRIPTION = """Run a checkpoint on image files or folders; draw the predictions.

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
into polygons, scores where the format has a place) as annotations for a labelling tool."""


def arguments(p: argparse.ArgumentParser) -> None:
    pixel_limit_argument(p)
    p.add_argument("checkpoint", help="a segzoo .safetensors checkpoint")
    p.add_argument("images", nargs="+", help="image files and/or folders of images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--recursive", action="store_true", help="also search sub-folders")
    p.add_argument("--tile", type=tile_argument, default="auto",
                   help="tile size for large images: semantic logits tent-blended; detections of the tiles merged "
                        "(--merge), instance masks kept as crops (docs/toolbox.md, sliced inference). Default auto: "
                        "semantic images above about 1536 x 1536 go through 1280-pixel tiles; none: always whole")
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
    fast_arguments(p)
    p.add_argument("--to", default=None, choices=PRELABEL_FORMATS,
                   help="also write the predictions as pre-labels for a labelling tool into OUT/prelabels_FORMAT/ "
                        "(detections scoring >= --score-thresh; see segzoo.data.prelabel)")


def tile_argument(text: str) -> int | str | None:
    """``--tile``: a size in pixels, ``auto`` or ``none``."""
    if text.lower() == "auto":
        return "auto"
    if text.lower() in ("none", "off", "0"):
        return None
    try:
        size = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tile takes a size in pixels, auto or none; got {text!r}") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"--tile must be a positive size (or auto, none); got {size}")
    return size


PRELABEL_FORMATS = ("coco", "labelme", "cvat", "yolo", "mask_folder")  # segzoo.data.convert.TARGETS


def run(args: argparse.Namespace) -> int:
    from segzoo.infer_files import SkippedImageWarning, list_images, predict_files
    from segzoo.registry import load
    from segzoo.tasks import get_task

    out = check_writable(args.out, folder=True)
    if not 0 <= args.alpha <= 1:
        raise ValueError(f"--alpha is the opacity of the drawn masks, in [0, 1]; got {args.alpha}")
    model = load(args.checkpoint, map_location=device(args.device))
    files = list_images(args.images, recursive=args.recursive)
    classes = getattr(model, "classes", None)
    task = get_task(model)
    prelabels = prelabels_for(args, model, out)

    def name(k: int) -> str:
        return str(classes[k]) if classes and 0 <= k < len(classes) else str(k)

    done, skipped = 0, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedImageWarning)  # printed below, one line each
        for fp in predict_files(model, files, out, tile=args.tile, overlap=args.overlap, tta=args.tta,
                                merge=args.merge, score_thresh=args.score_thresh, alpha=args.alpha,
                                keep_thresh=args.keep_thresh, fast=fast_option(args)):
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


def prelabels_for(args: argparse.Namespace, model, out):
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
