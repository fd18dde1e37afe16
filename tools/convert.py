"""Convert weights from another code base into a segzoo checkpoint.

    python tools/convert.py --from torchvision --name fcn_resnet50 fcn.pth weights/fcn.safetensors
    python tools/convert.py --from hrnet-official --name hrnet_w48 hrnet_w48_city.pth out.safetensors
    python tools/convert.py --from centernet-official --name centernet_dla34 ctdet_coco_dla_2x.pth out.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys

import segzoo
from segzoo.checkpoint import read_state_dict
from segzoo.convert import SOURCES, converter


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--from", dest="source", required=True, choices=sorted(SOURCES))
    p.add_argument("--name", required=True, help="segzoo model name, e.g. fcn_resnet50")
    p.add_argument("--classes", default=None,
                   help="class names: a JSON list or a text file with one name a line")
    p.add_argument("src", help="source weights (.pth/.pt read with weights_only=True, or .safetensors)")
    p.add_argument("dst", help="destination segzoo .safetensors checkpoint")
    args = p.parse_args(argv)
    state = read_state_dict(args.src)
    model = converter(args.source)(state, args.name)
    classes = None
    if args.classes:
        if args.classes.lstrip().startswith("["):
            classes = json.loads(args.classes)
        else:
            with open(args.classes) as f:
                classes = [line.strip() for line in f if line.strip()]
    path = segzoo.save(model, args.dst, classes=classes)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {path}: {args.name}, num_classes={model.num_classes}, {n:,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
