"""Export a model to ONNX or torch.export (the same as `segzoo export`; see --help).

    python tools/export.py fcn_resnet50 --format onnx --out fcn.onnx
    python tools/export.py runs/quickstart/model.safetensors --format exported-program --out model.pt2
    python tools/export.py hrnet_w18 --format onnx --out hrnet.onnx --dynamic   # any batch, height and width
"""

import sys

try:
    from segzoo.cli import command
except ImportError:  # a folder named segzoo hiding the package? tools/_shadow.py says so in one line
    import _shadow  # noqa: F401
    raise

main = command("export")
if __name__ == "__main__":
    sys.exit(main())
