"""Export a model's inference path to ONNX or a torch.export ExportedProgram.

    python tools/export.py fcn_resnet50 --format onnx --out fcn.onnx
    python tools/export.py runs/quickstart/model.safetensors --format exported-program --out model.pt2
    python tools/export.py maskrcnn_resnet50_fpn --format onnx --out mrcnn.onnx --max-detections 100

Detection models export with a fixed maximum number of detections: padded outputs plus a
``num_detections`` count (see segzoo/export.py).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

import segzoo
from segzoo import export as ex


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model", help="a registered model name or a segzoo .safetensors checkpoint")
    p.add_argument("--format", choices=("onnx", "exported-program"), default="onnx")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--num-classes", type=int, default=None, help="for a model name (default: the model's)")
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--max-detections", type=int, default=100, help="K for detection models")
    p.add_argument("--fuse", action="store_true", help="fold BatchNorm into convolutions first")
    p.add_argument("--check", action="store_true", help="run the export and compare with eager outputs")
    args = p.parse_args(argv)
    if os.path.exists(args.model) or args.model.endswith(".safetensors"):
        model = segzoo.load(args.model)
    else:
        kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
        model = segzoo.build(args.model, **kwargs).eval()
    x = ex.example_input(args.height, args.width)
    if args.fuse:
        model = segzoo.fuse(model, x)
    if args.format == "onnx":
        ex.export_onnx(model, args.out, x, max_detections=args.max_detections)
        outs = ex.run_onnx(args.out, x) if args.check else None
    else:
        program = ex.export_program(model, x, max_detections=args.max_detections)
        torch.export.save(program, args.out)
        if args.check:
            o = program.module()(x)
            outs = list(o) if isinstance(o, (list, tuple)) else [o]
        else:
            outs = None
    print(f"wrote {args.out} ({args.format}, input 1x3x{args.height}x{args.width})")
    if outs is not None:
        ref = ex.eager_outputs(model, x, args.max_detections)
        diff = max(float((a.detach().float() - b.float()).abs().max()) for a, b in zip(outs, ref) if a.numel())
        print(f"max abs difference from eager: {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
