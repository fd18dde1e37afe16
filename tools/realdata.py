"""The accuracy ledger on real labelled images (the same as `python -m benchmarks.ledger`; see --help).

    python -m benchmarks.ledger nuclei_semantic --steps 60 --seeds 0 1 --markdown
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's benchmarks/ package
from benchmarks.ledger.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
