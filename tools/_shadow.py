"""Refuse to run when ``segzoo`` is not the package but a folder that merely has its name.

A folder named ``segzoo`` without ``__init__.py`` on ``sys.path`` (a checkout cloned beside a script,
with ``PYTHONPATH=.``, or the current folder of a notebook) is imported as an empty namespace package,
ahead of a package installed with ``pip install -e``: ``segzoo.cli`` is then "not found" and
``segzoo.build`` "has no attribute". Importing this module turns that into one line naming the folder.
The tools import it before ``segzoo.cli``; segzoo's own code cannot do it, since none of it runs then.
"""

import importlib
import sys


def shadowing_message() -> str | None:
    """The error to print when ``import segzoo`` gives a namespace package (a plain folder), else None."""
    try:
        segzoo = importlib.import_module("segzoo")
    except ImportError:  # not there at all: the original error says so
        return None
    if getattr(segzoo, "__file__", None) is not None:  # the real package: segzoo/__init__.py ran
        return None
    folders = [str(p) for p in getattr(segzoo, "__path__", [])]
    return (f"error: `import segzoo` found the folder {' and '.join(folders) or '?'}, which is not the segzoo "
            "package (it has no __init__.py; a checkout of the repository named segzoo is such a folder) and hides "
            "the installed one: run from another folder, rename that folder (e.g. segzoo-src), or install with "
            "`pip install -e . --config-settings editable_mode=compat`")


message = shadowing_message()
if message is not None:
    print(message, file=sys.stderr)
    sys.exit(2)
