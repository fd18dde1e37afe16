"""Check a config's data before training (classes, mask values, 0/255 masks, empty images, boxes, files).

    python tools/check_data.py configs/quickstart.yaml [key.sub=value ...]

Exits with status 1 when the data has errors (training would refuse it).
"""

import sys

from segzoo.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "check", *sys.argv[1:]]))
