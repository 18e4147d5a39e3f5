"""The CUDA simulator's tests (tests/cuda_sim), run in a process of their own that starts when
collection is done (conftest.py), so its two minutes overlap the rest of the suite on the other core;
test_cuda_sim.py waits for it. NUMBA_ENABLE_CUDASIM must be set before numba is imported, hence a
process."""
import os
import subprocess
import sys
import tempfile

from paths import REPO

SIMULATOR_TESTS = ["tests/cuda_sim/sim_kernels.py", "tests/cuda_sim/sim_model.py"]
TIMEOUT_S = 900
_run = None


def start() -> None:
    global _run
    if _run is None:
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")   # no pipe to fill up
        child = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SIMULATOR_TESTS],
                                 cwd=REPO, env=dict(os.environ, NUMBA_ENABLE_CUDASIM="1"), stdout=out, stderr=err,
                                 text=True)
        _run = child, out, err


def result() -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the run, started here if collection did not start it."""
    start()
    child, out, err = _run
    try:
        child.wait(timeout=TIMEOUT_S)
    finally:
        child.kill()
    out.seek(0), err.seek(0)
    return child.returncode, out.read(), err.read()


def stop() -> None:
    """End a run nobody waited for (the session ended first: -x, Ctrl-C)."""
    if _run is not None:
        _run[0].kill()
        _run[0].wait()
