"""The accuracy ledger on real labelled images (the same as `segzoo realdata`; see --help).

    python tools/realdata.py --list
    python tools/realdata.py nuclei_semantic --steps 60 --seeds 0 1 --markdown
"""

import sys

from segzoo.cli import command

main = command("realdata")
if __name__ == "__main__":
    sys.exit(main())
