"""Check a config's data before training (the same as `segzoo data check`; see --help).

    python tools/check_data.py configs/quickstart.yaml [key.sub=value ...]
"""

import sys

try:
    from segzoo.cli import command
except ImportError:  # a folder named segzoo hiding the package? tools/_shadow.py says so in one line
    import _shadow  # noqa: F401
    raise

main = command("data check")
if __name__ == "__main__":
    sys.exit(main())
