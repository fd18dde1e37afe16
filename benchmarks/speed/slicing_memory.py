"""Peak memory of sliced instance inference on a 12-megapixel image with ~300 detections.

    OMP_NUM_THREADS=1 python -m benchmarks.speed.slicing_memory [--size 3000 4000] [--tile 640]

A Mask R-CNN (``maskrcnn_resnet18_fpn``, random weights, every detection kept: score threshold 0,
``--per-tile`` detections per tile, so that ~300 survive the merge) runs on a ``--size`` image
through ``segzoo.predict(..., tile=, overlap=)`` and ``write_prediction`` (overlay, json). The peak
resident memory of the process (``ru_maxrss``) is printed with the part above what the interpreter,
the model and the image held before, and with what full-size float masks alone would take.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

import torch
import torch.nn.functional as F

import segzoo
from segzoo.infer_files import write_prediction
from segzoo.inference import predict


def _mb(kb: int) -> float:
    return round(kb / 1024, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, nargs=2, default=(3000, 4000), metavar=("H", "W"))
    p.add_argument("--tile", type=int, default=640)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--per-tile", type=int, default=6)
    p.add_argument("--merge", default="nms", choices=["nms", "fuse"])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = segzoo.build("maskrcnn_resnet18_fpn", num_classes=3, box_score_thresh=0.0,
                         box_detections_per_img=args.per_tile).eval()
    h, w = args.size
    image = F.interpolate(torch.rand(1, 3, h // 16, w // 16), size=(h, w), mode="bilinear")[0]  # a smooth texture
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    res = predict(model, image, tile=args.tile, overlap=args.overlap, merge=args.merge, batch_size=1)
    seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as out:
        write_prediction(res, image, out, "big", score_thresh=0.0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    k = len(res["boxes"])
    print(json.dumps({
        "image": f"{h} x {w} ({h * w / 1e6:.1f} MP)", "tile": args.tile, "overlap": args.overlap, "merge": args.merge,
        "detections": k, "mask_crop_bytes": res["masks"].nbytes, "predict_s": round(seconds, 1),
        "peak_rss_mb": _mb(peak), "before_mb": _mb(base), "peak_above_before_mb": _mb(peak - base),
        "full_size_float_masks_would_be_mb": round(k * h * w * 4 / 2**20, 1),
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
