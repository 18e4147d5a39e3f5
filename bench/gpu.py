#!/usr/bin/env python
"""The CUDA backend on a real GPU: kernel checks on real shapes, then decode/prefill speed.

    python bench/gpu.py              # on a machine with an NVIDIA GPU: about 6-8 minutes
    python bench/gpu.py --simulate   # tiny shapes in Numba's CUDA simulator: the script runs, no GPU

1. Every kernel against the CPU reference at real shapes: each FORMATS entry's GEMV (1 and 4
   tokens) and GEMM (64 tokens) on a 4096 x 4096 matrix of random planes vs numpy's
   x @ dequantize().T; attention (32 heads over 8 KV heads, 1 and 32 tokens after 1000 cached) vs
   qllama.model.attention; RMSNorm, RoPE, SwiGLU.
2. SmolLM2-135M-Instruct (qllama's default GGUF, pulled when missing) on the GPU: greedy tokens vs
   the CPU's float32 reference, and `qllama bench`'s numbers.
3. Random-weight TinyLlama- and Llama-2-7B-shape models at 4 bits (q4_g32 = Q4_0), 8 bits
   (q8_g32 = Q8_0) and Q4_K (Q6_K output head, as Q4_K_M has): decode and 512-token prefill
   tokens/s, the weights' effective GB/s against the measured device-to-device copy bandwidth,
   and prefill TFLOP/s. Weights are built on the host one layer at a time and copied on the device
   per layer, so no multi-GB file is written.
Prints the card's name and a markdown table for bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import numpy as np

TINY = dict(dim=64, hidden=96, layers=2, heads=4, kv=2, vocab=96)
SHAPES = {"TinyLlama-1.1B": dict(dim=2048, hidden=5632, layers=22, heads=32, kv=4, vocab=32000),
          "Llama-2-7B": dict(dim=4096, hidden=11008, layers=32, heads=32, kv=32, vocab=32000)}
FORMATS_RUN = [("4-bit q4_g32 (Q4_0)", "q4_g32", None), ("8-bit q8_g32 (Q8_0)", "q8_g32", None),
               ("Q4_K, Q6_K head", "q4_k", "q6_k")]


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--simulate", action="store_true", help="Numba's CUDA simulator, tiny shapes (minutes, no GPU)")
    p.add_argument("--skip-checks", action="store_true", help="only the speed runs")
    return p.parse_args()


def random_planes(fmt, shape, rng):
    """Random codes over their whole range; small fp16 scales of either sign (activations stay finite)."""
    from qllama.quantize.planes import NUMPY
    from qllama.quantize.tensor import QuantizedTensor, plane_shapes
    planes = {}
    for name, (s, dtype) in plane_shapes(fmt, shape).items():
        if NUMPY[dtype] == np.float16:
            planes[name] = (rng.standard_normal(s, dtype=np.float32) * 2e-3).astype(np.float16)
        else:
            planes[name] = rng.integers(0, 256, s, dtype=np.uint8)
    return QuantizedTensor(fmt, shape, planes)


def synced(f):
    """Seconds f() takes, the GPU's work included."""
    from numba import cuda
    cuda.synchronize()
    t = time.perf_counter()
    f()
    cuda.synchronize()
    return time.perf_counter() - t


def copy_bandwidth(simulate: bool) -> float:
    """Device-to-device copy GB/s, counting bytes read + written (what a kernel's reads compete with)."""
    from numba import cuda
    n = (1 << 20) if simulate else (1 << 30)
    src, dst = cuda.to_device(np.ones(n // 4, np.float32)), cuda.device_array(n // 4, np.float32)
    dst.copy_to_device(src)
    best = min(synced(lambda: dst.copy_to_device(src)) for _ in range(5))
    return 2 * n / best / 1e9


def rel_err(got, want) -> float:
    return float(np.abs(np.asarray(got, np.float64) - want).max() / max(np.abs(want).max(), 1e-30))


def check_kernels(simulate: bool, rng) -> bool:
    """Every kernel vs its numpy reference; prints one line each, returns whether all agree."""
    from numba import cuda
    from qllama.cuda.linear import CudaQuantLinear
    from qllama.cuda.ops import CudaOps
    from qllama.cuda.tensor import Tensor
    from qllama.model import attention, rmsnorm, silu
    from qllama.quantize.formats import FORMATS
    from qllama.rope import apply_rope
    ok = True

    def report(name, err, limit=1e-4, extra=""):
        nonlocal ok
        ok &= err < limit
        print(f"  {name:34s} max rel err {err:.2e} {'ok' if err < limit else 'FAIL'} {extra}", flush=True)

    def dev(a):
        return Tensor(cuda.to_device(np.ascontiguousarray(a, np.float32)))
    rows, n_in = (8, 2 * 256) if simulate else (4096, 4096)
    for name, fmt in FORMATS.items():
        q = random_planes(fmt, (rows, n_in), rng)
        w, lin = q.dequantize().astype(np.float64), CudaQuantLinear(q)
        for n in (1, 4, 10) if simulate else (1, 4, 64):
            x = rng.standard_normal((n, n_in)).astype(np.float32)
            xd = dev(x)
            got = np.asarray(lin(xd))
            speed = ""
            if n == 1 and not simulate:
                s = min(synced(lambda: lin(xd)) for _ in range(5))
                speed = f"GEMV {q.nbytes / s / 1e9:6.0f} GB/s"
            report(f"{name} {'GEMV' if n <= 8 else 'GEMM'} n={n}", rel_err(got, x @ w.T), extra=speed)
    ops = CudaOps()
    heads, kv, hd, pos = (4, 2, 8, 5) if simulate else (32, 8, 128, 1000)
    for n in (1, 3) if simulate else (1, 32):
        q = rng.standard_normal((n, heads, hd)).astype(np.float32)
        k, v = (rng.standard_normal((pos + n, kv, hd)).astype(np.float32) for _ in range(2))
        got = ops.attend(dev(q), cuda.to_device(k), cuda.to_device(v), pos, heads // kv)
        report(f"attention n={n} after {pos}", rel_err(got, attention(q, k, v, pos, heads // kv)))
    dim = 32 if simulate else 4096
    x, g = rng.standard_normal((3, dim)).astype(np.float32), rng.standard_normal(dim).astype(np.float32)
    report("rmsnorm", rel_err(ops.rmsnorm(dev(x), cuda.to_device(g), 1e-5), rmsnorm(x, g, 1e-5)))
    report("silu_mul", rel_err(ops.silu_mul(dev(x), dev(x[::-1])), silu(x) * x[::-1]))
    xh = x.reshape(3, -1, hd)
    ang = rng.uniform(0, 100, (3, hd // 2))
    c, s = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    report("rope", rel_err(ops.rope(dev(xh), c, s), apply_rope(xh, c, s)))
    return ok


def clone(lin):
    """A copy of a CudaLinear in new device memory (each layer its own weights, as in a real model)."""
    from numba import cuda
    other = copy.copy(lin)
    planes = []
    for a in lin.planes[:6]:
        b = cuda.device_array_like(a)
        b.copy_to_device(a)
        planes.append(b)
    other.planes = tuple(planes) + lin.planes[6:]
    return other


def random_model(shape: dict, fmt_name: str, head_name: str | None, rng):
    """(weights, args) of a random model of this shape, in the forward pass's names."""
    from numba import cuda
    from qllama.config import ModelArgs
    from qllama.cuda.linear import CudaQuantLinear
    from qllama.quantize.formats import FORMATS
    d, h, hd = shape["dim"], shape["hidden"], shape["dim"] // shape["heads"]
    args = ModelArgs(d, h, shape["layers"], shape["heads"], shape["kv"], hd, shape["vocab"], 1e-5, 10000.0,
                     4096, False)
    fmt = FORMATS[fmt_name]
    kv = shape["kv"] * hd
    layer = {"self_attn.q_proj.weight": (d, d), "self_attn.k_proj.weight": (kv, d),
             "self_attn.v_proj.weight": (kv, d), "self_attn.o_proj.weight": (d, d),
             "mlp.gate_proj.weight": (h, d), "mlp.up_proj.weight": (h, d), "mlp.down_proj.weight": (d, h)}
    first = {name: CudaQuantLinear(random_planes(fmt, s, rng)) for name, s in layer.items()}
    norm = cuda.to_device(np.ones(d, np.float32))
    w = {"model.embed_tokens.weight": CudaQuantLinear(random_planes(fmt, (shape["vocab"], d), rng)),
         "lm_head.weight": CudaQuantLinear(random_planes(FORMATS[head_name or fmt_name], (shape["vocab"], d), rng)),
         "model.norm.weight": norm}
    for i in range(shape["layers"]):
        p = f"model.layers.{i}."
        w.update({p + name: lin if i == 0 else clone(lin) for name, lin in first.items()})
        w[p + "input_layernorm.weight"] = w[p + "post_attention_layernorm.weight"] = norm
    return w, args


def speed(w, args, n_decode: int, n_prefill: int, rng) -> dict:
    """Decode tokens/s (one token a pass, logits to the host each time) and prefill tokens/s."""
    from qllama.cache import Span
    from qllama.cuda.cache import DeviceKVCache
    from qllama.cuda.ops import CudaOps
    from qllama.model import Ops, forward
    from qllama.rope import inverse_frequencies
    o = CudaOps()
    ops = Ops(o.rmsnorm, o.rope, o.silu_mul, o.attend, o.concat)
    cache, inv_freq = DeviceKVCache(args, n_prefill + n_decode + 8), inverse_frequencies(args)

    def run(tokens, pos):
        return np.asarray(forward(w, args, [Span(cache, pos, len(tokens))], inv_freq, np.asarray(tokens),
                                  True, None, ops))
    ids = rng.integers(0, args.vocab_size, n_prefill)
    run(ids[:16], 0)                                   # compile and warm
    prefill_s = synced(lambda: run(ids, 0))
    run(ids[:4], 0)
    t = time.perf_counter()
    token = 1
    for i in range(n_decode):
        token = int(run([token], 4 + i)[-1].argmax())
    decode_s = time.perf_counter() - t
    return {"decode": n_decode / decode_s, "prefill": n_prefill / prefill_s}


def matrix_bytes(w) -> int:
    return sum(lin.nbytes for name, lin in w.items() if hasattr(lin, "family") and "embed_tokens" not in name)


def smollm2(simulate: bool) -> list[str]:
    """Greedy agreement with the CPU reference and `qllama bench` numbers for the default GGUF."""
    import qllama
    from qllama.benchmark import bench
    if simulate:
        from pathlib import Path
        path = Path(__file__).resolve().parents[1] / "tests" / "models" / "stories260K" / "stories260K.bin"
    else:
        from qllama.pull import ensure_default_gguf
        path = ensure_default_gguf()
    n = 3 if simulate else 16
    prompt = [1, 400, 300]
    gpu = qllama.load(path, ctx=64 if simulate else 1024, device="cuda")
    ref = qllama.load(path, ctx=64 if simulate else 1024, reference=True)
    got, want = (list(m.generate(prompt, max_tokens=n, temperature=0, stop_ids=())) for m in (gpu, ref))
    same = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), len(want))
    print(f"  {path.name}: greedy tokens equal to the CPU reference for {same} of {n}", flush=True)
    if simulate:
        return []
    result = bench(lambda: qllama.load(path, ctx=1024, device="cuda"), prefill_lengths=(128, 512), n_decode=64)
    print("  " + result.report().replace("\n", "\n  "), flush=True)
    return [f"| {path.name} | as stored | {result.bytes_per_token / 1e9:.2f} | {result.decode_tok_s:.1f} | "
            f"{result.decode_gb_s:.0f} | | {result.prefill_tok_s.get(512, 0):.0f} | |"]


def main() -> None:
    args = parse()
    if args.simulate:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"       # before numba is imported
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from numba import cuda
    from qllama.cuda import require
    if args.simulate:
        from qllama.cuda.simulator import prepare
        prepare()
    from qllama.errors import QllamaError
    try:
        require()
    except QllamaError as e:
        raise SystemExit(f"error: {e}")
    from machine_info import git_commit
    card = "Numba CUDA simulator" if args.simulate else cuda.get_current_device().name
    card = card.decode() if isinstance(card, bytes) else card
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    bandwidth = copy_bandwidth(args.simulate)
    print(f"card: {card}; device-to-device copy {bandwidth:.0f} GB/s (read + write)", flush=True)
    ok = True
    if not args.skip_checks:
        print("kernels vs the numpy references:", flush=True)
        ok = check_kernels(args.simulate, rng)
    print("SmolLM2 (stories260K in the simulator):", flush=True)
    table = smollm2(args.simulate)
    shapes = {"tiny": TINY} if args.simulate else SHAPES
    n_decode, n_prefill = (2, 10) if args.simulate else (32, 512)
    for shape_name, shape in shapes.items():
        for label, fmt_name, head in FORMATS_RUN:
            w, margs = random_model(shape, fmt_name, head, rng)
            r = speed(w, margs, n_decode, n_prefill, rng)
            nbytes = matrix_bytes(w)
            gbs = nbytes * r["decode"] / 1e9
            flops = 2 * sum(lin.shape[0] * lin.shape[1] for name, lin in w.items()
                            if hasattr(lin, "family") and "embed_tokens" not in name)
            line = (f"| random {shape_name} | {label} | {nbytes / 1e9:.2f} | {r['decode']:.1f} | {gbs:.0f} | "
                    f"{100 * gbs / bandwidth:.0f}% | {r['prefill']:.0f} | {flops * r['prefill'] / 1e12:.2f} |")
            print(line, file=sys.stderr, flush=True)
            table.append(line)
            del w
    print(f"\n`python bench/gpu.py{' --simulate' if args.simulate else ''}`; {card}; "
          f"copy bandwidth {bandwidth:.0f} GB/s; commit {git_commit()}; {time.perf_counter() - start:.0f} s\n")
    print(f"| model | weights | matrix GB | decode tok/s | weights GB/s | of copy BW | prefill {n_prefill} tok/s "
          "| prefill TFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(table))
    if not ok:
        raise SystemExit("error: a kernel disagrees with its reference (see above)")


if __name__ == "__main__":
    main()
