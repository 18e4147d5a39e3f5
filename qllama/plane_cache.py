"""The kernels' layout of a model's matrices kept on disk, so its next load maps it instead of repacking.

kernels/repack.py lays every quantized matrix out for its kernel in fresh memory, and the first
touch of fresh memory is most of a large model's load (a 7B Q4_K_M: 3.2 s of 3.9 s on the VM of
bench/RESULTS.md). Here the load writes those planes into a file under the cache folder instead,
at the same cost, and the next load of the same source maps that file: its pages are already in
the page cache, nothing is copied (as llama.cpp maps a GGUF). Pages of a mapped file are the page
cache's, so the kernel can drop and reread them under memory pressure, as it can a GGUF's.

An entry is <key>.planes (the arrays, 64-byte aligned) and <key>.json (the index: each array's
offset and shape in the order the load asks for them, and the non-finite scale counts the repack
found), the index written last, so an entry without one is unfinished and never read. The key
hashes the source file (path, size, mtime, inode, its first and last MiB), qllama's source code
and the kernel path: any change makes a new entry, and a finished entry replaces the older ones
of the same source and those of deleted sources. A load that asks for an array the index does not list next stops, and loads
again by repacking. QLLAMA_PLANE_CACHE=0 turns the cache off; it is also skipped when the disk has
less room than twice the source's size plus 1 GiB, and where Python has no os.posix_fallocate (macOS,
Windows: without the blocks reserved, a full disk would fault a page of the mapping).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from .paths import cache_dir

ALIGN = 64
SPARE_DISK = 1 << 30
EDGE = 1 << 20                  # bytes hashed at each end of the source
NOTICE_SIZE = 1 << 30           # a source this large says on stderr that its first load writes an entry
_active = contextvars.ContextVar("plane_cache", default=None)


class Stale(Exception):
    """The index does not describe the arrays this load asks for."""


def active():
    """The Writer or Reader of the load in progress, or None (kernels/repack.py asks)."""
    return _active.get()


def replaying() -> bool:
    """Whether this load's planes come from a finished entry: no matrix needs its bytes prepared."""
    return isinstance(_active.get(), Reader)


@functools.cache
def code_hash() -> str:
    """All of qllama's Python sources: the layouts follow from the code."""
    root = Path(__file__).resolve().parent
    files = sorted(p for p in root.rglob("*.py"))
    for package in ("kernels", "quantize"):         # beside qllama/ in a checkout (pyproject's package-dir)
        extra = root.parent / package
        if extra.is_dir() and not (root / package).is_dir():
            files += sorted(extra.rglob("*.py"))
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


def folder() -> Path:
    return cache_dir() / "planes"


def entry_key(source: Path, facts: dict) -> str:
    st = source.stat()
    with open(source, "rb") as f:     # and its ends (a GGUF's header and tensor table): a file
        ends = f.read(EDGE)           # rewritten in place within the clock's tick keeps its mtime
        f.seek(max(st.st_size - EDGE, 0))
        ends += f.read(EDGE)
    described = {"source": str(source.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                 "inode": st.st_ino, "ends": hashlib.sha256(ends).hexdigest(), "code": code_hash(), **facts}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:32]


class Writer:
    """Hands out arrays backed by a new entry's data file, growing it as the load asks."""

    def __init__(self, data: Path, index: Path, source: Path):
        self.data, self.index, self.source = data, index, source
        self.tmp = data.with_name(f"{data.name}.{os.getpid()}.tmp")
        self.fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.end, self.arrays, self.bad, self.failed = 0, [], [], False

    def array(self, shape: tuple[int, int]) -> tuple[np.ndarray, bool]:
        """A uint8 array of `shape` for the repack to fill, and False (it is not filled yet)."""
        nbytes = shape[0] * shape[1]
        if self.failed or nbytes == 0:
            return np.empty(shape, np.uint8), False
        offset = -(-self.end // ALIGN) * ALIGN
        try:
            os.posix_fallocate(self.fd, offset, nbytes)   # reserved, so a full disk cannot fault a page later
        except OSError:
            self.failed = True                            # the rest in memory; this entry is not finished
            return np.empty(shape, np.uint8), False
        self.arrays.append([offset, *shape])
        self.end = offset + nbytes
        return np.memmap(self.tmp, np.uint8, "r+", offset, shape).view(np.ndarray), False

    def counted(self, bad: int) -> int:
        self.bad.append(int(bad))
        return bad

    def finish(self) -> None:
        os.close(self.fd)
        if self.failed:
            self.tmp.unlink(missing_ok=True)
            return
        for old in self.index.parent.glob("*.json"):      # older entries of this source, or of a deleted one
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                of = json.loads(old.read_text())["source"]
                if old != self.index and (of == str(self.source) or not Path(of).exists()):
                    old.unlink()
                    old.with_suffix(".planes").unlink(missing_ok=True)
        for tmp in self.index.parent.glob("*.tmp"):         # left by a load that was killed
            with contextlib.suppress(OSError, ValueError, IndexError):
                if not _alive(int(tmp.name.split(".")[-2])):
                    tmp.unlink()
        os.replace(self.tmp, self.data)
        tmp_index = self.index.with_name(f"{self.index.name}.{os.getpid()}.tmp")
        tmp_index.write_text(json.dumps({"source": str(self.source), "size": self.end, "arrays": self.arrays,
                                         "bad": self.bad}))
        os.replace(tmp_index, self.index)

    def abandon(self) -> None:
        os.close(self.fd)
        self.tmp.unlink(missing_ok=True)


class Reader:
    """Hands out the arrays a finished entry lists, in its order, already filled."""

    def __init__(self, data: Path, index: dict):
        self.arrays, self.bad = index["arrays"], index["bad"]
        size = int(index["size"])
        if data.stat().st_size != size or any(o < 0 or r < 0 or c < 0 or o + r * c > size for o, r, c in self.arrays):
            raise Stale
        # copy-on-write: the arrays' type is the writable one the repack makes (one compiled kernel
        # for both), and nothing written to them could reach the file
        self.mapped = np.memmap(data, np.uint8, "c") if size else np.empty(0, np.uint8)
        self.next_array = self.next_bad = 0

    def array(self, shape: tuple[int, int]) -> tuple[np.ndarray, bool]:
        if shape[0] * shape[1] == 0:
            return np.empty(shape, np.uint8), True      # nothing to fill
        if self.next_array >= len(self.arrays) or tuple(self.arrays[self.next_array][1:]) != tuple(shape):
            raise Stale
        offset = self.arrays[self.next_array][0]
        self.next_array += 1
        return self.mapped[offset:offset + shape[0] * shape[1]].reshape(shape).view(np.ndarray), True

    def counted(self, bad: int) -> int:
        if self.next_bad >= len(self.bad):
            raise Stale
        self.next_bad += 1
        return self.bad[self.next_bad - 1]

    def complete(self) -> bool:
        return self.next_array == len(self.arrays) and self.next_bad == len(self.bad)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _using(store):
    token = _active.set(store)
    try:
        yield
    finally:
        _active.reset(token)


def _reader(data: Path, index: Path):
    try:
        return Reader(data, json.loads(index.read_text()))
    except (OSError, ValueError, KeyError, TypeError, Stale):
        return None


def load(source: Path, facts: dict, build):
    """build() (a model's weights) with its repacked planes read from, or written to, the cache
    entry of `source` (a file) and `facts` (what else decides the layout)."""
    if os.environ.get("QLLAMA_PLANE_CACHE", "1") in ("0", "false", "no") or not hasattr(os, "posix_fallocate"):
        return build()                          # (macOS and Windows have no posix_fallocate: no cache)
    try:
        key = entry_key(source, facts)
        folder().mkdir(parents=True, exist_ok=True)
    except OSError:
        return build()
    data, index = folder() / f"{key}.planes", folder() / f"{key}.json"
    reader = _reader(data, index) if index.exists() else None
    if reader is not None:
        try:
            with _using(reader):
                weights = build()
            if reader.complete():
                return weights
        except Stale:
            pass
        for path in (index, data):              # another layout than the index's: drop it, repack
            path.unlink(missing_ok=True)
    try:
        size = source.stat().st_size
        if shutil.disk_usage(folder()).free < 2 * size + SPARE_DISK:
            return build()                      # leave at least the model's size free after writing
        writer = Writer(data, index, source.resolve())
    except OSError:
        return build()
    if size >= NOTICE_SIZE:
        print(f"qllama: keeping {source.name}'s planes in {folder()} (about {size / 2 ** 30:.1f} GiB) so later "
              f"loads map them; QLLAMA_PLANE_CACHE=0 turns this off", file=sys.stderr)
    try:
        with _using(writer):
            weights = build()
    except BaseException:
        writer.abandon()
        raise
    try:
        writer.finish()
    except OSError as e:                        # the weights are good; only the next load repacks
        print(f"qllama: could not keep the planes of {source.name} in {folder()}: {e}", file=sys.stderr)
    return weights
