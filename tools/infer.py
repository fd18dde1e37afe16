"""Run a checkpoint on image files or folders (the same as `segzoo infer`; see --help).

    python tools/infer.py runs/quickstart/model.safetensors photo.jpg more/ --out preds/
    python tools/infer.py model.safetensors big_scan.tif --out preds/ --tile 512 --tta flip
"""

import sys

try:
    from segzoo.cli import command
except ImportError:  # a folder named segzoo hiding the package? tools/_shadow.py says so in one line
    import _shadow  # noqa: F401
    raise

main = command("infer")
if __name__ == "__main__":
    sys.exit(main())
