"""Convert weights from another code base (the same as `segzoo convert`; see --help).

    python tools/convert.py --from torchvision --name fcn_resnet50 fcn.pth weights/fcn.safetensors
    python tools/convert.py --from hrnet-official --name hrnet_w48 hrnet_w48_city.pth out.safetensors
    python tools/convert.py --from centernet-official --name centernet_dla34 ctdet_coco_dla_2x.pth out.safetensors
"""

import sys

try:
    from segzoo.cli import command
except ImportError:  # a folder named segzoo hiding the package? tools/_shadow.py says so in one line
    import _shadow  # noqa: F401
    raise

main = command("convert")
if __name__ == "__main__":
    sys.exit(main())
