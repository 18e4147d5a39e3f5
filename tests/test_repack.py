"""kernels/repack.py lays stored bytes out exactly as the numpy statement of the layout does
(layout.interleave_bytes over the planes split out of ggml blocks), for every part of its job: the
fields of ggml blocks, a row order, the rows after the last block of eight, zero padding rows, the
8-bit codes' bias, fused parts, and the count of non-finite fp16 scales."""
import numpy as np
import pytest

from qllama.kernels import layout, repack
from qllama.quantize.formats import FORMATS
from qllama.quantize.planes import split_ggml_blocks
from qllama.quantize.tensor import QuantizedTensor

RNG = np.random.default_rng(7)


def ggml_blocks(fmt, rows, n_blocks):
    """Random bytes as ggml blocks, with finite fp16 scales (small positive halves)."""
    block = sum(p.nbytes for p in fmt.planes)
    raw = RNG.integers(0, 256, (rows, n_blocks * block), dtype=np.uint8)
    offset = 0
    for name in fmt.ggml_fields:
        spec = next(p for p in fmt.planes if p.name == name)
        if spec.dtype == "F16":
            cols = offset + np.arange(spec.nbytes)[None, :] + np.arange(n_blocks)[:, None] * block
            raw[:, cols.reshape(-1)] = RNG.uniform(0.01, 1, (rows, n_blocks)).astype(np.float16).view(np.uint8)
        offset += spec.nbytes
    return raw, split_ggml_blocks(raw, rows, n_blocks, fmt.planes, fmt.ggml_fields)


def expected(fmt, raw, rows, n_blocks, order, layouts, interleave, pad):
    """The numpy way: split the fields, reorder the rows, pad, interleave whole blocks of eight."""
    planes = split_ggml_blocks(raw[order], rows, n_blocks, fmt.planes, fmt.ggml_fields)
    out = {}
    for lay in layouts:
        spec = next(p for p in fmt.planes if p.name == lay.name)
        a = planes[lay.name].view(np.uint8).reshape(rows, -1)
        if pad:
            a = np.concatenate([a, np.zeros((-rows % 8, a.shape[1]), np.uint8)])
        whole = a.shape[0] // 8 * 8 if interleave else 0
        b = a.copy()
        b[:whole] = layout.interleave_bytes(a[:whole], spec.nbytes, lay.chunk) ^ np.uint8(lay.xor)
        out[lay.name] = b
    return out


@pytest.mark.parametrize("name, rows, interleave, pad", [
    ("q4_g32", 21, True, False), ("q8_g32", 19, True, False), ("q8_g32", 19, False, False),
    ("q4a_g32", 16, True, False), ("q4_k", 13, True, True), ("q5_k", 8, True, True), ("q6_k", 11, True, True)])
def test_ggml_blocks_are_laid_out_as_the_numpy_statement(name, rows, interleave, pad):
    fmt = FORMATS[name]
    n_blocks = 3
    raw, _ = ggml_blocks(fmt, rows, n_blocks)
    order = RNG.permutation(rows)
    layouts = [repack.PlaneLayout(p.name, p.chunk, 0x80 if p.name == "qweight" and fmt.bits == 8 else 0)
               for p in fmt.planes]
    got, bad = repack.pack([repack.stored_ggml(raw, (rows, n_blocks * fmt.group_size), fmt, order)],
                           layouts, interleave, pad)
    assert bad == 0
    for lay_name, want in expected(fmt, raw, rows, n_blocks, order, layouts, interleave, pad).items():
        assert np.array_equal(got[lay_name], want), lay_name


def test_fused_parts_follow_each_other_and_planes_equal_blocks():
    fmt = FORMATS["q4_g32"]
    layouts = [repack.PlaneLayout("qweight", 4), repack.PlaneLayout("scales", 2)]
    parts, wants = [], []
    for rows in (16, 8, 24):
        raw, planes = ggml_blocks(fmt, rows, 2)
        as_planes = repack.stored_planes(QuantizedTensor(fmt, (rows, 64), planes))
        parts.append(as_planes)
        wants.append(expected(fmt, raw, rows, 2, np.arange(rows), layouts, True, False))
    got, _ = repack.pack(parts, layouts, True, False)
    for lay in layouts:
        assert np.array_equal(got[lay.name], np.concatenate([w[lay.name] for w in wants]))


def test_non_finite_scales_are_counted():
    fmt = FORMATS["q4_k"]
    raw, _ = ggml_blocks(fmt, 9, 2)
    block = sum(p.nbytes for p in fmt.planes)
    raw[3, block:block + 2] = np.array([np.inf], np.float16).view(np.uint8)     # row 3, block 1: d
    raw[8, 2:4] = np.array([np.nan], np.float16).view(np.uint8)                  # row 8 (a padded block), dmin
    layouts = [repack.PlaneLayout(p.name, p.chunk) for p in fmt.planes]
    _, bad = repack.pack([repack.stored_ggml(raw, (9, 512), fmt)], layouts, True, True)
    assert bad == 2
