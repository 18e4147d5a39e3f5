#!/usr/bin/env python
"""Bench `qllama quantize` at the Llama-2-7B shape: wall time and peak RSS for each format.

    python bench/quantize_7b.py [--workdir DIR] [--layers N] [--formats q8,q4] [--keep]

1. Makes a random float16 checkpoint in Hugging Face layout at the Llama-2-7B shape (dim 4096,
   32 layers, 32 heads, hidden 11008, vocab 32000; 6,738,415,616 parameters, 13.5 GB), sharded as
   transformers' `save_pretrained` does (at most 5 GB a shard, so three shards; the real
   Llama-2-7b-hf has two shards of 10 GB and 3.5 GB), with a `model.safetensors.index.json` and a
   transformers 4.x config.json. It is written shard by shard and tensor by tensor in row chunks,
   so the model is never held in memory. Weights: normal * 0.02 from numpy's default_rng seeded
   with 0 (one child generator per chunk, so threads can share the work and the bytes do not
   depend on the thread count); norms are ones, as a fresh LlamaRMSNorm. No tokenizer: `quantize`
   does not need one. A checkpoint already complete in the work folder is reused.
2. Runs `python -m qllama.cli quantize SRC OUT --format F --force` for each format in a child
   process and reads its peak RSS from `os.wait4` (`ru_maxrss`). The bench process itself stays
   small and never imports numpy (the checkpoint is written by another child), because a child
   started with vfork, as `subprocess` does, inherits its parent's RSS high-water mark.
3. Prints a Markdown table with the machine and the command, ready for bench/RESULTS.md.

`--layers N` keeps every width and uses N layers instead of 32, for a quick run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from machine_info import REPO, git_commit, machine_line, version  # noqa: E402 (bench/ is on sys.path)
DIM, N_LAYERS, N_HEADS, HIDDEN, VOCAB = 4096, 32, 32, 11008, 32000
MAX_SHARD_BYTES = 5 * 10**9          # transformers' default max_shard_size="5GB"
CHUNK_VALUES = 1 << 22                # values generated per task: 16 MiB of float32, 8 MiB of float16
SEED = 0
PEAK_RSS_TARGET_MIB = 2048            # the issue: peak RSS under 2 GB
MiB, GB = 2**20, 10**9


# ---------------------------------------------------------------- the checkpoint's shape and files

def hf_config(n_layers: int) -> dict:
    """meta-llama/Llama-2-7b-hf's config.json (transformers 4.x), with `n_layers` layers."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": DIM,
        "initializer_range": 0.02,
        "intermediate_size": HIDDEN,
        "max_position_embeddings": 4096,
        "model_type": "llama",
        "num_attention_heads": N_HEADS,
        "num_hidden_layers": n_layers,
        "num_key_value_heads": N_HEADS,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.38.2",
        "use_cache": True,
        "vocab_size": VOCAB,
    }


def tensor_list(n_layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) in LlamaForCausalLM's state_dict order, the order transformers shards in."""
    tensors = [("model.embed_tokens.weight", (VOCAB, DIM))]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        tensors += [
            (p + "self_attn.q_proj.weight", (DIM, DIM)),
            (p + "self_attn.k_proj.weight", (DIM, DIM)),
            (p + "self_attn.v_proj.weight", (DIM, DIM)),
            (p + "self_attn.o_proj.weight", (DIM, DIM)),
            (p + "mlp.gate_proj.weight", (HIDDEN, DIM)),
            (p + "mlp.up_proj.weight", (HIDDEN, DIM)),
            (p + "mlp.down_proj.weight", (DIM, HIDDEN)),
            (p + "input_layernorm.weight", (DIM,)),
            (p + "post_attention_layernorm.weight", (DIM,)),
        ]
    tensors += [("model.norm.weight", (DIM,)), ("lm_head.weight", (VOCAB, DIM))]
    return tensors


def n_values(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def plan_shards(tensors) -> list[list[tuple[str, tuple[int, ...]]]]:
    """transformers' greedy split: a new shard when the next tensor would pass MAX_SHARD_BYTES."""
    shards, current, size = [], [], 0
    for name, shape in tensors:
        nbytes = 2 * n_values(shape)
        if current and size + nbytes > MAX_SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    shards.append(current)
    return shards


def shard_names(n_shards: int) -> list[str]:
    return [f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors" for i in range(n_shards)]


def index_json(shards) -> dict:
    names = shard_names(len(shards))
    weight_map = {name: names[i] for i, shard in enumerate(shards) for name, _ in shard}
    total = sum(2 * n_values(shape) for shard in shards for _, shape in shard)
    return {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}


def safetensors_header(entries) -> bytes:
    """The 8-byte length + JSON header of a float16 safetensors file, tensors in the given order;
    padded with spaces to 8 bytes as the safetensors library does."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in entries:
        n = 2 * n_values(shape)
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def shard_order(shard):
    """The order the safetensors library writes a file in: by dtype (all F16 here), then name."""
    return sorted(shard)


def checkpoint_is_complete(folder: Path, n_layers: int) -> bool:
    """config.json and the index are written last, after every shard is complete and renamed into
    place; also check that they describe this shape and that every shard has its full size."""
    try:
        config = json.loads((folder / "config.json").read_text())
        index = json.loads((folder / "model.safetensors.index.json").read_text())
    except (OSError, ValueError):
        return False
    shards = plan_shards(tensor_list(n_layers))
    if config != hf_config(n_layers) or index != index_json(shards):
        return False
    for name, shard in zip(shard_names(len(shards)), shards):
        entries = shard_order(shard)
        expected = len(safetensors_header(entries)) + sum(2 * n_values(s) for _, s in entries)
        path = folder / name
        if not path.is_file() or path.stat().st_size != expected:
            return False
    return True


# ------------------------------------------------------------ writing it (in a child process)

def make_checkpoint(folder: Path, n_layers: int) -> None:
    import threading
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    tensors = tensor_list(n_layers)
    tensor_index = {name: i for i, (name, _) in enumerate(tensors)}
    shards = plan_shards(tensors)
    workers = max(1, min(8, len(os.sched_getaffinity(0))))
    buffers = threading.local()

    def random_block(key, rows, cols):
        # default_rng(0)'s SeedSequence, child `key`: the same bytes whatever the thread count
        rng = np.random.default_rng(np.random.SeedSequence(SEED, spawn_key=key))
        buf = getattr(buffers, "f32", None)   # a float32 scratch buffer per thread, reused
        if buf is None or buf.size < rows * cols:
            buf = buffers.f32 = np.empty(max(rows * cols, CHUNK_VALUES), np.float32)
        block = buf[:rows * cols].reshape(rows, cols)
        rng.standard_normal(out=block, dtype=np.float32)
        block *= 0.02
        return block.astype(np.float16)

    def chunks(pool, name, shape):
        if len(shape) == 1:
            yield np.ones(shape, np.float16)
            return
        rows, cols = shape
        step = max(1, CHUNK_VALUES // cols)
        pending = deque()
        for c, r0 in enumerate(range(0, rows, step)):
            pending.append(pool.submit(random_block, (tensor_index[name], c), min(step, rows - r0), cols))
            if len(pending) >= 2 * workers:   # a bounded window: memory stays ~ a few chunks a worker
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("config.json", "model.safetensors.index.json"):  # mark incomplete until the end
        (folder / stale).unlink(missing_ok=True)
    names = shard_names(len(shards))
    with ThreadPoolExecutor(workers) as pool:
        for file_name, shard in zip(names, shards):
            start = time.perf_counter()
            entries = shard_order(shard)
            header = safetensors_header(entries)
            expected = len(header) + sum(2 * n_values(s) for _, s in entries)
            path, partial = folder / file_name, folder / (file_name + ".partial")
            if path.is_file() and path.stat().st_size == expected:
                print(f"  {file_name}: already complete, kept", file=sys.stderr, flush=True)
                continue
            with open(partial, "wb") as f:
                f.write(header)
                for name, shape in entries:
                    for block in chunks(pool, name, shape):
                        f.write(memoryview(block).cast("B"))
                if f.tell() != expected:
                    raise RuntimeError(f"{partial}: wrote {f.tell()} bytes, expected {expected}")
                f.flush()
                os.fsync(f.fileno())   # on disk now, not written back while a quantize is timed
            os.replace(partial, path)
            print(f"  {file_name}: {expected / GB:.2f} GB, {len(entries)} tensors, "
                  f"{time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    (folder / "model.safetensors.index.json").write_text(json.dumps(index_json(shards), indent=2) + "\n")
    (folder / "config.json").write_text(json.dumps(hf_config(n_layers), indent=2) + "\n")


# ------------------------------------------------------------------------- measuring children

def run_measured(cmd: list[str], log_path: Path | None = None) -> tuple[int, float, int, float]:
    """Run `cmd`; return (exit code, wall s, peak RSS in bytes, user+sys CPU s) of that child."""
    log = open(log_path, "wb") if log_path is not None else None
    try:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT if log else None)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:   # Ctrl-C: SIGTERM lets quantize's atomic writer remove its temporary file
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)   # reaped here, not by Popen
    finally:
        if log is not None:
            log.close()
    return proc.returncode, wall, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime  # KiB on Linux


# ---------------------------------------------------------------------------------- reporting

def filesystem_type(path: Path) -> str | None:
    """The type of the mount holding `path` (the longest mount point that is a prefix of it)."""
    best, fstype = "", None
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) < 3:
                continue
            mount = fields[1].replace("\\040", " ")
            if (str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                best, fstype = mount, fields[2]
    except OSError:
        pass
    return fstype


def need_space(folder: Path, nbytes: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < nbytes:
        sys.exit(f"error: {what} needs {nbytes / GB:.1f} GB free in {folder}; only {free / GB:.1f} GB is. "
                 f"Use --workdir on a bigger disk.")


def tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/qllama-bench-7b"),
                        help="Folder for the checkpoint and the outputs (default /tmp/qllama-bench-7b); "
                             "needs ~22 GB free for 32 layers.")
    parser.add_argument("--layers", type=int, default=N_LAYERS, help="Layers (default 32, the real shape).")
    parser.add_argument("--formats", default="q8,q4", help="Comma-separated quantize formats (default q8,q4).")
    parser.add_argument("--keep", action="store_true", help="Keep the quantized outputs (the checkpoint is "
                                                            "always kept, to be reused).")
    parser.add_argument("--make-checkpoint", type=Path, help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args()
    if args.layers < 1:
        parser.error("--layers must be at least 1")
    if args.make_checkpoint is not None:
        make_checkpoint(args.make_checkpoint, args.layers)
        return
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not formats:
        parser.error("--formats names no format")

    command = shlex.join(["python", "bench/quantize_7b.py", *sys.argv[1:]])
    workdir = args.workdir.expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    folder = workdir / f"llama2-7b-shape-{args.layers}L"
    tensors = tensor_list(args.layers)
    shards = plan_shards(tensors)
    n_params = sum(n_values(s) for _, s in tensors)
    source_bytes = index_json(shards)["metadata"]["total_size"]

    if filesystem_type(workdir) in ("tmpfs", "ramfs"):
        print(f"warning: {workdir} is on tmpfs: the checkpoint and outputs live in RAM and disk reads are "
              f"not measured; consider --workdir on a disk", file=sys.stderr)

    if checkpoint_is_complete(folder, args.layers):
        print(f"reusing the checkpoint in {folder}", file=sys.stderr)
        generated = None
    else:
        need_space(workdir, source_bytes, "the checkpoint")
        print(f"writing a random float16 checkpoint ({n_params:,} parameters, {source_bytes / GB:.2f} GB, "
              f"{len(shards)} shards) to {folder}", file=sys.stderr, flush=True)
        code, wall, rss, cpu = run_measured([sys.executable, str(Path(__file__).resolve()),
                                             "--make-checkpoint", str(folder), "--layers", str(args.layers)])
        if code != 0 or not checkpoint_is_complete(folder, args.layers):
            sys.exit(f"error: writing the checkpoint failed (exit code {code})")
        generated = (wall, rss, cpu)
    on_disk = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())

    results = []
    for fmt in formats:
        out = workdir / f"out-{fmt}.safetensors"
        log = workdir / f"quantize-{fmt}.log"
        need_space(workdir, int(source_bytes * 0.6), f"the {fmt} output")
        print(f"quantize --format {fmt} ...", file=sys.stderr, flush=True)
        code, wall, rss, cpu = run_measured([sys.executable, "-m", "qllama.cli", "quantize", str(folder), str(out),
                                             "--format", fmt, "--force"], log)
        if code != 0:
            print(tail(log), file=sys.stderr)
            sys.exit(f"error: quantize --format {fmt} failed (exit code {code}); log in {log}")
        size = out.stat().st_size
        summary = tail(log, 1)
        if not args.keep:
            out.unlink()
        results.append((fmt, wall, rss, size, 8 * size / n_params, cpu, summary))
        print(f"  {wall:.1f} s, peak RSS {rss / MiB:.0f} MiB; {summary}", file=sys.stderr, flush=True)

    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    shape = (f"dim {DIM}, {args.layers} layers, {N_HEADS} heads, hidden {HIDDEN}, vocab {VOCAB}"
             + ("" if args.layers == N_LAYERS else f" (the real model has {N_LAYERS} layers)"))
    made = ("reused from an earlier run" if generated is None else
            f"written in {generated[0]:.1f} s (peak RSS {generated[1] / MiB:.0f} MiB, CPU {generated[2]:.1f} s)")
    lines = [
        f"### `qllama quantize`, Llama-2-7B shape, {args.layers} layers",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine_line()}; workdir on {filesystem_type(workdir) or 'unknown fs'}",
        f"- Software: Python {platform.python_version()}, numpy {version('numpy')}, numba {version('numba')}, "
        f"qllama {version('qllama')} (git {git_commit()})",
        f"- Source: random float16, Hugging Face layout, {shape}; {n_params:,} parameters, "
        f"{len(shards)} shard{'s' if len(shards) > 1 else ''}, {on_disk / MiB:,.0f} MiB ({on_disk / GB:.2f} GB); {made}",
        "",
        "| format | wall time s | peak RSS MiB | output MiB | bits/weight | CPU s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for fmt, wall, rss, size, bpw, cpu, _ in results:
        lines.append(f"| {fmt} | {wall:.1f} | {rss / MiB:,.0f} | {size / MiB:,.0f} | {bpw:.3f} | {cpu:.1f} |")
    over = [fmt for fmt, _, rss, *_ in results if rss / MiB >= PEAK_RSS_TARGET_MIB]
    lines += [
        "",
        "Wall time and peak RSS are the `qllama quantize` child's (`os.wait4`, `ru_maxrss`), start to exit, "
        "including Python start-up, Numba compilation on a cold cache and hashing the source; "
        "bits/weight = output file size * 8 / parameters (norms in float32, embeddings and head 8-bit, "
        "the header included); CPU s = user + system. "
        f"The bench process itself peaked at {own_peak / MiB:.0f} MiB (a floor under the peak RSS figures). "
        f"Target peak RSS < {PEAK_RSS_TARGET_MIB} MiB: "
        + ("met by every format." if not over else f"NOT met by {', '.join(over)}."),
    ]
    print("\n".join(lines))
    print(f"\n(checkpoint kept in {folder} for reuse: `rm -r {shlex.quote(str(folder))}` frees "
          f"{on_disk / GB:.1f} GB; quantize logs in {workdir})", file=sys.stderr)


if __name__ == "__main__":
    main()
