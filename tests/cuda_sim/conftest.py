"""Tests of the CUDA backend in Numba's CUDA simulator: run by tests/test_cuda_sim.py in a process
of their own, with NUMBA_ENABLE_CUDASIM=1 set before numba is imported."""
import numba

assert numba.config.ENABLE_CUDASIM, "run these through tests/test_cuda_sim.py (NUMBA_ENABLE_CUDASIM=1)"

from qllama.cuda.simulator import prepare

prepare()   # a shorter thread switch interval, and a lock the simulator's shared arrays lack
