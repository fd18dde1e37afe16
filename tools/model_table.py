"""Print the table of registered models with parameter counts, or update it in the README.

    python tools/model_table.py                 # print markdown
    python tools/model_table.py --write README.md
"""

from __future__ import annotations

import argparse
import sys

from segzoo.info import model_table, update_readme


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--write", metavar="README", help="rewrite the table between the markers in this file")
    p.add_argument("--pattern", default="*", help="only models matching this shell pattern")
    args = p.parse_args(argv)
    if args.write:
        changed = update_readme(args.write)
        print(f"{args.write}: {'updated' if changed else 'already up to date'}")
    else:
        print(model_table(args.pattern))
    return 0


if __name__ == "__main__":
    sys.exit(main())
