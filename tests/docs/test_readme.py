"""The README is a front door and the docs hold the generated tables: both checked to be current."""

import re
from pathlib import Path

import yaml

import segzoo
from segzoo.info import END, MODELS_PAGE, START, WEIGHTS_END, WEIGHTS_PAGE, WEIGHTS_START, model_table, weights_table

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"
# pages other branches write at the same time; the lead adds them to the nav when they land
PAGES_OF_OTHER_BRANCHES: set[str] = set()  # pages of branches not merged yet


def _between(text: str, start: str, end: str) -> str:
    found = re.search(re.escape(start) + r"\n(.*?)\n" + re.escape(end), text, re.S)
    assert found, f"no {start} ... {end} section"
    return found.group(1)


def test_models_table_is_current():
    table = _between((REPO / MODELS_PAGE).read_text(), START, END)
    assert table == model_table(), "run: python tools/model_table.py --write"
    for name in segzoo.list_models():
        assert f"| `{name}` |" in table


def test_weights_table_is_current():
    table = _between((REPO / WEIGHTS_PAGE).read_text(), WEIGHTS_START, WEIGHTS_END)
    assert table == weights_table(), "run: python tools/model_table.py --write"
    for name in segzoo.list_weights():
        model, tag = name.split(".")
        assert f"| `{model}` | `{tag}` |" in table


def test_readme_starts_with_the_two_commands():
    text = README.read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert commands[0].endswith("python tools/train.py configs/quickstart.yaml")
    assert commands[1] == "python -m pytest -q"


def test_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.encode()) < 15_000, f"README.md is {len(text.encode())} bytes: move sections into docs/"
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith(("http://", "https://")):
            assert (REPO / target).exists(), f"README links to {target}, which does not exist"
    for page in ("docs/getting-started.md", "docs/fine-tune/index.md", "docs/api/index.md"):
        assert f"]({page})" in text, f"README does not link to {page}"


def test_the_quickstart_result_is_the_same_in_the_readme_and_the_docs():
    marker = r"<!-- quickstart-result -->(.*?)<!-- /quickstart-result -->"
    readme = re.search(marker, README.read_text(), re.S).group(1)
    assert readme == re.search(marker, (DOCS / "getting-started.md").read_text(), re.S).group(1)


def _nav_pages(nav) -> list[str]:
    out = []
    for item in nav:
        if isinstance(item, str):
            out.append(item)
        else:
            for value in item.values():
                out += [value] if isinstance(value, str) else _nav_pages(value)
    return out


def test_every_docs_page_is_in_the_nav_and_every_nav_page_exists():
    nav = _nav_pages(yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"])
    for page in nav:
        assert (DOCS / page).is_file(), f"mkdocs.yml names {page}, which does not exist"
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    missing = pages - set(nav) - PAGES_OF_OTHER_BRANCHES
    assert not missing, f"docs pages not in mkdocs.yml's nav: {sorted(missing)}"


def test_the_generated_sections_have_their_markers_in_the_docs():
    """python -m benchmarks.speed --write and python -m benchmarks.ledger --write refresh these sections."""
    assert "<!-- benchmark:start -->" in (DOCS / "performance.md").read_text()
    assert "<!-- benchmark:end -->" in (DOCS / "performance.md").read_text()
    assert "<!-- realdata:start -->" in (DOCS / "accuracy.md").read_text()
    assert "<!-- realdata:end -->" in (DOCS / "accuracy.md").read_text()
    for page in DOCS.rglob("*.md"):
        assert "segzoo.benchmark.Options" not in page.read_text(), f"{page}: segzoo.benchmark does not exist"


def test_the_changelog_page_is_rendered_from_the_log(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("changelog_tool", REPO / "tools" / "changelog.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    log = "2026-12-06\tREADME: wording\n2026-12-06\tFix <b> tags\n2026-12-05\t" + "x " * 100 + "\n"
    monkeypatch.setattr(tool.subprocess, "run", lambda *a, **k: type("Done", (), {"stdout": log})())
    text = tool.render(tool.entries())
    assert text.startswith("# Changelog") and "README: wording" not in text and "- Fix &lt;b> tags" in text
    assert text.index("## 2026-12-06") < text.index("## 2026-12-05") and text.rstrip().endswith("…")
    assert (DOCS / "changelog.md").read_text().startswith(tool.HEADER)
