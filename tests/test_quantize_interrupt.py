"""Ctrl-C (SIGINT) and kill (SIGTERM) during `qllama quantize`, landing inside a Numba kernel: exit
130 or 143 with one line, and no partial output (the atomic write cleans up).

The child slows one step down with a long Numba loop, so the signal arrives while compiled code
runs (where it used to surface as "SystemError: CPUDispatcher(...) returned a result with an
exception set"): during the scale search of a matrix, or while a plane is written."""
import signal
import subprocess
import sys
import time

import pytest

from paths import MODELS

CHILD = r"""
import sys, numba, numpy as np
import qllama.quantize.convert as convert, qllama.quantize.writer as writer

@numba.njit(cache=False)
def busy(n):
    s = 0.0
    for i in range(n):
        s += np.sin(i) * 1e-9
    return s

busy(10)                                    # compiled before the marker: the wait is the loop itself

def slowly(fn):
    def wrapped(*args, **kwargs):
        print("slow step", file=sys.stderr, flush=True)
        for _ in range(10**4):              # minutes in calls of ~20 ms: a signal lands inside one and
            busy(10**6)                     # surfaces when it returns, as in a real search

        return fn(*args, **kwargs)
    return wrapped

if sys.argv[1] == "search":
    convert.quantize_matrix = slowly(convert.quantize_matrix)
else:
    writer.SafetensorsWriter.write = slowly(writer.SafetensorsWriter.write)
from qllama.cli import main
sys.argv = ["qllama", "quantize", sys.argv[2], sys.argv[3], "--format", "q4"]
main()
"""


@pytest.mark.parametrize("moment", ["search", "write"])
@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_inside_a_kernel_exits_cleanly(tmp_path, moment, sig, code, word):
    out = tmp_path / "out.safetensors"
    child = subprocess.Popen([sys.executable, "-c", CHILD, moment, str(MODELS / "stories260K" / "stories260K.bin"),
                              str(out)], stderr=subprocess.PIPE, text=True)
    assert child.stderr.readline().strip() == "slow step"
    time.sleep(0.3)
    child.send_signal(sig)
    try:
        stderr = child.communicate(timeout=60)[1]
    finally:
        child.kill()                                # a child that ignored the signal fails the test, not hangs it
    assert child.returncode == code, stderr
    assert stderr.strip() == word, stderr
    assert list(tmp_path.iterdir()) == []           # no output, no temporary file
