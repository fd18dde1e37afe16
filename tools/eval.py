"""Evaluate a checkpoint on a config's dataset (the same as `segzoo eval`; see --help).

    python tools/eval.py runs/quickstart/model.safetensors --data configs/quickstart.yaml
    python tools/eval.py model.safetensors --data configs/quickstart.yaml data.val.num_val=20 --tile 256 --tta flip
"""

import sys

try:
    from segzoo.cli import command
except ImportError:  # a folder named segzoo hiding the package? tools/_shadow.py says so in one line
    import _shadow  # noqa: F401
    raise

main = command("eval")
if __name__ == "__main__":
    sys.exit(main())
