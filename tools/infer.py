"""Run a checkpoint on image files or folders and write pictures of the predictions.

    python tools/infer.py runs/shapes_fcn/model.safetensors photo.jpg more/ --out preds/
    python tools/infer.py model.safetensors big_scan.tif --out preds/ --tile 512 --tta flip

Semantic models: NAME_overlay.png (mask over the image, with a legend) and NAME_mask.png
(palettised PNG: pixel values are the labels). Detection / instance models:
NAME_overlay.png, NAME.json (boxes xyxy, scores, labels, class names) and, with masks,
NAME_masks.png (0 background, k + 1 for the k-th detection of the json).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import segzoo
from segzoo.predict import list_images, load_image, model_task, predict, write_prediction


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint", help="a segzoo .safetensors checkpoint")
    p.add_argument("images", nargs="+", help="image files and/or folders of images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--recursive", action="store_true", help="also search sub-folders")
    p.add_argument("--tile", type=int, default=None, help="sliding-window tile size for large images")
    p.add_argument("--overlap", type=float, default=0.25, help="tile overlap fraction")
    p.add_argument("--tta", default=None, choices=["flip", "ms", "ms_flip"], help="semantic test-time augmentation")
    p.add_argument("--score-thresh", type=float, default=0.5, help="detections kept in the pictures and json")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the drawn masks")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    args = p.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model = segzoo.load(args.checkpoint, map_location="cpu").to(device).eval()
    task = model_task(model)
    files = list_images(args.images, recursive=args.recursive)
    out = Path(args.out)
    stems: dict[str, int] = {}
    for path in files:
        stem = Path(path).stem
        if stem in stems:  # same name in two folders: keep both
            stems[stem] += 1
            stem = f"{stem}_{stems[stem]}"
        else:
            stems[stem] = 0
        image = load_image(path)
        result = predict(model, image, tile=args.tile, overlap=args.overlap, tta=args.tta)
        written = write_prediction(result, image, out, stem, getattr(model, "classes", None),
                                   score_thresh=args.score_thresh, alpha=args.alpha)
        if task == "semantic":
            found = sorted(int(k) for k in torch.unique(result["mask"]))
            print(f"{path}: labels {found} -> {', '.join(Path(w).name for w in written)}")
        else:
            n = int((result["scores"] >= args.score_thresh).sum())
            print(f"{path}: {n} detections >= {args.score_thresh} -> {', '.join(Path(w).name for w in written)}")
    print(f"wrote {len(files)} predictions to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (FileNotFoundError, ValueError) as e:  # user errors (ConfigError is a ValueError): no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
