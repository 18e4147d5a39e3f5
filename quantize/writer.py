"""Streaming, atomic safetensors writer: the header first (every shape is known up front), then the
tensors one at a time, so peak memory is one tensor, not the model.

Atomic as DESIGN.md asks: a temporary file beside the target, fsync, rename. On any error, Ctrl-C
or SIGTERM the temporary file is removed; the target appears only when complete.
"""
from __future__ import annotations

import json
import os
import signal
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import QllamaError, Terminated

ITEMSIZE = {"F32": 4, "F16": 2, "U8": 1, "I8": 1, "I32": 4}
NUMPY = {"F32": np.float32, "F16": np.float16, "U8": np.uint8, "I8": np.int8, "I32": np.int32}
ALIGN = 64  # tensor data starts aligned, so maps of it can be read with aligned loads


class SafetensorsWriter:
    def __init__(self, file, layout: dict[str, tuple[tuple[int, ...], str]], metadata: dict[str, str]):
        """layout: name -> (shape, dtype) in write order."""
        self.file, self.layout, self.offsets = file, layout, {}
        header, offset = {"__metadata__": metadata}, 0
        for name, (shape, dtype) in layout.items():
            n = int(np.prod(shape, dtype=np.int64)) * ITEMSIZE[dtype]
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
            self.offsets[name] = offset
            offset += n
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-(8 + len(text)) % ALIGN)  # the spec allows trailing spaces in the header
        file.write(struct.pack("<Q", len(text)) + text)
        self.data_start, self.written, self.total = 8 + len(text), 0, offset
        self.order = iter(layout)

    def write(self, name: str, array: np.ndarray) -> None:
        expected = next(self.order, None)
        if name != expected:
            raise RuntimeError(f"writer expected tensor {expected}, got {name}")
        shape, dtype = self.layout[name]
        array = np.ascontiguousarray(array, dtype=NUMPY[dtype])
        if tuple(array.shape) != tuple(shape):
            raise RuntimeError(f"tensor {name} has shape {array.shape}, the header says {shape}")
        self.file.write(memoryview(array).cast("B"))
        self.written += array.nbytes

    def close(self):
        if next(self.order, None) is not None or self.written != self.total:
            raise RuntimeError("not every tensor was written")


def _raise_terminated(signum, frame):
    raise Terminated()


@contextmanager
def atomic_output(target: Path, force: bool):
    """Yield a temporary file beside target (open for writing; its path is f.name); rename it over
    target only if the block succeeds."""
    target = Path(target)
    if target.exists() and not force:
        raise QllamaError(f"{target}: already exists (use --force to overwrite)")
    if not target.parent.is_dir():
        raise QllamaError(f"{target.parent}: no such folder")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    except OSError as e:
        raise QllamaError(f"{target.parent}: cannot write here ({e.strerror})") from None
    tmp = Path(tmp_name)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)  # a kill cleans up like Ctrl-C
    try:
        os.close(fd)
        with open(tmp, "wb") as f:  # opened by name, so f.name is the path (GGUFWriter opens it too)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError as e:
        raise QllamaError(f"{target}: write failed ({e.strerror}); nothing was written") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        tmp.unlink(missing_ok=True)
