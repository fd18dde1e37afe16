"""``python -m segzoo.cli ARGS``: the ``segzoo`` command."""

import sys

from segzoo.cli import main

sys.exit(main())
