"""The plane cache (qllama/plane_cache.py): a second load maps the planes the first one wrote, and
computes exactly what a load without the cache computes; a changed source, a damaged entry or one of
another layout is never read."""
import json
import os

import numpy as np
import pytest

import qllama
from kquant_gguf import write_model
from qllama.linear import QuantLinear

IDS = np.arange(5, 17)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QLLAMA_PLANE_CACHE", "1")
    monkeypatch.setenv("QLLAMA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "planes"


def backing_file(model) -> set[str]:
    """The files the quantized matrices' planes are mapped from (empty: anonymous memory)."""
    files = set()
    for w in model.weights.values():
        if isinstance(w, QuantLinear):
            for plane in (p for p in w.planes if p.size):     # not the placeholders of absent planes
                base = plane
                while base is not None and not isinstance(base, np.memmap):
                    base = base.base
                files.add(None if base is None else str(base.filename))
    return files


def uncached_logits(path, monkeypatch):
    with monkeypatch.context() as m:
        m.setenv("QLLAMA_PLANE_CACHE", "0")
        model = qllama.load(path)
        assert backing_file(model) == {None}
        return model.logits(IDS)


def entries(cache):
    return sorted(p.suffix for p in cache.iterdir())


def test_second_load_maps_the_planes_the_first_wrote(tmp_path, cache, monkeypatch):
    path = tmp_path / "model.gguf"
    write_model(path)
    expected = uncached_logits(path, monkeypatch)
    first = qllama.load(path)
    assert entries(cache) == [".json", ".planes"]
    data = next(cache.glob("*.planes"))
    assert all(f is not None and f.startswith(str(data)) for f in backing_file(first))   # written in place
    assert np.array_equal(first.logits(IDS), expected)
    second = qllama.load(path)
    assert backing_file(second) == {str(data)}
    assert np.array_equal(second.logits(IDS), expected)
    assert all(not p.name.endswith(".tmp") for p in cache.iterdir())


def test_a_changed_source_gets_a_new_entry_and_the_old_one_goes(tmp_path, cache, monkeypatch):
    path = tmp_path / "model.gguf"
    write_model(path, seed=1)
    qllama.load(path)
    old, stat = set(cache.iterdir()), path.stat()
    write_model(path, seed=2)            # same size, name and inode, other weights
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))   # and the same mtime: the file's ends differ
    model = qllama.load(path)
    assert np.array_equal(model.logits(IDS), uncached_logits(path, monkeypatch))
    assert not old & set(cache.iterdir()) and entries(cache) == [".json", ".planes"]


def test_a_mapped_load_does_not_requantize_again(tmp_path, cache, monkeypatch):
    """Types without kernels are requantized once, into the entry; a load from the entry skips it."""
    import qllama.model
    path = tmp_path / "iq.gguf"
    write_model(path, {"attn_q": "IQ4_NL", "ffn_up": "IQ3_XXS", "ffn_gate": "Q5_0"})
    expected = uncached_logits(path, monkeypatch)
    qllama.load(path)

    def refuse(*args):
        raise AssertionError("requantized again")
    monkeypatch.setattr(qllama.model, "requantize", refuse)
    model = qllama.load(path)
    assert backing_file(model) == {str(next(cache.glob("*.planes")))}
    assert np.array_equal(model.logits(IDS), expected)


@pytest.mark.parametrize("damage", ["truncated", "other layout", "not json"])
def test_a_damaged_entry_is_repacked_instead(tmp_path, cache, monkeypatch, damage):
    path = tmp_path / "model.gguf"
    write_model(path)
    expected = uncached_logits(path, monkeypatch)
    qllama.load(path)
    data, index = next(cache.glob("*.planes")), next(cache.glob("*.json"))
    if damage == "truncated":
        os.truncate(data, data.stat().st_size // 2)
    elif damage == "other layout":
        described = json.loads(index.read_text())
        described["arrays"][3][1] += 8
        index.write_text(json.dumps(described))
    else:
        index.write_text("{")
    model = qllama.load(path)
    assert np.array_equal(model.logits(IDS), expected)
    assert backing_file(model) != {str(data)}                  # repacked, into a new entry
    assert np.array_equal(qllama.load(path).logits(IDS), expected)


def test_a_refused_file_leaves_no_entry(tmp_path, cache):
    path = tmp_path / "nan.gguf"
    write_model(path)
    data = bytearray(path.read_bytes())
    from gguf import GGUFReader
    t = next(t for t in GGUFReader(path).tensors if t.name == "blk.0.attn_q.weight")
    data[t.data_offset:t.data_offset + 2] = np.array([np.nan], np.float16).tobytes()   # a Q4_K block's d
    path.write_bytes(bytes(data))
    with pytest.raises(qllama.QllamaError, match="NaN"):
        qllama.load(path)
    assert not cache.exists() or not any(cache.iterdir())


def test_a_killed_load_leaves_nothing_behind(tmp_path, cache):
    """An unfinished entry (no index; its writer's process gone) is removed by the next finished one."""
    cache.mkdir(parents=True)
    dead = cache / f"0123.planes.{2 ** 22 + 12345}.tmp"     # above Linux's default pid_max
    dead.write_bytes(b"x" * 100)
    path = tmp_path / "model.gguf"
    write_model(path)
    qllama.load(path)
    assert not dead.exists() and entries(cache) == [".json", ".planes"]


def test_off_switch(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("QLLAMA_PLANE_CACHE", "0")
    path = tmp_path / "model.gguf"
    write_model(path)
    qllama.load(path)
    assert not cache.exists() or not any(cache.iterdir())
