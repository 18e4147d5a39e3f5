"""Kernel preparation at load: placeholder, filled in by the cold-start work (issue 9)."""
from __future__ import annotations


def prepare_kernels(model, progress=None) -> None:
    """Compile (or load from the cache) every kernel `model` will call, before its first token."""
