"""Check a config's data before training (the same as `segzoo data check`; see --help).

    python tools/check_data.py configs/quickstart.yaml [key.sub=value ...]
"""

import sys

from segzoo.cli import command

main = command("data check")
if __name__ == "__main__":
    sys.exit(main())
