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
CHECKED_BY_REAL_CLI = ["gguf-tensor-offset-misaligned", "qf-scales-1d", "opt-ctx-0", "control-good-gguf"]
# a good file through the same runner: shows the runner reports success and output when there is some
CONTROL = {"name": "control-good-gguf", "argv": ["info", str(STORIES / "stories260K.gguf")]}


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
    (root / "cases" / "control").mkdir()
    jobs.append({**CONTROL, "dir": str(root / "cases" / "control"), "timeout": TIMEOUT_S})
    (root / "jobs.json").write_text(json.dumps(jobs))
    subprocess.run([sys.executable, str(RUNNER), str(root / "jobs.json"), str(root / "results.json")], check=True,
                   timeout=900, cwd=Path(__file__).parent)
    results = json.loads((root / "results.json").read_text())
    return {"root": root, "results": results, "before": before, "models_before": models_before,
            "folders": {**{case.name: root / "cases" / str(i) for i, case in enumerate(CASES)},
                        CONTROL["name"]: root / "cases" / "control"}}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_cleanly(corpus, case):
    r = corpus["results"][case.name]
    folder = corpus["folders"][case.name]
    assert not r["timed_out"], f"{case.name}: still running after {TIMEOUT_S} s"
    lines = r["stderr"].strip().splitlines()
    assert "Traceback" not in r["stderr"], r["stderr"]
    assert r["code"] is not None and not r["signal"], r
    if case.must_fail or r["code"] != 0:
        assert r["code"] != 0, (r["stderr"], r["stdout"][-300:])
        assert len(lines) == 1 and lines[0].startswith("error: "), r["stderr"]
        for fragment in case.expect:
            assert fragment in lines[0], lines[0]
    inputs = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert r["growth_kb"] * 1024 <= inputs + RSS_ALLOWANCE, f"peak RSS grew {r['growth_kb'] // 1024} MB"
    assert snapshot(folder) == corpus["before"][case.name], "the case's files changed or a file was written"


def test_the_runner_reports_a_good_file_as_success(corpus):
    r = corpus["results"][CONTROL["name"]]
    assert (r["code"], r["stderr"]) == (0, "") and "format:      gguf" in r["stdout"]
    assert 0 < r["growth_kb"] < RSS_ALLOWANCE // 1024


def test_the_corpus_edits_start_from_a_faithful_copy():
    """gguf_bytes writes the real file back byte for byte, so each GGUF case differs from it only as meant."""
    import gguf_bytes
    path = STORIES / "stories260K.gguf"
    assert gguf_bytes.to_bytes(gguf_bytes.read(path)) == path.read_bytes()


def test_the_model_files_the_corpus_reads_are_unchanged(corpus):
    assert snapshot(STORIES) == corpus["models_before"]


@pytest.mark.parametrize("name", CHECKED_BY_REAL_CLI)
def test_the_real_command_line_agrees_with_the_forked_runner(corpus, name):
    argv = CONTROL["argv"] if name == CONTROL["name"] else next(c for c in CASES if c.name == name).argv
    real = qllama(*argv, cwd=corpus["folders"][name], timeout=120)
    forked = corpus["results"][name]
    assert (real.returncode, real.stderr, real.stdout) == (forked["code"], forked["stderr"], forked["stdout"])
