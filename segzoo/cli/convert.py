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
    segzoo convert --from huggingface --name segformer_b0 pytorch_model.bin out.safetensors
    segzoo convert --from huggingface --name mask2former_swin_tiny model.safetensors out.safetensors \
        --model-kwargs num_stuff=53

--model-kwargs passes builder arguments the source file does not carry (values read as YAML:
numbers, true/false, lists), e.g. how many of a panoptic model's classes are stuff."""


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, metavar="SOURCE",
                   help="torchvision, hrnet-official, centernet-official, huggingface or smp")
    p.add_argument("--name", required=True, help="segzoo model name, e.g. fcn_resnet50")
    p.add_argument("--classes", default=None, help="class names: a JSON list or a text file with one name a line")
    p.add_argument("--model-kwargs", nargs="+", default=[], metavar="KEY=VALUE",
                   help="builder arguments the source does not carry, e.g. num_stuff=53 (values read as YAML)")
    p.add_argument("src", help="source weights (.pth/.pt read with weights_only=True, or .safetensors)")
    p.add_argument("dst", help="destination segzoo .safetensors checkpoint")


def model_kwargs(pairs: list[str]) -> dict:
    """``["num_stuff=53", "convention=coco"]`` -> ``{"num_stuff": 53, "convention": "coco"}``; clear errors."""
    import yaml

    out: dict = {}
    for pair in pairs:
        key, eq, text = pair.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise ValueError(f"--model-kwargs takes KEY=VALUE pairs such as num_stuff=53, got {pair!r}")
        if key in out:
            raise ValueError(f"--model-kwargs gives {key!r} twice; give each argument once")
        if key == "num_classes":
            raise ValueError("--model-kwargs num_classes: the class count is read from the source weights; "
                             "convert first, then fine-tune with model.num_classes=N")
        try:
            out[key] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ValueError(f"--model-kwargs {key}: {text!r} is not a YAML value ({e})") from None
        if out[key] is None:
            raise ValueError(f"--model-kwargs {key} has no value; write {key}=VALUE")
    return out


def run(args: argparse.Namespace) -> int:
    import json

    from segzoo.checkpoint import read_state_dict, save
    from segzoo.convert import converter

    check_writable(args.dst)
    kwargs = model_kwargs(args.model_kwargs)
    classes = None
    if args.classes:
        if args.classes.lstrip().startswith("["):
            try:
                classes = json.loads(args.classes)
            except json.JSONDecodeError as e:
                raise ValueError(f"--classes is not a JSON list: {e}") from None
        else:
            classes = [line.strip() for line in Path(args.classes).read_text().splitlines() if line.strip()]
    model = converter(args.source)(read_state_dict(args.src), args.name, **kwargs)
    path = save(model, args.dst, classes=classes)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {path}: {args.name}, num_classes={model.num_classes}, {n:,} parameters")
    return 0
