"""The README's Python section and docs/api.md's first example run as written (default model)."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def test_python_section_runs_as_written(smollm2_gguf, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], str(README), "exec"), {})
    out = capsys.readouterr().out
    assert "Paris" in out and "<|im_start|>user" in out


def test_api_docs_first_example_runs_as_written(smollm2_gguf, capsys):
    doc = REPO / "docs" / "api.md"
    first = re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)[0]
    exec(compile(first, str(doc), "exec"), {})
    out = capsys.readouterr().out
    assert " Paris" in out and "cancelled" in out
