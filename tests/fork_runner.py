"""Run many `qllama` command lines cheaply: import qllama once, then fork a child per command.

A fresh `python -m qllama.cli` costs ~2 s here (the Numba import); a fork costs milliseconds. The
child runs `qllama.cli.main()` exactly as the console script does, in the case's folder, with
stdin empty and stdout/stderr caught in files, and reports its exit code and its memory growth
(peak RSS above its RSS at the start, after resetting the peak through /proc/self/clear_refs).
This process itself never runs a kernel, so no Numba worker thread is alive across a fork.

Usage: python fork_runner.py JOBS.json RESULTS.json, JOBS a list of {"name", "dir", "argv", "timeout"}.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
import traceback
from pathlib import Path

import qllama.cli
# what the commands import lazily, imported once here rather than in every child (none starts a thread)
import gguf  # noqa: F401
import qllama.chat_template, qllama.gguf_vocab, qllama.model, qllama.tokenizer  # noqa: E401,F401
import qllama.readers.gguf, qllama.readers.hf, qllama.readers.llama2c, qllama.readers.qllama_file  # noqa: E401,F401

ADDRESS_SPACE_HEADROOM = 4 << 30   # a child that balloons past this fails with MemoryError instead of swapping


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(job: dict, out_dir: Path) -> None:
    """Runs in the fork; never returns."""
    code = 70
    try:
        os.chdir(job["dir"])
        stdin = os.open(os.devnull, os.O_RDONLY)
        stdout = os.open(out_dir / "stdout", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        stderr = os.open(out_dir / "stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(fd, target)
        Path("/proc/self/clear_refs").write_text("5")         # peak RSS := current RSS
        start_kb = status_kb("VmRSS")
        limit = status_kb("VmSize") * 1024 + ADDRESS_SPACE_HEADROOM
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        sys.argv = ["qllama", *job["argv"]]
        try:
            qllama.cli.main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:       # what the interpreter would print for an uncaught exception
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        growth_kb = status_kb("VmHWM") - start_kb
        (out_dir / "result.json").write_text(json.dumps({"code": code, "growth_kb": growth_kb}))
    finally:
        os._exit(code)


def run(job: dict, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    pid = os.fork()
    if pid == 0:
        child(job, out_dir)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - began > job["timeout"]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"timed_out": True, "seconds": time.monotonic() - began}
        time.sleep(0.005)
    result_file = out_dir / "result.json"
    result = json.loads(result_file.read_text()) if result_file.exists() else {"code": -1, "growth_kb": None}
    result.update(timed_out=False, seconds=time.monotonic() - began, signal=os.WIFSIGNALED(status) and os.WTERMSIG(status),
                  stdout=(out_dir / "stdout").read_text(errors="replace"),
                  stderr=(out_dir / "stderr").read_text(errors="replace"))
    return result


def main(jobs_file: str, results_file: str) -> None:
    jobs = json.loads(Path(jobs_file).read_text())
    scratch = Path(results_file).parent / "runner"
    results = {job["name"]: run(job, scratch / str(i)) for i, job in enumerate(jobs)}
    Path(results_file).write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])
