"""Long-run soak: memory stays flat over many training steps (the same as `python -m benchmarks.soak`; see --help).

    python -m benchmarks.soak --steps 500 --max-growth 0.05
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's benchmarks/ package
from benchmarks.soak import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
