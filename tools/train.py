"""Train a model from a YAML config (the same as `segzoo train`; see --help).

    python tools/train.py configs/quickstart.yaml [key.sub=value ...] [--out DIR] [--resume | --overwrite]
    torchrun --nproc_per_node 2 tools/train.py configs/quickstart.yaml
"""

import sys

try:
    from segzoo.cli import command
except ImportError:  # a folder named segzoo hiding the package? tools/_shadow.py says so in one line
    import _shadow  # noqa: F401
    raise

main = command("train")
if __name__ == "__main__":
    sys.exit(main())
