"""Kernels prepared at load (kernels/warmup.py): the compile message on a cold cache only, nothing
compiled after the load, the same logits; the cache check; the worker processes; the progress lines.

One cold compile per session: stories260K quantized to q4 (matmul, activation quantization, the
embedding's dequantize, attention, the elementwise kernels), in a subprocess with its own empty
cache folder, then a second (warm) process on that folder."""
import functools
import io
import json
import os
import pickle
import re
import subprocess
import sys

import numba
import numpy as np
import pytest

import qllama
from paths import MODELS
from qllama.kernels import warmup
from qllama.kernels.jit import is_cached, kernel
from qllama.progress import Progress, show_count
from test_kernels import LOGITS_RELATIVE_RMS, relative_rms

PROMPT = "Once upon a time there was a big dog"
CHILD = """
import json, sys
import numpy as np
import qllama
from numba.core import event
from qllama.kernels import warmup
from qllama.kernels.warmup import prepare_kernels
warmup._workers = lambda n_groups: 0        # every kernel compiled here (see cold_then_warm)
model = qllama.load(sys.argv[1])
prepare_kernels(model)              # a no-op when the load already did it
with event.install_recorder("numba:compile") as compiles:
    logits = model.logits(model.tokenizer.encode(sys.argv[3]))          # a prompt: the threaded kernels
    tokens = list(model.generate("Once upon a time", max_tokens=8, temperature=0))   # decode steps
np.save(sys.argv[2], logits)
print(json.dumps({"compiled": sum(e.is_start for _, e in compiles.buffer), "tokens": tokens}))
"""
LINE = re.compile(r"compiling kernels for this CPU \(first run only\)\.\.\. \d+ kernels in [\d.]+ s")


@pytest.fixture(scope="session")
def q4_stories(tmp_path_factory):
    from qllama.quantize.convert import convert
    out = tmp_path_factory.mktemp("q4") / "stories260K-q4.safetensors"
    convert(MODELS / "stories260K" / "stories260K.bin", out, format="q4")
    return out


@pytest.fixture(scope="session")
def cold_then_warm(tmp_path_factory, q4_stories):
    """Two processes on one new cache folder: (stderr, {"compiled", "tokens"}, logits) for each.
    The cold one compiles every kernel itself, without worker processes, and the warm one loads them
    all from the cache, so equal logits mean no kernel computes differently once cached. (With
    workers, which kernels a process compiles itself depends on timing: a fast-math sum that
    compiled and cached code added in different orders failed one run in a few.)"""
    folder = tmp_path_factory.mktemp("cache")
    env = {**os.environ, "QLLAMA_CACHE": str(folder)}
    runs = []
    for state in ("cold", "warm"):
        logits = folder.parent / f"{state}-logits.npy"
        result = subprocess.run([sys.executable, "-c", CHILD, str(q4_stories), str(logits), PROMPT], env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        runs.append((result.stderr, json.loads(result.stdout), np.load(logits)))
    return runs


def test_a_cold_cache_says_it_compiles_and_a_warm_one_says_nothing(cold_then_warm):
    (cold, _, _), (warm, _, _) = cold_then_warm
    assert any(LINE.fullmatch(line) for line in cold.splitlines()), cold
    assert "\r" not in cold             # stderr is a pipe here: one line, no counter
    assert "compiling" not in warm, warm


def test_nothing_compiles_after_the_load(cold_then_warm):
    """Prepared means every signature the forward pass uses: prefill (threads) and decode. (The cold
    run is the test: in the warm one a kernel left out would load from the cache, no compile event.)"""
    assert [run["compiled"] for _, run, _ in cold_then_warm] == [0, 0]


def test_prepared_kernels_give_the_reference_logits(cold_then_warm, q4_stories):
    (_, cold, cold_logits), (_, warm, warm_logits) = cold_then_warm
    assert np.array_equal(cold_logits, warm_logits) and cold["tokens"] == warm["tokens"]
    ref = qllama.load(q4_stories, reference=True)
    assert relative_rms(cold_logits, ref.logits(ref.tokenizer.encode(PROMPT))) < LOGITS_RELATIVE_RMS
    assert cold["tokens"] == list(ref.generate("Once upon a time", max_tokens=8, temperature=0))


@pytest.mark.parametrize("fmt_name", ["q8_g32", "q6_k"])
def test_the_plan_has_the_types_the_wrappers_pass(fmt_name):
    """Planes in row order (8-bit on the avx2 path), which this test's CPU may not pick itself, or a
    k-quant (a decode and a prefill kernel, their own activation quantizer), from a read-only source
    (a memory-mapped file): the plan must name the types the wrappers pass."""
    from types import SimpleNamespace
    from qllama.linear import QuantLinear
    from qllama.kernels.vector_ir import AVX2
    from qllama.quantize.formats import FORMATS
    from qllama.quantize.tensor import quantize_matrix
    fmt = FORMATS[fmt_name]
    q = quantize_matrix(np.random.default_rng(0).standard_normal((40, 256)).astype(np.float32), fmt)
    for plane in q.planes.values():
        plane.flags.writeable = False
    lin = QuantLinear(q, path=AVX2)
    assert lin.interleaved == (fmt.kind == "k-quant")
    model = SimpleNamespace(weights={"model.embed_tokens.weight": lin, "model.norm.weight": np.ones(256, np.float32)},
                            kv_dtype=np.float16, cos=np.ones((4, 8), np.float32), sin=np.ones((4, 8), np.float32))
    groups = [g for g in warmup.kernel_plan(model) if g[0][0][0] == f"qllama.kernels.{fmt.kernel}"]
    for group in groups:
        warmup._compile(group)
    kernels = {warmup.resolve(ref) for group in groups for ref, _ in group}
    assert {lin.matmul.decode, lin.matmul.prefill} <= kernels if fmt.kind == "k-quant" else lin.matmul in kernels
    prepared = {k: len(k.overloads) for k in kernels}
    lin(np.ones((1, 256), np.float32))   # a call with types not prepared would add an overload
    lin(np.ones((9, 256), np.float32))   # (compiled, or loaded from the disk cache)
    lin.rows([0, 39])
    assert {k: len(k.overloads) for k in kernels} == prepared


@functools.cache
def toy_kernel(offset: int, folder: str):
    """A small kernel made on demand, as matmul_kernel makes one per format (a closure); the cache
    folder is $QLLAMA_CACHE when it is made (folder keeps one test's kernels from another's)."""
    @kernel()
    def toy(x):
        return x + offset
    return toy


def test_the_cache_check_agrees_with_numba(tmp_path, monkeypatch):
    monkeypatch.setenv("QLLAMA_CACHE", str(tmp_path))
    sig = (numba.int64,)
    one, two = toy_kernel(1, str(tmp_path)), toy_kernel(2, str(tmp_path))
    assert not is_cached(one, sig)
    one.compile(sig)
    assert is_cached(one, sig) and not is_cached(one, (numba.float64,))
    assert not is_cached(two, sig)      # another closure of the same def: its own cache index
    two.compile(sig)
    assert len(list(tmp_path.rglob("*.nbi"))) == 2
    fresh = toy_kernel.__wrapped__(1, str(tmp_path))    # as a new process would make it
    assert is_cached(fresh, sig) and fresh(1) == 2 and fresh.stats.cache_hits and not fresh.stats.cache_misses


def test_prepare_reports_only_when_it_compiles(tmp_path, monkeypatch):
    monkeypatch.setenv("QLLAMA_CACHE", str(tmp_path))
    opened = []

    def progress(label, total):
        opened.append((label, total))
        return Progress(label, total, stream=io.StringIO())
    plan = [[(("test_warmup", "toy_kernel", (3, str(tmp_path))), (numba.int64,))]]
    monkeypatch.setattr(warmup, "kernel_plan", lambda model: plan)
    warmup.prepare_kernels(None, progress=progress, workers=0)
    warmup.prepare_kernels(None, progress=progress, workers=0)
    assert opened == [(warmup.MESSAGE, 1)]
    # should the check miss something, Numba's compile event still brings up the message
    plan[0] = [(("test_warmup", "toy_kernel", (4, str(tmp_path))), (numba.int64,))]
    monkeypatch.setattr(warmup, "is_cached", lambda dispatcher, sig: True)
    warmup.prepare_kernels(None, progress=progress, workers=0)
    assert opened == [(warmup.MESSAGE, 1), (warmup.MESSAGE, 0)]


def test_a_worker_compiles_what_it_is_sent_and_answers(tmp_path):
    env = {**os.environ, "QLLAMA_CACHE": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", warmup.WORKER, *sys.path], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env)
    answers = []
    for group in ([(("test_warmup", "toy_kernel", (5, str(tmp_path))), (numba.int64,))],
                  [(("qllama.kernels.elementwise", "no_such_kernel", None), ())]):
        pickle.dump(group, proc.stdin)
        proc.stdin.flush()
        answers.append(pickle.load(proc.stdout))
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0 and answers == [True, False]
    assert len(list(tmp_path.rglob("*.nbi"))) == 1     # written to the cache the parent reads


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_on_a_terminal_counts_in_place():
    out = Terminal()
    with Progress("compiling...", 3, stream=out) as p:
        for i in (1, 2, 3):
            p.update(i)
    assert out.getvalue() == "".join(f"\rcompiling... {i}/3" for i in range(4)) + "\rcompiling... 3/3\n"
    out = Terminal()
    with Progress("extracting x:", 200, stream=out, percent=True) as p:
        p.update(1)                     # 0%: not redrawn
        p.update(100)
    assert out.getvalue() == "\rextracting x:   0%\rextracting x:  50%\rextracting x:  50%\n"
    out = Terminal()
    show_count("window", 1, 2, out)
    show_count("window", 2, 2, out)
    assert out.getvalue() == "\rwindow 1/2\rwindow 2/2\n"


def test_progress_in_a_log_is_one_line_per_stage():
    out = io.StringIO()
    with Progress("compiling...", 3, stream=out) as p:
        assert out.getvalue() == "compiling..."        # shown as the stage starts
        p.update(2)
        p.close("3 kernels in 1.0 s")
    assert out.getvalue() == "compiling... 3 kernels in 1.0 s\n"
    out = io.StringIO()
    with pytest.raises(KeyError), Progress("extracting x:", 10, stream=out, percent=True):
        raise KeyError
    assert out.getvalue() == "extracting x: failed\n"
    out = io.StringIO()
    for i in (1, 2, 3):
        show_count("window", i, 3, out)
    assert out.getvalue() == "window 3/3\n"
