"""No unsafe deserialisation or code execution anywhere in the package or the tools."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "segzoo").rglob("*.py")) + sorted((ROOT / "tools").glob("*.py"))


def safe_loader_classes(tree) -> set[str]:
    """Classes defined in the file that derive from yaml's SafeLoader."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for b in node.bases:
                base = b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "")
                if base in ("SafeLoader", "CSafeLoader"):
                    names.add(node.name)
    return names


def calls(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if isinstance(f, ast.Name):
                owner = ""  # a bare call such as eval(...)
            elif isinstance(f.value, ast.Name) if isinstance(f, ast.Attribute) else False:
                owner = f.value.id
            else:
                owner = "<expr>"
            yield node, owner, name


def test_sources_found():
    assert len(SOURCES) > 20


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unsafe_calls(path):
    problems = []
    for node, owner, name in calls(path):
        where = f"{path.name}:{node.lineno}"
        if owner in ("pickle", "cPickle", "dill", "marshal", "shelve") and name in ("load", "loads", "open"):
            problems.append(f"{where}: {owner}.{name}")
        if owner == "yaml" and name in ("load", "unsafe_load", "full_load", "load_all"):
            loader = {k.arg: k.value for k in node.keywords}.get("Loader")
            loader_name = getattr(loader, "attr", None) or getattr(loader, "id", "")
            safe = safe_loader_classes(ast.parse(path.read_text())) | {"SafeLoader", "CSafeLoader"}
            if not (name == "load" and loader_name in safe):
                problems.append(f"{where}: yaml.{name} (use yaml.safe_load or a SafeLoader subclass)")
        if owner == "" and name in ("eval", "exec"):
            problems.append(f"{where}: {name}()")
        if owner == "torch" and name == "load":
            kw = {k.arg: k.value for k in node.keywords}
            v = kw.get("weights_only")
            if not (isinstance(v, ast.Constant) and v.value is True):
                problems.append(f"{where}: torch.load without weights_only=True")
    assert not problems, "unsafe calls:\n" + "\n".join(problems)


def test_checker_catches_unsafe_code(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch, yaml, pickle\ntorch.load('x')\nyaml.load(s)\npickle.loads(b)\neval('1')\n")
    found = [(o, n) for _, o, n in calls(bad)]
    assert ("torch", "load") in found and ("yaml", "load") in found and ("", "eval") in found
    with pytest.raises(AssertionError, match="torch.load without weights_only"):
        test_no_unsafe_calls(bad)
