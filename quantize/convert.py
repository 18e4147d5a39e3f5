"""`qllama quantize`: any checkpoint -> ONE .safetensors file of quant planes + everything a run needs,
or a .gguf that llama.cpp runs (gguf_writer.py, gguf_metadata.py).

Streams tensor by tensor (peak memory ~ the largest tensor); writes atomically. Tensor policy: norms
stay float32; the token embedding and output head use `embeddings_format` (8-bit by default); every
other matrix uses `format`. A llama.cpp k-quant file type (q4_k_m, q5_k_m, q6_k: kquant_mix.py)
instead picks each tensor's type as llama.cpp does, the embedding and head included unless
`embeddings_format` is given. A GGUF tensor already in a type of the table (Q8_0, Q4_0, Q4_1, the
k-quants) is copied bit for bit as its identical qllama format unless that format has more bits
than asked for; other quantized GGUF types are dequantized and requantized, with a warning.
"""
from __future__ import annotations

import hashlib
import math
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checkpoint import Checkpoint, open_checkpoint
from ..errors import QllamaError
from .formats import ALIASES, BY_GGML_TYPE, FORMATS, QuantFormat, get_format
from .kquant_mix import MIXES, KQuantMix, ggml_types, qllama_format
from .gguf_metadata import gguf_fields
from .gguf_writer import GGUFOutput, ggml_name
from .gptq import gptq_quantize
from .tensor import QuantizedTensor, from_ggml_blocks, plane_shapes, quantize_matrix, relative_error
from .writer import SafetensorsWriter, atomic_output

FORMAT_VERSION = "1"
DEFAULT_EMBEDDINGS = "q8_g32"   # the embedding and head of a plain --format (a k-quant mix has its own)
FLOAT_TYPES = ("F32", "F16", "BF16")
EMBEDDINGS = ("model.embed_tokens.weight", "lm_head.weight")
OUTPUT_SUFFIXES = (".safetensors", ".gguf")


@dataclass
class TensorReport:
    name: str
    format: str          # a FORMATS name or "F32"
    how: str             # "searched", "absmax", "gptq", "imatrix", "exact copy", "requantized", "float"
    bits_per_weight: float
    rel_rms_error: float  # ||dequantized - source|| / ||source||
    n_weights: int


def source_sha256(path: Path) -> str:
    """sha256 of the source file, or of its files' names and hashes for a folder."""
    def file_hash(f: Path) -> str:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
        return h.hexdigest()
    if path.is_file():
        return file_hash(path)
    lines = [f"{f.name} {file_hash(f)}\n" for f in sorted(path.iterdir()) if f.is_file()]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def targets(ckpt: Checkpoint, fmt, embed_fmt) -> dict[str, QuantFormat | None]:
    """Matrix name -> the format asked for it (None: float32): a k-quant mix's choice per tensor,
    else `embed_fmt` for the embedding and head and `fmt` for the rest."""
    matrices = {n: t.shape for n, t in ckpt.tensors.items() if len(t.shape) > 1}
    if not isinstance(fmt, KQuantMix):
        return {n: embed_fmt if n in EMBEDDINGS else fmt for n in matrices}
    types = ggml_types(fmt, {ggml_name(n): s for n, s in matrices.items()}, ckpt.args.n_layers)
    chosen = {n: qllama_format(types[ggml_name(n)], s[-1]) for n, s in matrices.items()}
    if embed_fmt is not None:
        chosen.update({n: embed_fmt for n in matrices if n in EMBEDDINGS})
    return chosen


def plan(ckpt: Checkpoint, fmt, embed_fmt) -> dict[str, tuple[QuantFormat | None, str]]:
    """Tensor name -> (format or None for float32, how), in file order."""
    plans = {}
    chosen = targets(ckpt, fmt, embed_fmt)
    for name, t in ckpt.tensors.items():
        target = chosen.get(name)
        if target is None:
            plans[name] = (None, "float")
            continue
        same = BY_GGML_TYPE.get(t.dtype)
        if same is not None and same.bits <= target.bits:
            plans[name] = (same, "exact copy")
        elif t.dtype not in FLOAT_TYPES:
            plans[name] = (target, "requantized")
        else:
            plans[name] = (target, "searched")
    requantized = [n for n, (_, how) in plans.items() if how == "requantized"]
    if requantized:
        warnings.warn(f"{len(requantized)} tensors (e.g. {requantized[0]}, {ckpt.tensors[requantized[0]].dtype}) "
                      f"are dequantized and requantized: some quality is lost twice")
    return plans


def build_layout(ckpt: Checkpoint, plans, tokenizer_blob: bytes) -> dict:
    layout = {}
    for name, (fmt, _) in plans.items():
        if fmt is None:
            layout[name] = (ckpt.tensors[name].shape, "F32")
        else:
            for plane, spec in plane_shapes(fmt, ckpt.tensors[name].shape).items():
                layout[f"{name}.{plane}"] = spec
    if tokenizer_blob:
        layout["qllama.tokenizer"] = ((len(tokenizer_blob),), "U8")
    return layout


def build_metadata(ckpt: Checkpoint, plans, sha256: str) -> dict[str, str]:
    from .. import __version__
    meta = {
        "format": "pt",  # what the safetensors library expects to find; the planes are plain arrays
        "qllama.format_version": FORMAT_VERSION,
        "qllama.version": __version__,
        "qllama.model_args": ckpt.args.to_json(),
        "qllama.tensor_formats": json.dumps({n: f.name for n, (f, _) in plans.items() if f is not None}),
        "qllama.source": Path(ckpt.path).name,
        "qllama.source_sha256": sha256,
    }
    if ckpt.chat_template:
        meta["qllama.chat_template"] = ckpt.chat_template
    if ckpt.tokenizer is not None:
        kind, _, settings = ckpt.tokenizer.to_bytes()
        meta["qllama.tokenizer_kind"] = kind
        meta["qllama.tokenizer_settings"] = json.dumps(settings)
    return meta


def progress(i: int, n: int, name: str, start: float) -> None:
    if not sys.stderr.isatty():
        return
    elapsed = time.monotonic() - start
    eta = elapsed / i * (n - i) if i else 0.0
    print(f"\r[{i:4d}/{n}] {name[:48]:48s} ETA {eta:5.0f}s", end="", file=sys.stderr, flush=True)


def convert(source, output, format: str = "q4", group_size: int | None = None,
            embeddings_format: str | None = None, calibration=None, force: bool = False,
            tokenizer=None, search: bool = True) -> list[TensorReport]:
    """Quantize `source` into `output`: a qllama .safetensors file, or a .gguf for llama.cpp.
    Returns one report per tensor."""
    fmt = resolve_format(format, group_size)
    if embeddings_format is None:
        embed_fmt = None if isinstance(fmt, KQuantMix) else get_format(DEFAULT_EMBEDDINGS)
    else:
        embed_fmt = get_format(embeddings_format)
    return convert_checkpoint(open_checkpoint(source, tokenizer), output, fmt, embed_fmt, calibration, force, search)


def resolve_format(name: str, group_size: int | None = None):
    """A llama.cpp k-quant file type (q4_k_m, q5_k_m, q6_k) or a FORMATS entry (get_format)."""
    mix = MIXES.get(name.lower())
    if mix is None:
        return get_format(name, group_size)
    if group_size is not None:
        raise QllamaError(f"format {name} is llama.cpp's k-quant mix (super-blocks of 256): no --group-size")
    return mix


def output_kind(output: Path) -> str:
    """The file kind, told by the output's suffix: anything else would be written in a format nothing reads."""
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        got = f"suffix {output.suffix!r}" if output.suffix else "no suffix"
        raise QllamaError(f"{output}: name the output .safetensors (qllama) or .gguf (llama.cpp), not {got}")
    return output.suffix.lower()


def check_ggml_formats(fmt, embed_fmt) -> None:
    """A .gguf holds only ggml's own types: the group-32 formats (Q8_0, Q4_0, Q4_1) and the k-quants."""
    for f, option in ((fmt, "--format"), (embed_fmt, "--embeddings-format")):
        if f is None or isinstance(f, KQuantMix):   # a mix picks only ggml types
            continue
        if f.ggml_type is None:
            same_family = next(a for a, n in ALIASES.items() if FORMATS[n].family == f.family)
            raise QllamaError(f"{option} {f.name} has no llama.cpp (ggml) type: a .gguf output takes q8_0, q4_0, "
                              f"q4_1, q2_k .. q6_k or a k-quant mix (q4_k_m, q5_k_m); use {same_family} for "
                              f".gguf, or a .safetensors output for {f.name}")


class QllamaFileOutput:
    """The .safetensors output: each tensor as its planes (or float32), then the tokenizer's bytes."""
    dequantized: tuple[str, ...] = ()  # planes hold every format: nothing is stored dequantized

    def __init__(self, f, layout: dict, metadata: dict[str, str], tokenizer_blob: bytes):
        self.writer, self.blob = SafetensorsWriter(f, layout, metadata), tokenizer_blob

    def write(self, name: str, value) -> None:
        if not isinstance(value, QuantizedTensor):
            return self.writer.write(name, value)
        for plane in value.fmt.planes:            # in the layout's order
            self.writer.write(f"{name}.{plane.name}", value.planes[plane.name])

    def close(self) -> None:
        if self.blob:
            self.writer.write("qllama.tokenizer", np.frombuffer(self.blob, np.uint8))
        self.writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def quantized_tensors(ckpt: Checkpoint, plans, moments: dict, search: bool):
    """(name, float32 array or QuantizedTensor, report) in plan order, one tensor in memory at a time."""
    source, start = ckpt.path, time.monotonic()
    for i, (name, (tfmt, how)) in enumerate(plans.items()):
        progress(i, len(plans), name, start)  # before the work, as the ETA line names what is being done
        t = ckpt.tensors[name]
        if how == "exact copy":
            q = from_ggml_blocks(t.raw if t.rows is None else t.raw[t.rows], t.shape, tfmt)
            yield name, q, TensorReport(name, tfmt.name, how, 8 * q.nbytes / math.prod(t.shape), 0.0,
                                        math.prod(t.shape))
            q = None  # this frame outlives the yield: drop the tensor before the next is decoded
            t.done()
            continue
        w = t.float32()
        if not np.isfinite(w).all():
            raise QllamaError(f"{source}: tensor {name} contains NaN or Inf values")
        if tfmt is None:
            yield name, w, TensorReport(name, "F32", how, 32.0, 0.0, w.size)
            w = None
            t.done()
            continue
        how = how if search else "absmax"
        if name in moments and search and tfmt.searchable:
            how = "gptq"
            q = gptq_quantize(w, tfmt, moments[name])
        elif name in moments and search:   # the k-quants: the search weighs columns by the imatrix
            how = "imatrix"
            q = quantize_matrix(w, tfmt, np.diag(moments[name]).astype(np.float32), search)
        else:
            q = quantize_matrix(w, tfmt, None, search)
        yield name, q, TensorReport(name, tfmt.name, how, 8 * q.nbytes / w.size, relative_error(q, w), w.size)
        q = w = None  # peak memory stays about one tensor
        t.done()


def convert_checkpoint(ckpt: Checkpoint, output, fmt, embed_fmt, calibration=None,
                       force: bool = False, search: bool = True) -> list[TensorReport]:
    """The body of `convert`, for a checkpoint already open (benches pass modified ones). fmt: a
    FORMATS entry or a KQuantMix; embed_fmt: a FORMATS entry, or None for a mix's own choice."""
    output, source = Path(output), ckpt.path
    kind = output_kind(output)
    if ckpt.kind == "qllama":
        raise QllamaError(f"{source}: already a qllama file; quantize the original checkpoint instead")
    if output.exists() and output.resolve() == Path(ckpt.path).resolve():
        raise QllamaError(f"{output}: is the source; choose another output")
    if kind == ".gguf":
        check_ggml_formats(fmt, embed_fmt)
    plans = plan(ckpt, fmt, embed_fmt)
    if kind == ".gguf":  # everything that can be refused is, before the slow part
        fields = gguf_fields(ckpt, fmt)
        shapes = {n: (ckpt.tensors[n].shape, tfmt) for n, (tfmt, _) in plans.items()}
        # GGUFWriter opens the temporary file by its name; atomic_output's fsync of it syncs the same file
        open_output = lambda f: GGUFOutput(Path(f.name), fields, ckpt.args, shapes)
    else:
        tokenizer_blob = ckpt.tokenizer.to_bytes()[1] if ckpt.tokenizer is not None else b""
        layout = build_layout(ckpt, plans, tokenizer_blob)
        metadata = build_metadata(ckpt, plans, source_sha256(Path(ckpt.path)))
        open_output = lambda f: QllamaFileOutput(f, layout, metadata, tokenizer_blob)
    moments = {}
    if calibration is not None:
        from .calibration import input_moments
        moments = input_moments(ckpt, Path(calibration))
    reports, start = [], time.monotonic()
    with atomic_output(output, force) as f, open_output(f) as out:
        for name, value, report in quantized_tensors(ckpt, plans, moments, search):
            out.write(name, value)
            reports.append(report)
            del value  # free this tensor before the next is decoded: peak memory stays one tensor
        out.close()
    progress(len(plans), len(plans), "done", start)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    if out.dequantized:
        first = out.dequantized[0]
        warnings.warn(f"{len(out.dequantized)} matrices (e.g. {first}, rows of {ckpt.tensors[first].shape[1]}) are not "
                      f"whole ggml blocks of 32: stored in the .gguf as float32, their quantized values exactly")
        for r in reports:
            if r.name in out.dequantized:
                r.format, r.bits_per_weight = "F32", 32.0
    return reports
