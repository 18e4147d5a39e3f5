"""qllama's own file: one .safetensors with quant planes, ModelArgs, tokenizer and chat template.

A tensor `<name>` is quantized iff `<name>.qweight` exists; its format is named in the metadata key
`qllama.tensor_formats` and looked up in the FORMATS table. Everything is memory-mapped.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..checkpoint import Checkpoint, SourceTensor, check_tensors
from ..config import ModelArgs
from ..errors import QllamaError
from ..quantize.formats import FORMATS
from ..quantize.tensor import QuantizedTensor, plane_shapes
from .safetensors_file import SafetensorsFile

SUPPORTED_VERSIONS = ("1",)
PLANE_NAMES = {p.name for f in FORMATS.values() for p in f.planes}


def read_qllama_file(path: Path) -> Checkpoint:
    st = SafetensorsFile(path)
    meta = st.metadata
    version = meta.get("qllama.format_version")
    if version is None:
        raise QllamaError(f"{path}: not a qllama file (no qllama.format_version metadata); to read a Hugging "
                          f"Face checkpoint, pass its folder")
    if version not in SUPPORTED_VERSIONS:
        raise QllamaError(f"{path}: qllama format version {version} is newer than this qllama reads; upgrade qllama")
    try:
        args = ModelArgs.from_json(meta["qllama.model_args"])
        formats = json.loads(meta.get("qllama.tensor_formats", "{}"))
        settings = json.loads(meta.get("qllama.tokenizer_settings", "{}"))
    except (KeyError, ValueError) as e:
        raise QllamaError(f"{path}: bad qllama metadata ({e})") from None
    except QllamaError as e:
        raise QllamaError(f"{path}: {str(e).removeprefix('model config: ')}") from None
    if not isinstance(formats, dict) or not all(isinstance(v, str) for v in formats.values()):
        raise QllamaError(f"{path}: qllama.tensor_formats must map tensor names to format names")
    if isinstance(settings, dict) and not isinstance(settings.get("stop_ids") or [], list):
        raise QllamaError(f"{path}: qllama.tokenizer_settings stop_ids must be a list of token ids")
    tensors = {}
    for name, fmt_name in formats.items():
        fmt = FORMATS.get(fmt_name)
        if fmt is None:
            raise QllamaError(f"{path}: tensor {name} has unknown format {fmt_name!r}")
        scales = st.arrays.get(f"{name}.scales")
        if f"{name}.qweight" not in st.arrays or scales is None or scales.ndim != 2:
            raise QllamaError(f"{path}: tensor {name} is missing its planes or its scales are not a matrix")
        out, in_groups = scales.shape
        shape = (out, _input_width(path, name, args, in_groups * fmt.group_size, fmt.group_size))
        planes = {}
        for plane, (plane_shape, dtype) in plane_shapes(fmt, shape).items():
            array = st.arrays.get(f"{name}.{plane}")
            if array is None or tuple(array.shape) != plane_shape or st.dtypes[f"{name}.{plane}"] != dtype:
                raise QllamaError(f"{path}: plane {name}.{plane} is missing or has the wrong shape or dtype")
            planes[plane] = array
        q = QuantizedTensor(fmt, shape, planes)
        tensors[name] = SourceTensor(shape, fmt.name, q.qweight, lambda _, q=q: q.dequantize(), quantized=q,
                                     release=lambda n=name, p=tuple(planes): [st.release(f"{n}.{x}") for x in p])
    for name, array in st.arrays.items():
        if name.rsplit(".", 1)[-1] not in PLANE_NAMES and not name.startswith("qllama."):
            if st.dtypes[name] != "F32":
                raise QllamaError(f"{path}: tensor {name} is {st.dtypes[name]}, expected F32")
            tensors[name] = SourceTensor(tuple(array.shape), "F32", array, lambda a: a)
    check_tensors(path, args, {n: t.shape for n, t in tensors.items()})
    tokenizer = None
    if "qllama.tokenizer" in st.arrays:
        from ..tokenizer import Tokenizer
        try:
            tokenizer = Tokenizer.from_bytes(meta.get("qllama.tokenizer_kind"), st.arrays["qllama.tokenizer"].tobytes(),
                                             settings)
        except QllamaError as e:
            raise QllamaError(f"{path}: {e}") from None
    info = {k.removeprefix("qllama."): v for k, v in meta.items()
            if k in ("qllama.version", "qllama.format_version", "qllama.source", "qllama.source_sha256")}
    return Checkpoint(path, "qllama", args, tensors, tokenizer, meta.get("qllama.chat_template"), info,
                      release=st.release_all)


def _input_width(path, name, args: ModelArgs, padded: int, group_size: int) -> int:
    """The true input width of a matrix (its planes are padded to whole groups), from ModelArgs."""
    width = args.q_dim if "o_proj" in name else args.hidden_dim if "down_proj" in name else args.dim
    if not 0 <= padded - width < group_size:
        raise QllamaError(f"{path}: tensor {name} planes do not fit an input width of {width}")
    return width
