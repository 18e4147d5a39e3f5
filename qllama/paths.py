"""Where qllama keeps what it downloads and compiles, and what a user would miss."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$QLLAMA_CACHE, else $XDG_CACHE_HOME/qllama, else ~/.cache/qllama."""
    if os.environ.get("QLLAMA_CACHE"):
        return Path(os.environ["QLLAMA_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "qllama"


def state_dir() -> Path:
    """Where qllama keeps what a user made and would miss (chat history): $XDG_STATE_HOME/qllama,
    else ~/.local/state/qllama."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "qllama"
