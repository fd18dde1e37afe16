"""``segzoo export MODEL --format onnx|exported-program --out FILE``."""

from __future__ import annotations

import argparse
import os

from segzoo.cli.common import check_writable

HELP = "export to ONNX or torch.export"
DESCRIPTION = """Export a model's inference path to ONNX or a torch.export ExportedProgram.

    segzoo export fcn_resnet50 --format onnx --out fcn.onnx
    segzoo export runs/quickstart/model.safetensors --format exported-program --out model.pt2
    segzoo export maskrcnn_resnet50_fpn --format onnx --out mrcnn.onnx --max-detections 100
    segzoo export hrnet_w18 --format onnx --out hrnet.onnx --dynamic   # any batch, height and width

Detection models export with a fixed maximum number of detections: padded outputs plus a
num_detections count (see segzoo/export.py)."""


def arguments(p: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> int:
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
