"""Print the table of registered models with parameter counts, or refresh the generated tables of the docs.

    python tools/model_table.py                 # print markdown
    python tools/model_table.py --write         # docs/models/index.md (models) and docs/weights.md (weights)
    python tools/model_table.py --write FILE    # the tables between the markers that FILE holds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segzoo.info import MODELS_PAGE, WEIGHTS_PAGE, model_table, update_tables

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--write", metavar="FILE", nargs="*",
                   help=f"rewrite the tables between the markers in these files (default: {MODELS_PAGE} "
                        f"and {WEIGHTS_PAGE})")
    p.add_argument("--pattern", default="*", help="only models matching this shell pattern")
    args = p.parse_args(argv)
    if args.write is not None:
        for path in args.write or [REPO / MODELS_PAGE, REPO / WEIGHTS_PAGE]:
            try:
                changed = update_tables(path)
            except ValueError as e:
                p.error(str(e))
            print(f"{path}: {'updated' if changed else 'already up to date'}")
    else:
        print(model_table(args.pattern))
    return 0


if __name__ == "__main__":
    sys.exit(main())
