"""`qllama quantize --format q4_k_m / q5_k_m / q6_k`: the k-quant search, llama.cpp's tensor mix, and
the k-quant .gguf export.

Oracles: llama.cpp's own quantizer for the mix (tests/fixtures/kquant_mix.json, made by
tests/fixtures/make_kquant_mix.py); the `gguf` package's dequantize for the exported blocks; the
table's quantize_ref (ggml's plain min/max rounding, itself tested against gguf) as the baseline the
search must beat in weighted squared error.
"""
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors import safe_open

import qllama
from cli_helpers import assert_one_line_error, qllama as qllama_cli
from paths import MODELS
from qllama.checkpoint import open_checkpoint, rotate_half_to_interleaved
from qllama.linear import QuantLinear
from qllama.model import Model
from qllama.quantize.calibration import input_moments
from qllama.quantize.convert import convert
from qllama.quantize.formats import FORMATS
from qllama.quantize.gguf_writer import ggml_name
from qllama.quantize.kquant_mix import MIXES, ggml_types, qllama_format
from qllama.quantize.tensor import QuantizedTensor, quantize_matrix
from qllama.readers.gguf_fields import field_value, gguf_metadata

MIX_ORACLE = json.loads((Path(__file__).parent / "fixtures" / "kquant_mix.json").read_text())
STORIES_GGUF = MODELS / "stories260K" / "stories260K.gguf"
KQUANTS = [f for f in FORMATS.values() if f.kind == "k-quant"]
FTYPE = {"Q4_K_M": "q4_k_m", "Q5_K_M": "q5_k_m", "Q6_K": "q6_k"}


@pytest.mark.parametrize("model", sorted(MIX_ORACLE["models"]))
@pytest.mark.parametrize("ftype", sorted(FTYPE))
def test_mix_is_llama_cpps(model, ftype):
    spec = MIX_ORACLE["models"][model]
    ours = ggml_types(MIXES[FTYPE[ftype]], {n: tuple(s) for n, s in spec["shapes"].items()}, spec["args"]["n_layers"])
    assert ours == spec["types"][ftype]


def test_fallback_formats_are_the_nearest_at_or_above_that_fit():
    for qtype, n_in in [("Q5_0", 288), ("Q5_1", 288), ("Q8_0", 288), ("Q4_K", 512), ("Q6_K", 256), ("Q4_0", 96)]:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
        fits = [f for f in FORMATS.values() if f.ggml_type and n_in % f.group_size == 0
                and f.bits_per_weight >= 8 * size / block]
        chosen = qllama_format(qtype, n_in)
        assert chosen in fits and chosen.bits_per_weight == min(f.bits_per_weight for f in fits), qtype
    assert qllama_format("Q5_0", 288).ggml_type == "Q8_0"
    assert qllama_format("F16", 200) is None            # rows of no whole blocks stay float


def weighted_error(fmt, planes, x, w):
    return float(np.sum(w * (fmt.dequantize_planes(planes) - x) ** 2, dtype=np.float64))


def real_super_blocks() -> np.ndarray:
    """stories260K's matrices (real trained weights), cut into rows of 256."""
    reader = gguf.GGUFReader(STORIES_GGUF)
    parts = [np.asarray(t.data, np.float32).reshape(-1) for t in reader.tensors if len(t.shape) == 2]
    flat = np.concatenate(parts)
    return flat[:flat.size // 256 * 256].reshape(-1, 256)[:1024]


@pytest.mark.parametrize("fmt", KQUANTS, ids=lambda f: f.name)
def test_search_beats_plain_rounding_in_weighted_error(fmt):
    rng = np.random.default_rng(3)
    gaussian = rng.standard_normal((512, 256)).astype(np.float32) * 0.02
    heavy = rng.standard_t(3, (512, 256)).astype(np.float32) * 0.02     # outliers, as real weights have
    for x in (gaussian, heavy, real_super_blocks()):
        for w in (np.ones_like(x), np.broadcast_to(rng.lognormal(0, 1.5, 256).astype(np.float32), x.shape)):
            searched = weighted_error(fmt, fmt.quantize_planes(x, w), x, w)
            plain = weighted_error(fmt, fmt.quantize_ref(x), x, w)
            assert searched < 0.97 * plain, (fmt.name, searched / plain)


@pytest.mark.parametrize("fmt", KQUANTS, ids=lambda f: f.name)
def test_searched_blocks_dequantize_in_the_gguf_package_as_in_qllama(fmt):
    x = np.random.default_rng(5).standard_normal((64, 256)).astype(np.float32)
    x[:, 7] = 0.0                                       # a zero column, and a whole zero block
    x[3] = 0.0
    planes = fmt.quantize_planes(x, np.ones_like(x))
    q = QuantizedTensor(fmt, x.shape, planes)
    blocks = np.concatenate([planes[f].view(np.uint8).reshape(64, -1) for f in fmt.ggml_fields], axis=1)
    theirs = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[fmt.ggml_type])
    assert np.array_equal(theirs, q.dequantize())
    assert np.all(q.dequantize()[3] == 0)


def float_source(path: Path, spec: dict) -> Path:
    """The oracle's untied model (every width a multiple of 256) as an F32 GGUF with stories260K's
    vocabulary (512 pieces, the model's vocab size): what `qllama quantize` starts from."""
    args, rng = spec["args"], np.random.default_rng(11)
    stories = gguf.GGUFReader(STORIES_GGUF)
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(256)
    w.add_embedding_length(args["dim"])
    w.add_block_count(args["n_layers"])
    w.add_feed_forward_length(args["hidden_dim"])
    w.add_head_count(args["n_heads"])
    w.add_head_count_kv(args["n_kv_heads"])
    w.add_rope_dimension_count(args["dim"] // args["n_heads"])
    w.add_layer_norm_rms_eps(1e-5)
    for key, field in stories.fields.items():
        if key.startswith("tokenizer."):
            w.add_key_value(key, field_value(stories, field), field.types[0],
                            field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None)
    for name, shape in spec["shapes"].items():
        value = 1 + 0.1 * rng.standard_normal(shape) if len(shape) == 1 else rng.standard_t(4, shape) * 0.05
        w.add_tensor(name, value.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def q4_k_m_exports(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kq")
    source = float_source(tmp / "f32.gguf", MIX_ORACLE["models"]["untied_ffn512"])
    paths = tmp / "q.safetensors", tmp / "q.gguf"
    for path in paths:
        convert(source, path, format="q4_k_m")
    return paths


def test_q4_k_m_gguf_has_llama_cpps_types_and_blocks(q4_k_m_exports):
    st, out = q4_k_m_exports
    reader = gguf.GGUFReader(out)
    assert gguf_metadata(reader)["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q4_K_M
    assert {t.name: t.tensor_type.name for t in reader.tensors} == \
        MIX_ORACLE["models"]["untied_ffn512"]["types"]["Q4_K_M"]
    args = qllama.load(st).args
    with safe_open(st, "numpy") as f:
        formats = json.loads(f.metadata()["qllama.tensor_formats"])
        for t in reader.tensors:
            if len(t.shape) < 2:
                continue
            hf = next(n for n in formats if ggml_name(n) == t.name)
            fmt = FORMATS[formats[hf]]
            planes = {p.name: f.get_tensor(f"{hf}.{p.name}") for p in fmt.planes}
            rows = planes["qweight"].shape[0]
            ours = QuantizedTensor(fmt, (rows, int(t.shape[0])), planes).dequantize()
            heads = {"attn_q": args.n_heads, "attn_k": args.n_kv_heads}.get(t.name.split(".")[-2])
            if heads is not None:                   # GGUF's interleaved RoPE rows
                ours = ours[rotate_half_to_interleaved(heads, args.head_dim)]
            theirs = gguf.quants.dequantize(t.data, t.tensor_type)
            assert np.array_equal(theirs, ours), t.name


def test_q4_k_m_gguf_runs_natively_as_its_safetensors_twin(q4_k_m_exports):
    st, out = q4_k_m_exports
    a, b = qllama.load(st), qllama.load(out)
    ids = a.tokenizer.encode("Once upon a time")
    assert np.array_equal(a.logits(ids), b.logits(ids))
    model = Model(open_checkpoint(out))                 # k-quant blocks run as they are, nothing requantized
    matrices = [w for name, w in model.weights.items() if len(w.shape) == 2]
    assert all(isinstance(w, QuantLinear) for w in matrices)
    assert {w.fmt.name for w in matrices} == {"q4_k", "q6_k"}


def test_calibration_weighs_the_k_quant_search(tmp_path):
    """--calibration: each k-quant matrix is searched under its input columns' mean squared
    activation, which lowers the activation-weighted error of every matrix."""
    source = MODELS / "stories260K" / "stories260K.bin"
    text = tmp_path / "calib.txt"
    text.write_text("Once upon a time there was a little girl. She liked to play in the park with her dog.\n" * 20)
    reports = convert(source, tmp_path / "b.safetensors", format="q4_k_m", calibration=text)
    assert {r.how for r in reports if r.format == "q8_g32"} == {"gptq"}    # q4_k_m's fallback for 64-wide rows
    ckpt = open_checkpoint(source)
    moments = input_moments(ckpt, text)
    fmt = FORMATS["q4_k"]
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.3.mlp.down_proj.weight"):
        w, importance = ckpt.tensors[name].float32(), np.diag(moments[name]).astype(np.float32)
        errors = [np.sum(importance * (quantize_matrix(w, fmt, imp).dequantize() - w) ** 2)
                  for imp in (None, importance)]
        assert errors[1] < errors[0], name


def test_k_quant_mix_takes_no_group_size(tmp_path):
    result = qllama_cli("quantize", MODELS / "stories260K" / "stories260K.bin", tmp_path / "o.gguf",
                        "--format", "q4_k_m", "--group-size", "64")
    assert_one_line_error(result, "q4_k_m", "--group-size")
    assert not (tmp_path / "o.gguf").exists()


def test_list_formats_names_the_mixes():
    out = qllama_cli("quantize", "--list-formats").stdout
    for name in ("q4_k_m", "q5_k_m", "q6_k"):
        assert any(line.split()[0] == name and "k-quant mix" in line for line in out.splitlines()), name
