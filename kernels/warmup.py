"""prepare_kernels: every kernel a model will call compiled, or loaded from Numba's on-disk cache, at
load, before its first token; and a message while a first run compiles.

Left to itself Numba compiles a kernel at its first call: a first run sat silent for 12-33 s
before its first token. Here the load lists what the forward pass will call (the Numba signatures
follow from the model's formats and arrays, kernel_plan), asks the cache which are there
(jit.is_cached), and only when some are missing says so on stderr and compiles those. Numba
compiles under one lock per process, so the missing ones are shared out with worker processes, one
per spare core, which fill the on-disk cache; this process compiles its share meanwhile and then
loads theirs. A group of kernels that writes the same cache files (a kernel and the functions it
calls, each of which Numba caches too) goes to one process, so no two processes write one index.
"""
from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
import threading
import time

import numba
import numpy as np
from numba.core import event

from ..linear import QuantLinear
from ..progress import Progress
from .jit import is_cached

MESSAGE = "compiling kernels for this CPU (first run only)..."
# attention (two kernels of ~4 s each) compiles about as long as all the others together (bench/RESULTS.md):
# past three workers more would only wait for it, holding ~200 MB each
MAX_WORKERS = 3
WORKER = "import sys; sys.path[:0] = sys.argv[1:]; from qllama.kernels.warmup import serve; serve()"


def resolve(ref: tuple):
    """(module, name, None) -> that module's kernel; (module, name, args) -> name(*args), a kernel
    made on demand (matmul_kernel(variant)). Plain data, so a worker process finds the same kernel."""
    module, name, args = ref
    obj = getattr(importlib.import_module(module), name)
    return obj if args is None else obj(*args)


def _array(dtype, ndim: int):
    """The Numba type of the fresh C-contiguous arrays the kernels' wrappers allocate."""
    return numba.typeof(np.empty((1,) * ndim, dtype))


def kernel_plan(model) -> list[list[tuple[tuple, tuple]]]:
    """Groups of (kernel reference, argument types) that model's forward pass calls, as the wrappers
    call them (kernels/elementwise.py, attention via model.attend_kernel, QuantLinear); one group per
    set of cache files."""
    f32_2, f32_3 = _array(np.float32, 2), _array(np.float32, 3)
    typeof = numba.typeof
    # attention first: the longest (decode and prefill about 4 s each of SmolLM2's 15 s on a 2-core
    # VM), so they start first and the short ones fill the other processes meanwhile
    cache = _array(np.uint16 if np.dtype(model.kv_dtype) == np.float16 else np.float32, 3)  # fp16 read as bits
    attend = (f32_3, cache, cache, numba.int64, numba.float32, f32_2)
    groups = [[(("qllama.kernels.attention", name, None), attend)] for name in ("_decode", "_prefill")]
    quant = {id(w): w for w in model.weights.values() if isinstance(w, QuantLinear)}.values()
    if quant:
        # each matrix's planes and its activation arguments (xq, xd, sums), as QuantLinear passes them
        args = {(w.fmt.kernel, w.variant, *map(typeof, w.planes), *w.kernels.input_types(w.fmt, typeof)) for w in quant}
        matmuls = {}            # a format's kernel, one group for all its signatures (read-only planes too)
        for module, v, *types in sorted(args, key=str):
            module = f"qllama.kernels.{module}"
            for name, kernel_args in importlib.import_module(module).kernel_refs(v):
                matmuls.setdefault(v, []).append(((module, name, kernel_args), (*types, f32_2)))
        groups += matmuls.values()
        quantizers = {}         # the activations' quantizers, one group for each kernels module
        for w in quant:
            for ref, sig in w.kernels.input_kernels(w.fmt, typeof):
                quantizers.setdefault(w.fmt.kernel, {})[ref, sig] = None
        groups += [list(q) for q in quantizers.values()]
        embed = model.weights["model.embed_tokens.weight"]
        if isinstance(embed, QuantLinear):      # rows looked up by dequantizing them
            rows = embed.kernels.row_kernels(embed, typeof)
            if rows:
                groups.append(rows)
    ew = "qllama.kernels.elementwise"
    norm = (f32_2, typeof(model.weights["model.norm.weight"]), numba.float32, f32_2)
    rope = (f32_3, f32_2, f32_2, f32_3)             # cos, sin: fresh (n, head_dim/2) arrays
    for op, sig in (("rmsnorm", norm), ("silu_mul", (f32_2, f32_2, f32_2)), ("rope", rope)):
        groups.append([((ew, f"_{op}_serial", None), sig), ((ew, f"_{op}_parallel", None), sig)])
    return groups


def prepare_kernels(model, progress=None, workers: int | None = None) -> None:
    """Compile (or load from the cache) every kernel `model` will call, before its first token.

    Reports on stderr only when something has to be compiled: progress(label, total) makes the
    report (default qllama.progress.Progress). workers: processes besides this one (default one per
    spare core, at most one per missing group and MAX_WORKERS; 0 compiles here only)."""
    if numba.config.DISABLE_JIT:
        return
    groups = kernel_plan(model)
    missing = [g for g in groups if not all(_ready(resolve(ref), sig) for ref, sig in g)]
    report = _Report(progress or Progress, sum(map(len, missing)))
    # should Numba compile anything the check took for cached, the message shows all the same
    with event.install_listener("numba:compile", report), report:
        if missing:
            report.open()
            _compile_groups(missing, report, _workers(len(missing)) if workers is None else workers)
        for group in groups:
            _compile(group)                     # loads from the cache now


def _ready(dispatcher, sig: tuple) -> bool:
    """In this process already (a model loaded before), or in the on-disk cache."""
    try:
        return sig in dispatcher.overloads or is_cached(dispatcher, sig)
    except AttributeError:      # Numba's cache internals changed: compiled here, the event shows the message
        return True


def _workers(n_groups: int) -> int:
    if getattr(sys, "frozen", False):       # a bundled app: sys.executable is the app, not Python
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(cores, n_groups, MAX_WORKERS + 1) - 1)


class _Report(event.Listener):
    """The compile message: opened when the cache check finds kernels missing, or when Numba starts
    compiling anyway (a cache file gone since the check); closed with the count and time."""

    def __init__(self, make, total: int):
        self.make, self.total, self.progress, self.start, self.done = make, total, None, 0.0, 0
        self.lock = threading.Lock()

    def open(self) -> None:
        if self.progress is None:
            self.start = time.perf_counter()
            self.progress = self.make(MESSAGE, self.total)

    def advance(self, n: int) -> None:
        with self.lock:
            self.done += n
            self.progress.update(self.done)

    def on_start(self, event) -> None:
        self.open()

    def on_end(self, event) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.progress is not None:
            took = f"in {time.perf_counter() - self.start:.1f} s"
            # a total of 0: opened by Numba's compile event, the count unknown
            done = f"{self.done} kernels {took}" if self.total else f"done {took}"
            self.progress.close("failed" if exc_type else done)


def _compile_groups(groups: list, report: _Report, n_workers: int) -> None:
    """Compile the groups: this process and n_workers worker processes each take the next group
    from one shared list until none is left; a worker's failed groups are compiled here."""
    pending, failed, procs, lock = list(reversed(groups)), [], [], threading.Lock()

    def take():
        with lock:
            return pending.pop() if pending else None

    def feed():     # a thread per worker: starts it if there is work left, hands it groups, waits for each answer
        if (group := take()) is None:
            return
        try:
            proc = subprocess.Popen([sys.executable, "-c", WORKER, *map(str, sys.path)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError:
            failed.append(group)    # compiled here; the others take the rest
            return
        procs.append(proc)
        with proc:
            while group is not None:
                try:
                    pickle.dump(group, proc.stdin)
                    proc.stdin.flush()
                    ok = pickle.load(proc.stdout)
                except (OSError, EOFError, pickle.UnpicklingError):
                    ok = False
                if not ok:
                    failed.append(group)
                    break
                report.advance(len(group))
                group = take()
            proc.stdin.close()

    group = take()      # the first (longest) group here: a worker starts half a second later
    threads = [threading.Thread(target=feed, daemon=True) for _ in range(n_workers)]
    try:
        for t in threads:
            t.start()
        while group is not None:
            _compile(group)
            report.advance(len(group))
            group = take()
        for t in threads:
            t.join()
    finally:            # Ctrl-C or an error here: the workers stop too
        pending.clear()
        for proc in procs:
            proc.kill()
    for group in failed:        # here, where an error shows
        _compile(group)
        report.advance(len(group))


def _compile(group) -> None:
    for ref, sig in group:
        resolve(ref).compile(sig)


def serve() -> None:
    """A worker process: compile each group read from stdin (pickled), answer True, or False when
    it failed (the parent then compiles it itself and shows the error)."""
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr             # nothing else may write into the answers
    while True:
        try:
            group = pickle.load(requests)
        except EOFError:
            return
        try:
            _compile(group)
            ok = True
        except Exception:           # noqa: BLE001 -- reported by the parent, which compiles it again
            ok = False
        pickle.dump(ok, answers)
        answers.flush()
