"""Where qllama keeps what it downloads and compiles."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$QLLAMA_CACHE, else $XDG_CACHE_HOME/qllama, else ~/.cache/qllama."""
    if os.environ.get("QLLAMA_CACHE"):
        return Path(os.environ["QLLAMA_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "qllama"
