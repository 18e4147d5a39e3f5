#!/usr/bin/env python
"""qllama against llama.cpp (through llama-cpp-python) on the same GGUF file: prefill and decode speed.

    python bench/vs_llamacpp.py [--shape smollm2|tinyllama|llama7b] [--types q4_0,q8_0] [--threads 2]
                                [--runs 3] [--workdir DIR]

1. The model file. smollm2 is the real SmolLM2-135M-Instruct GGUF that `qllama pull` fetches (Q4_1
   matrices, a Q8_0 embedding), used as is (type "q4_1"; --types is ignored). tinyllama (dim 2048,
   22 layers, 32 heads, 4 KV heads, hidden 5632, vocab 32000) and llama7b (dim 4096, 32 layers, 32
   heads, hidden 11008, vocab 32000) are random-weight GGUFs written once per ggml type into the
   work folder and reused: normal * 0.02 from numpy's default_rng (one seeded generator per tensor,
   so the bytes are reproducible), norms ones, every matrix (token_embd and output too) in the
   requested type via gguf.quants.quantize. Types named lcpp-* are what users download: the f16
   random model run through llama.cpp's own quantizer (llama_model_quantize), with its tensor mix
   (Q4_K_M: Q6_K for output.weight and part of attn_v / ffn_down). The file carries general.architecture = llama, the
   llama.* hyperparameters and the tokenizer.ggml.* keys of the LLaMA SPM vocabulary from
   ../shared/models/llama-tokenizer, so llama.cpp accepts it. It is written tensor by tensor
   (GGUFWriter.add_tensor_info, then write_tensor_data), so at most one tensor is in memory.
2. Runs, interleaved qllama, llama.cpp, qllama, ... --runs times each, every run a fresh child
   process with T threads (numba.set_num_threads(T) and OPENBLAS_NUM_THREADS=T for qllama, whose
   numpy parts may call BLAS; n_threads = n_threads_batch = T for llama.cpp).
   qllama: `qllama.benchmark.bench` (n_ctx 1024, float16 KV cache). llama.cpp: Llama(n_ctx=1024,
   n_batch=512), float16 KV cache (its default); an 8-token eval warms up, then prefill is one
   timed `llm.eval(ids)` of 128 or 512 random token ids from position 0 (after `llm.reset()`), and
   decode evals 65 random tokens one at a time after an 8-token prompt, the timer starting after
   the first (qllama's rule; qllama's decode also samples greedily, which costs an argmax). Each
   timed eval ends with llama_synchronize. Load time (the file in the page cache: every run after
   the first) and the child's peak RSS (VmHWM) are reported apart from the speeds. Run it on an idle
   machine: with a core taken by other work, threads that wait on each other (OpenMP in
   llama.cpp, Numba in qllama) slow down by orders of magnitude; the report gives the load average.
3. Prints a Markdown table, ready for bench/RESULTS.md: the median of each measure (min-max when
   --runs > 1), the ratio qllama / llama.cpp, and effective decode bandwidth, here the file's
   tensor bytes times tokens per second for both (qllama's own `qllama bench` skips the unused
   embedding rows, so its GB/s differs).

llama-cpp-python is a bench-only extra (`pip install 'qllama[bench]'`, which compiles llama.cpp,
about 10 minutes); without it the script says so and exits 1. On a CPU with AMX (Intel Xeon,
Sapphire Rapids and later) its native build crashed in llama_decode on Q4_K files (2026-12-02);
build it without AMX: CMAKE_ARGS="-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8
-mno-amx-bf16' -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'" pip install
--force-reinstall --no-deps --no-cache-dir llama-cpp-python==0.3.36.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from machine_info import REPO, git_commit, machine_line, version  # noqa: E402 (bench/ is on sys.path)
VOCAB_GGUF = REPO / "tests" / "models" / "llama-tokenizer" / "ggml-vocab-llama-spm.gguf"
PREFILL_LENGTHS = (128, 512)
N_DECODE = 64
N_CTX, N_BATCH = 1024, 512          # llama.cpp's context and batch; qllama gets the same context
WARMUP_TOKENS = 8                   # qllama's bench warms its prefill with 8 tokens and prompts with 8
SEED = 0
CHUNK_VALUES = 1 << 22              # weights generated and quantized at a time: 16 MiB of float32
RESULT_MARK = "RESULT "             # the line of a child's stdout that carries its JSON
MiB, GB = 2**20, 10**9


@dataclass(frozen=True)
class Shape:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_dim: int
    vocab_size: int
    ctx: int                        # llama.context_length

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


SHAPES = {
    "tinyllama": Shape(2048, 22, 32, 4, 5632, 32000, 2048),
    "llama7b": Shape(4096, 32, 32, 32, 11008, 32000, 4096),
    "tiny": Shape(256, 2, 4, 2, 704, 32000, 2048),          # hidden: only to check the script works
}
FILE_TYPES = {"q4_0": "MOSTLY_Q4_0", "q8_0": "MOSTLY_Q8_0", "f16": "MOSTLY_F16"}  # gguf.LlamaFileType members
# made the way published GGUFs are: the F16 random model run through llama.cpp's own quantizer
# (llama_model_quantize: its tensor mix, e.g. Q6_K for output.weight even in a Q4_0 file)
LLAMACPP_TYPES = {"lcpp-q4_0": "MOSTLY_Q4_0", "lcpp-q4_k_m": "MOSTLY_Q4_K_M", "lcpp-q6_k": "MOSTLY_Q6_K",
                  "lcpp-q5_k_m": "MOSTLY_Q5_K_M", "lcpp-q8_0": "MOSTLY_Q8_0"}


# ---------------------------------------------------------------- the random-weight GGUF

def tensor_list(s: Shape) -> list[tuple[str, tuple[int, ...]]]:
    """(GGUF name, numpy shape (out, in)) in convert_hf_to_gguf's order."""
    kv = s.n_kv_heads * s.head_dim
    tensors = [("token_embd.weight", (s.vocab_size, s.dim))]
    for i in range(s.n_layers):
        p = f"blk.{i}."
        tensors += [
            (p + "attn_norm.weight", (s.dim,)),
            (p + "attn_q.weight", (s.n_heads * s.head_dim, s.dim)),
            (p + "attn_k.weight", (kv, s.dim)),
            (p + "attn_v.weight", (kv, s.dim)),
            (p + "attn_output.weight", (s.dim, s.n_heads * s.head_dim)),
            (p + "ffn_norm.weight", (s.dim,)),
            (p + "ffn_gate.weight", (s.hidden_dim, s.dim)),
            (p + "ffn_up.weight", (s.hidden_dim, s.dim)),
            (p + "ffn_down.weight", (s.dim, s.hidden_dim)),
        ]
    tensors += [("output_norm.weight", (s.dim,)), ("output.weight", (s.vocab_size, s.dim))]
    return tensors


def tensor_nbytes(shape: tuple[int, ...], qtype) -> int:
    import gguf
    if len(shape) == 1:
        return 4 * shape[0]                                    # norms: float32
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return shape[0] * (shape[1] // block) * type_size


def random_tensor(index: int, shape: tuple[int, ...], qtype):
    """Norms -> float32 ones; matrices -> normal * 0.02 quantized to qtype: uint8 (out, bytes per row)."""
    import gguf
    import numpy as np
    if len(shape) == 1:
        return np.ones(shape, np.float32)
    rows, cols = shape
    out = np.empty((rows, tensor_nbytes((1, cols), qtype)), np.uint8)
    rng = np.random.default_rng([SEED, index])
    step = max(1, CHUNK_VALUES // cols)
    for r0 in range(0, rows, step):
        r1 = min(r0 + step, rows)
        w = rng.standard_normal((r1 - r0, cols), dtype=np.float32)
        w *= 0.02
        out[r0:r1] = gguf.quants.quantize(w, qtype).view(np.uint8)    # F16 comes back as float16
    return out


def copy_tokenizer(writer, vocab_path: Path, vocab_size: int) -> None:
    """Every tokenizer.ggml.* key of the vocab-only GGUF, with its GGUF value types."""
    import gguf
    from qllama.readers.gguf_fields import field_value
    reader = gguf.GGUFReader(vocab_path)
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.ggml."):
            continue
        main = gguf.GGUFValueType(field.types[0])
        sub = gguf.GGUFValueType(field.types[-1]) if main == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field_value(reader, field), main, sub)
    n_tokens = len(reader.fields["tokenizer.ggml.tokens"].data)
    if n_tokens != vocab_size:
        raise SystemExit(f"error: {vocab_path} has {n_tokens} tokens, the shape needs {vocab_size}")


def write_random_gguf(path: Path, name: str, s: Shape, type_name: str, vocab_path: Path) -> None:
    """A random-weight llama GGUF at shape s, every matrix in ggml type `type_name`; written to
    path + '.part' and renamed after it reads back, so an existing `path` is a complete file."""
    import gguf
    import numpy as np
    qtype = gguf.GGMLQuantizationType[type_name.upper()]
    tmp = path.with_name(path.name + ".part")
    writer = gguf.GGUFWriter(tmp, "llama")
    writer.add_name(f"random {name} {type_name}")
    writer.add_context_length(s.ctx)
    writer.add_embedding_length(s.dim)
    writer.add_block_count(s.n_layers)
    writer.add_feed_forward_length(s.hidden_dim)
    writer.add_head_count(s.n_heads)
    writer.add_head_count_kv(s.n_kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(s.head_dim)
    writer.add_file_type(int(gguf.LlamaFileType[FILE_TYPES[type_name]]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    copy_tokenizer(writer, vocab_path, s.vocab_size)
    tensors = tensor_list(s)
    for tname, shape in tensors:
        writer.add_tensor_info(tname, shape, np.dtype(np.float32), tensor_nbytes(shape, qtype),
                               raw_dtype=None if len(shape) == 1 else qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    start, live = time.perf_counter(), sys.stderr.isatty()
    for i, (tname, shape) in enumerate(tensors):
        writer.write_tensor_data(random_tensor(i, shape, qtype))
        if live:
            print(f"\r  tensor {i + 1}/{len(tensors)} ({time.perf_counter() - start:.0f} s)", end="",
                  file=sys.stderr, flush=True)
    writer.close()
    print(f"{chr(13) if live else ''}  {len(tensors)} tensors in {time.perf_counter() - start:.1f} s",
          file=sys.stderr, flush=True)
    check_gguf(tmp, tensors, qtype)
    os.replace(tmp, path)


def llamacpp_quantized(source: Path, path: Path, ftype: str) -> Path:
    """llama.cpp's quantizer (llama_model_quantize, all cores) on the F16 file -> path, via a .part file."""
    import llama_cpp
    tmp = path.with_name(path.name + ".part")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_" + ftype)
    params.nthread = os.cpu_count() or 1
    print(f"quantizing {source.name} to {ftype} with llama.cpp", file=sys.stderr, flush=True)
    start = time.perf_counter()
    if llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params) != 0:
        raise SystemExit(f"error: llama.cpp could not quantize {source} to {ftype}")
    os.replace(tmp, path)
    print(f"  {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return path


def check_gguf(path: Path, tensors, qtype) -> None:
    """Read the file back: the same tensors, shapes and types, and every byte within the file."""
    import gguf
    reader = gguf.GGUFReader(path)
    got = {t.name: t for t in reader.tensors}
    if list(got) != [n for n, _ in tensors]:
        raise SystemExit(f"error: {path} reads back with other tensors than were written")
    for name, shape in tensors:
        t = got[name]
        want = gguf.GGMLQuantizationType.F32 if len(shape) == 1 else qtype
        if tuple(int(d) for d in reversed(t.shape.tolist())) != shape or t.tensor_type != want \
                or int(t.n_bytes) != tensor_nbytes(shape, qtype):
            raise SystemExit(f"error: {path}: tensor {name} reads back as {t.tensor_type.name} {t.shape.tolist()}")


def model_file(shape: str, type_name: str, workdir: Path) -> Path:
    if shape == "smollm2":
        from qllama.pull import ensure_default_gguf
        return ensure_default_gguf()
    s = SHAPES[shape]
    path = workdir / f"random-{shape}-{type_name}.gguf"
    if path.exists():
        print(f"reusing {path}", file=sys.stderr)
        return path
    if type_name in LLAMACPP_TYPES:
        return llamacpp_quantized(model_file(shape, "f16", workdir), path, LLAMACPP_TYPES[type_name])
    if not VOCAB_GGUF.exists():
        raise SystemExit(f"error: {VOCAB_GGUF} (the LLaMA vocabulary the random model carries) is missing")
    import gguf
    qtype = gguf.GGMLQuantizationType[type_name.upper()]
    need = sum(tensor_nbytes(shp, qtype) for _, shp in tensor_list(s))
    free = shutil.disk_usage(workdir).free
    if free < need * 1.05:
        raise SystemExit(f"error: the {shape} {type_name} file needs {need / GB:.1f} GB in {workdir}, "
                         f"{free / GB:.1f} GB is free; use --workdir on a bigger disk")
    print(f"writing {path} ({need / MiB:,.0f} MiB of random weights)", file=sys.stderr, flush=True)
    write_random_gguf(path, shape, s, type_name, VOCAB_GGUF)
    return path


def file_facts(path: Path) -> dict:
    """Tensor bytes and the llama.* hyperparameters, from the file itself."""
    import gguf
    from qllama.readers.gguf_fields import gguf_metadata
    reader = gguf.GGUFReader(path)
    meta = {k: v for k, v in gguf_metadata(reader).items() if k.startswith("llama.")}
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    types = sorted({t.tensor_type.name for t in reader.tensors})
    return {"tensor_bytes": sum(int(t.n_bytes) for t in reader.tensors), "meta": meta,
            "vocab": int(embd.shape[-1]), "ggml_types": types}


# ---------------------------------------------------------------- the children: one run each

def child_qllama(path: Path, threads: int) -> dict:
    import numba
    numba.set_num_threads(threads)
    import qllama
    if Path(qllama.__file__).resolve().parents[1] != REPO:      # another install on this Python's path
        raise SystemExit(f"error: this Python imports qllama from {qllama.__file__}, not from {REPO}")
    from qllama.benchmark import bench
    r = bench(lambda: qllama.load(path, ctx=N_CTX), PREFILL_LENGTHS, N_DECODE, seed=SEED)
    return {"prefill": r.prefill_tok_s, "decode": r.decode_tok_s, "load_s": r.load_s,
            "threads": numba.get_num_threads(), "peak_mib": peak_rss_mib()}


def child_llamacpp(path: Path, threads: int) -> dict:
    import llama_cpp
    import numpy as np
    from llama_cpp import Llama

    def run(ids):                                       # llama_decode may return before the CPU work ends
        llm.eval(ids)
        if hasattr(llama_cpp, "llama_synchronize"):
            llama_cpp.llama_synchronize(llm.ctx)

    start = time.perf_counter()
    llm = Llama(model_path=str(path), n_threads=threads, n_threads_batch=threads, n_ctx=N_CTX,
                n_batch=N_BATCH, verbose=False)
    load_s = time.perf_counter() - start
    rng = np.random.default_rng(SEED)
    vocab = llm.n_vocab()
    prompt = rng.integers(0, vocab, WARMUP_TOKENS).tolist()
    llm.reset()
    run(prompt)                                         # warm up
    prefill = {}
    for n in PREFILL_LENGTHS:
        ids = rng.integers(0, vocab, n).tolist()
        llm.reset()                                     # the next eval starts at position 0
        t = time.perf_counter()
        run(ids)
        prefill[n] = n / (time.perf_counter() - t)
    llm.reset()
    run(prompt)
    tokens = rng.integers(0, vocab, N_DECODE + 1).tolist()
    run(tokens[:1])                                     # timer starts after the first token
    t = time.perf_counter()
    for tok in tokens[1:]:
        run([tok])
    decode = N_DECODE / (time.perf_counter() - t)
    if hasattr(llm, "close"):
        llm.close()
    return {"prefill": prefill, "decode": decode, "load_s": load_s, "threads": threads, "peak_mib": peak_rss_mib()}


def peak_rss_mib() -> float:
    """This process's own peak resident set (VmHWM; ru_maxrss would carry the parent's at fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_child(which: str, path: Path, threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", which, "--file", str(path),
           "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if out.returncode != 0 or not lines:
        tail = "\n".join((out.stderr + out.stdout).splitlines()[-20:])
        raise SystemExit(f"error: the {which} run failed (exit code {out.returncode}):\n{tail}")
    result = json.loads(lines[-1][len(RESULT_MARK):])
    result["prefill"] = {int(k): v for k, v in result["prefill"].items()}
    return result


# ---------------------------------------------------------------- the report

def llamacpp_system_info() -> str:
    import llama_cpp
    info = llama_cpp.llama_print_system_info()
    return (info.decode(errors="replace") if isinstance(info, bytes) else str(info)).strip()


def cell(values: list[float], digits: int = 1) -> str:
    mid = f"{statistics.median(values):,.{digits}f}"
    return mid if len(values) == 1 else f"{mid} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def ratio(a: list[float], b: list[float]) -> str:
    return f"{statistics.median(a) / statistics.median(b):.2f}"


def report(args, command: str, results: list[dict]) -> str:
    first = results[0]["facts"]["meta"]
    lines = [
        f"### qllama vs llama.cpp: {args.shape} shape, {args.threads} thread{'s' if args.threads > 1 else ''}",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine_line()}; "
        f"load average {args.load_average:.2f} at start (other work skews threaded timings)",
        f"- Software: Python {platform.python_version()}, numpy {version('numpy')}, numba {version('numba')}, "
        f"qllama {version('qllama')} (git {git_commit()}), llama-cpp-python {version('llama-cpp-python')}",
        f"- llama.cpp system info: `{llamacpp_system_info()}`",
        "- Model: " + ("SmolLM2-135M-Instruct, the real GGUF (Q4_1, Q8_0 embedding)" if args.shape == "smollm2"
                        else "random weights (normal * 0.02, norms ones), every matrix in the type")
        + f"; dim {first.get('llama.embedding_length')}, {first.get('llama.block_count')} layers, "
          f"{first.get('llama.attention.head_count')} heads, {first.get('llama.attention.head_count_kv')} KV heads, "
          f"hidden {first.get('llama.feed_forward_length')}, vocab {results[0]['facts']['vocab']}",
        f"- Method: median of {args.runs} run{'s' if args.runs > 1 else ''} each (min-max in brackets), "
        f"interleaved qllama, llama.cpp, ...; every run a fresh process, load excluded; context {N_CTX}, "
        f"float16 KV cache, llama.cpp n_batch {N_BATCH}; prefill from position 0 after an {WARMUP_TOKENS}-token "
        f"warm-up; decode {N_DECODE} tokens after the first; GB/s = the file's tensor bytes x decode tok/s",
        "",
        "| type | file MiB | measure | qllama | llama.cpp | qllama / llama.cpp |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in results:
        q, l = r["qllama"], r["llamacpp"]
        size = r["facts"]["tensor_bytes"]
        label, mib = r["type"], f"{size / MiB:,.0f}"
        for n in PREFILL_LENGTHS:
            qv, lv = [x["prefill"][n] for x in q], [x["prefill"][n] for x in l]
            lines.append(f"| {label} | {mib} | prefill {n} tok/s | {cell(qv)} | {cell(lv)} | {ratio(qv, lv)} |")
            label = mib = ""
        qv, lv = [x["decode"] for x in q], [x["decode"] for x in l]
        lines.append(f"|  |  | decode tok/s | {cell(qv, 2)} | {cell(lv, 2)} | {ratio(qv, lv)} |")
        qg, lg = [v * size / GB for v in qv], [v * size / GB for v in lv]
        lines.append(f"|  |  | decode GB/s | {cell(qg, 2)} | {cell(lg, 2)} | {ratio(qg, lg)} |")
        qv, lv = [x["load_s"] for x in q], [x["load_s"] for x in l]
        lines.append(f"|  |  | load s (warm page cache) | {cell(qv, 2)} | {cell(lv, 2)} | {ratio(qv, lv)} |")
        qv, lv = [x["peak_mib"] for x in q], [x["peak_mib"] for x in l]
        lines.append(f"|  |  | peak RSS MiB | {cell(qv, 0)} | {cell(lv, 0)} | {ratio(qv, lv)} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="smollm2", choices=["smollm2", *SHAPES],
                        metavar="{smollm2,tinyllama,llama7b}", help="Model shape (default smollm2, the real model).")
    parser.add_argument("--types", default="q4_0,q8_0",
                        help="Comma-separated ggml types of the random models (default q4_0,q8_0): "
                             "q4_0, q8_0, f16 written by the gguf package, or lcpp-q4_0, lcpp-q4_k_m, "
                             "lcpp-q5_k_m, lcpp-q6_k, lcpp-q8_0: the f16 model through llama.cpp's quantizer.")
    parser.add_argument("--threads", type=int, default=2, help="Threads for both runtimes (default 2).")
    parser.add_argument("--runs", type=int, default=3, help="Runs of each runtime, interleaved (default 3).")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/qllama-bench-llamacpp"),
                        help="Folder for the random GGUF files, reused between runs (default "
                             "/tmp/qllama-bench-llamacpp); llama7b q8_0 needs ~7.2 GB.")
    parser.add_argument("--child", choices=["qllama", "llamacpp"], help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads < 1 or args.runs < 1:
        parser.error("--threads and --runs must be at least 1")

    if args.child:
        result = (child_qllama if args.child == "qllama" else child_llamacpp)(args.file, args.threads)
        print(RESULT_MARK + json.dumps(result), flush=True)
        return

    try:
        import llama_cpp  # noqa: F401
    except Exception as e:  # ImportError, or a missing/broken libllama (OSError, RuntimeError)
        print(f"llama_cpp is not importable ({type(e).__name__}: {e}); it is a bench-only extra: "
              f"pip install 'qllama[bench]' (compiles llama.cpp, ~10 min)", file=sys.stderr)
        sys.exit(1)
    if args.shape == "smollm2":
        types = ["q4_1"]
    else:
        types = [t.strip().lower() for t in args.types.split(",") if t.strip()]
        bad = [t for t in types if t not in FILE_TYPES and t not in LLAMACPP_TYPES]
        if not types or bad:
            parser.error(f"--types: {', '.join(bad) or 'none given'}; known: "
                         f"{', '.join([*FILE_TYPES, *LLAMACPP_TYPES])}")
    command = shlex.join(["python", "bench/vs_llamacpp.py", *sys.argv[1:]])
    args.load_average = os.getloadavg()[0]
    if args.load_average > 0.5:
        print(f"warning: load average {args.load_average:.2f}: other work is running, and threads that wait "
              f"on each other (OpenMP, Numba) slow down badly when a core is taken", file=sys.stderr)
    workdir = args.workdir.expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    results = []
    for type_name in types:
        path = model_file(args.shape, type_name, workdir)
        r = {"type": type_name, "facts": file_facts(path), "qllama": [], "llamacpp": []}
        for i in range(args.runs):
            for which in ("qllama", "llamacpp"):
                res = run_child(which, path, args.threads)
                r[which].append(res)
                pre = ", ".join(f"prefill {n} {v:.1f}" for n, v in res["prefill"].items())
                print(f"{type_name} run {i + 1}/{args.runs} {which:8s}: {pre}, decode {res['decode']:.2f} tok/s "
                      f"({res['threads']} threads, load {res['load_s']:.2f} s)", file=sys.stderr, flush=True)
        results.append(r)
    print(report(args, command, results))


if __name__ == "__main__":
    main()
