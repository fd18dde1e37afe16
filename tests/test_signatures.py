"""Keywords, not positions: no function of the model floors takes more than a few positional parameters.

Read from the source with ``ast``. Data (tensors, channel counts, the class count, a backbone
name) may come by position; settings are keyword-only (``*,``) so a call says what each number is.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("segzoo/detection", "segzoo/models", "segzoo/layers", "segzoo/setpred", "segzoo/backbones")
MAX_POSITIONAL = 6
# function -> why it may take more
ALLOWED = {
    "segzoo/models/hrnet.py:_official": "builds one row of the weights table; every row is a call of the same shape",
}


def positional_counts() -> dict[str, int]:
    """``"path:function"`` -> its positional parameters (``self``/``cls`` not counted), largest per name."""
    out: dict[str, int] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names = [a.arg for a in node.args.posonlyargs + node.args.args]
                    if names[:1] in (["self"], ["cls"]):
                        names = names[1:]
                    where = f"{path.relative_to(ROOT)}:{node.name}"
                    out[where] = max(out.get(where, 0), len(names))
    return out


def test_settings_are_keyword_only():
    counts = positional_counts()
    assert len(counts) > 300  # the walk found the packages
    over = {k: n for k, n in counts.items() if n > MAX_POSITIONAL and k not in ALLOWED}
    assert not over, f"make the settings keyword-only (`*,`) in: {over}"
    assert all(k in counts for k in ALLOWED), "an allowed function is gone: drop it from ALLOWED"
