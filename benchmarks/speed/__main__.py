"""``python -m benchmarks.speed``: see :mod:`benchmarks.speed.main`."""

import sys

from benchmarks.speed.main import main

sys.exit(main())
