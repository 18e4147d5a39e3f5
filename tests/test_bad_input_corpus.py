"""The bad-input corpus (tests/bad_inputs): every malformed file, config and option value gets a
non-zero exit, one error line naming the file or option, no traceback, no hang, bounded memory, and
leaves every file as it was (nothing changed, nothing written).

The corpus runs in one runner process that imports qllama once and forks a child per case
(tests/fork_runner.py); a few cases also run through the real `python -m qllama.cli` to show that
the forked runs and the real command line agree."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bad_inputs import Sources, all_cases
from bad_inputs.sources import STORIES
from cli_helpers import qllama

CASES = all_cases()
TIMEOUT_S = 30
RSS_ALLOWANCE = 300 << 20          # bytes a child may grow beyond the size of its inputs
RUNNER = Path(__file__).parent / "fork_runner.py"
CHECKED_BY_REAL_CLI = ["gguf-tensor-offset-misaligned", "st-entry-shape-overflow-int64", "cfg-num_attention_heads-zero",
                       "qf-scales-1d", "opt-temperature-nan"]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    models_before = snapshot(STORIES)
    good = root / "q8.safetensors"
    assert qllama("quantize", STORIES / "stories260K.bin", good, "--format", "q8").returncode == 0
    sources, jobs, before = Sources(qllama_file=good), [], {}
    for i, case in enumerate(CASES):
        folder = root / "cases" / str(i)
        case.write(folder, sources)
        before[case.name] = snapshot(folder)
        jobs.append({"name": case.name, "dir": str(folder), "argv": case.argv, "timeout": TIMEOUT_S})
    (root / "jobs.json").write_text(json.dumps(jobs))
    subprocess.run([sys.executable, str(RUNNER), str(root / "jobs.json"), str(root / "results.json")], check=True,
                   timeout=900, cwd=Path(__file__).parent)
    results = json.loads((root / "results.json").read_text())
    return {"root": root, "results": results, "before": before, "models_before": models_before,
            "folders": {case.name: root / "cases" / str(i) for i, case in enumerate(CASES)}}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_cleanly(corpus, case):
    r = corpus["results"][case.name]
    folder = corpus["folders"][case.name]
    assert not r["timed_out"], f"{case.name}: still running after {TIMEOUT_S} s"
    lines = r["stderr"].strip().splitlines()
    assert "Traceback" not in r["stderr"], r["stderr"]
    assert r["code"] not in (0, None) and not r["signal"], (r["code"], r["stderr"], r["stdout"][-300:])
    assert len(lines) == 1 and lines[0].startswith("error: "), r["stderr"]
    for fragment in case.expect:
        assert fragment in lines[0], lines[0]
    inputs = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert r["growth_kb"] * 1024 <= inputs + RSS_ALLOWANCE, f"peak RSS grew {r['growth_kb'] // 1024} MB"
    assert snapshot(folder) == corpus["before"][case.name], "the case's files changed or a file was written"


def test_the_model_files_the_corpus_reads_are_unchanged(corpus):
    assert snapshot(STORIES) == corpus["models_before"]


@pytest.mark.parametrize("name", CHECKED_BY_REAL_CLI)
def test_the_real_command_line_agrees_with_the_forked_runner(corpus, name):
    case = next(c for c in CASES if c.name == name)
    real = qllama(*case.argv, cwd=corpus["folders"][name], timeout=120)
    forked = corpus["results"][name]
    assert (real.returncode, real.stderr) == (forked["code"], forked["stderr"])
