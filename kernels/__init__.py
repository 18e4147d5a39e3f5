"""Numba kernels for the hot paths (installed as qllama.kernels)."""
