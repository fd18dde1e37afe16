"""Write the changelog page of the docs from ``git log``: one section per day, one line per commit.

    python tools/changelog.py                 # print it
    python tools/changelog.py --write         # docs/changelog.md

Merge commits are left out (their branches' commits are listed), and so are commits that only
touch the wording of the README or the docs (subjects starting with ``README:`` or ``docs:``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "changelog.md"
SKIP = ("README:", "README ", "docs:", "Merge ")
HEADER = """# Changelog

Generated from the repository's history by `python tools/changelog.py --write`: one section per
day, newest first, one line per commit (long subjects cut; merges and wording-only commits of the
README and the docs left out).
"""


def entries(repo: Path = REPO) -> dict[str, list[str]]:
    """``{date: [subject, ...]}``, newest first, from ``git log``."""
    out = subprocess.run(["git", "-C", str(repo), "log", "--no-merges", "--date=short", "--format=%ad%x09%s"],
                         check=True, capture_output=True, text=True).stdout
    days: dict[str, list[str]] = defaultdict(list)
    for line in out.splitlines():
        date, _, subject = line.partition("\t")
        if subject and not subject.startswith(SKIP):
            days[date].append(subject)
    return dict(days)


def _short(subject: str, limit: int = 150) -> str:
    subject = subject.replace("<", "&lt;")
    return subject if len(subject) <= limit else subject[:limit].rsplit(" ", 1)[0] + " …"


def render(days: dict[str, list[str]]) -> str:
    parts = [HEADER]
    for date, subjects in days.items():
        parts.append(f"\n## {date}\n\n" + "\n".join(f"- {_short(s)}" for s in subjects) + "\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--write", action="store_true", help=f"write {PAGE.relative_to(REPO)}")
    args = p.parse_args(argv)
    text = render(entries())
    if args.write:
        tmp = PAGE.with_name(PAGE.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(PAGE)
        print(f"{PAGE.relative_to(REPO)}: {sum(1 for line in text.splitlines() if line.startswith('- '))} entries")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
