"""Time segzoo models against the closest anchor (the same as `python -m benchmarks.speed`; see --help).

    python -m benchmarks.speed fcn_resnet50 --size 256 --runs 3
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's benchmarks/ package
from benchmarks.speed.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
