"""``segzoo convert --from SOURCE --name MODEL SRC DST``: another code base's weights as a segzoo checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from segzoo.cli.common import check_writable

HELP = "convert weights from another code base"
DESCRIPTION = """Convert weights from another code base into a segzoo checkpoint.

    segzoo convert --from torchvision --name fcn_resnet50 fcn.pth weights/fcn.safetensors
    segzoo convert --from hrnet-official --name hrnet_w48 hrnet_w48_city.pth out.safetensors
    segzoo convert --from centernet-official --name centernet_dla34 ctdet_coco_dla_2x.pth out.safetensors
    segzoo convert --from huggingface --name segformer_b0 pytorch_model.bin out.safetensors"""


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, metavar="SOURCE",
                   help="torchvision, hrnet-official, centernet-official, huggingface or smp")
    p.add_argument("--name", required=True, help="segzoo model name, e.g. fcn_resnet50")
    p.add_argument("--classes", default=None, help="class names: a JSON list or a text file with one name a line")
    p.add_argument("src", help="source weights (.pth/.pt read with weights_only=True, or .safetensors)")
    p.add_argument("dst", help="destination segzoo .safetensors checkpoint")


def run(args: argparse.Namespace) -> int:
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
