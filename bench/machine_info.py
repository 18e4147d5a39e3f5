"""Facts about this machine and this checkout for bench reports (no numpy: cheap to import)."""
from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def total_ram_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_line() -> str:
    """'CPU, N CPUs (nproc), X GiB RAM; OS release' for a report's Machine line."""
    ram = total_ram_bytes()
    return (f"{cpu_model()}, {len(os.sched_getaffinity(0))} CPUs (nproc), "
            + (f"{ram / 2**30:.1f} GiB RAM" if ram else "RAM unknown") + f"; {platform.system()} {platform.release()}")
