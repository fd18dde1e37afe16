import re
from pathlib import Path

import segzoo
from segzoo.info import END, START, WEIGHTS_END, WEIGHTS_START, model_table, weights_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_model_table_is_current():
    text = README.read_text()
    table = re.search(re.escape(START) + r"\n(.*?)\n" + re.escape(END), text, re.S).group(1)
    assert table == model_table(), "run: python tools/model_table.py --write README.md"
    for name in segzoo.list_models():
        assert f"| `{name}` |" in table


def test_readme_starts_with_the_two_commands():
    text = README.read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert commands[0].endswith("python tools/train.py configs/quickstart.yaml")
    assert commands[1] == "python -m pytest -q"


def test_readme_weights_table_is_current():
    text = README.read_text()
    table = re.search(re.escape(WEIGHTS_START) + r"\n(.*?)\n" + re.escape(WEIGHTS_END), text, re.S).group(1)
    assert table == weights_table(), "run: python tools/model_table.py --write README.md"
    for name in segzoo.list_weights():
        model, tag = name.split(".")
        assert f"| `{model}` | `{tag}` |" in table
