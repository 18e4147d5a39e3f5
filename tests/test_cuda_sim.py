"""The CUDA backend without a GPU: its kernels and the whole model in Numba's CUDA simulator (in a
process of their own: NUMBA_ENABLE_CUDASIM must be set before numba is imported), and the one
line `--device cuda` prints where numba-cuda or a GPU driver is missing."""
import os
import re
import subprocess
import sys

import pytest

import simulator_run
from paths import MODELS, REPO

STORIES = str(MODELS / "stories260K" / "stories260K.bin")


def test_cuda_kernels_and_model_in_the_simulator():
    code, stdout, stderr = simulator_run.result()        # started beside the suite by conftest.py
    assert code == 0, stdout[-6000:] + stderr[-3000:]
    assert " passed" in stdout and "skipped" not in stdout


def run_cli(args, env=None, block_numba_cuda=False):
    """`qllama ARGS` in a subprocess; with block_numba_cuda, as if the package were not installed."""
    code = ("import sys\n" + ("sys.modules['numba_cuda'] = None\n" if block_numba_cuda else "")
            + "from qllama.cli import main\nsys.argv = ['qllama'] + sys.argv[1:]\nmain()\n")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, **(env or {})))


def test_device_cuda_without_numba_cuda_is_one_line():
    r = run_cli(["run", "-m", STORIES, "--device", "cuda", "-n", "2", "--raw", "Once"], block_numba_cuda=True)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().splitlines() == ["error: --device cuda needs the numba-cuda package: pip install 'qllama[cuda]'"]


def test_device_cuda_without_a_driver_is_one_line():
    # NUMBA_CUDA_DRIVER names the driver library: a missing one is what a machine without a GPU has
    r = run_cli(["bench", "-m", STORIES, "--device", "cuda"], env={"NUMBA_CUDA_DRIVER": "/nonexistent/libcuda.so"})
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --device cuda: no usable NVIDIA GPU or driver ("), lines


@pytest.mark.parametrize("options, message", [
    ({"device": "tpu"}, "device 'tpu' is not one of cpu, cuda"),
    ({"device": "cuda", "reference": True}, "--reference runs on the CPU only"),
    ({"device": "cuda", "kv_dtype": "f16"}, "--device cuda keeps a float32 KV cache: --kv-cache f16"),
])
def test_what_the_gpu_cannot_do_is_refused_before_it_loads(options, message):
    import qllama
    from qllama.errors import QllamaError
    with pytest.raises(QllamaError, match=re.escape(message)):
        qllama.load(STORIES, **options)
