"""``python -m benchmarks.ledger``: see :mod:`benchmarks.ledger.main`."""

import sys

from benchmarks.ledger.main import main

sys.exit(main())
