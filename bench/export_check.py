#!/usr/bin/env python
"""llama.cpp runs qllama's exported GGUF files: same tokens and logits as qllama, and the quality of
qllama's GPTQ Q4_0 against llama.cpp's own Q4_0, with llama.cpp as the evaluator.

    python bench/export_check.py [--parts agree,quality,kquant] [--workdir DIR] [--threads 2] [--reuse]
                                 [--agree-formats q4_k_m,q6_k]

Part `agree`: each source is quantized by `qllama.quantize.convert` twice, to OUT.gguf and to its
OUT.safetensors twin. llama.cpp (llama_cpp.Llama, logits_all) loads the .gguf; qllama loads both.
Reported per file: whether llama.cpp's tokenizer gives qllama's ids for a prompt; the largest
difference of llama.cpp's logits from qllama's at every prompt position (relative to qllama's
largest logit) and how many positions pick the same argmax; the greedy continuations (llama.cpp:
argmax then eval, one token at a time; qllama: generate(temperature=0)) and where they first
differ. The Hugging Face fixtures also compare both runtimes' logits with transformers' (their
logits.npy), an outside oracle for the exported hyperparameters (GQA, head_dim, RoPE scaling).
Sources: stories260K (llama2.c .bin), SmolLM2-135M-Instruct's Q4_1 GGUF dequantized to F32 (its
Q4_1 blocks would be copied as they are), the tests' Hugging Face fixtures.

Part `quality`: the float model as an F32 GGUF (stories260K.gguf as shipped; SmolLM2 dequantized, as
bench/quality.py treats it), llama.cpp's Q4_0 of it (llama_model_quantize, default parameters),
and qllama's Q4_0 .gguf of the same F32 file: absmax (ggml's rounding), the default scale search, and
GPTQ on --calibration /usr/share/common-licenses/Apache-2.0 (not the scored text), also with the
embedding and output head in Q4_0 (--embeddings-format q4_0: smaller than llama.cpp's). llama.cpp runs
every file over bench/data/gpl-3.txt (tokenized by llama.cpp) in windows of 512 tokens, scoring the
second half of each as qllama.perplexity does (llama.cpp's perplexity rules), and the KL divergence
from the F32 model and top-1 agreement are computed from its logits in float64.

Part `kquant`: the same float models, llama.cpp's Q4_K_M of each (llama_model_quantize) against
qllama's `--format q4_k_m` .gguf with and without --calibration (Apache-2.0), and qllama's q4_0 (g32,
searched) for comparison, judged by llama.cpp as in part `quality`; file sizes as bits per weight,
since where rows are not whole super-blocks of 256 llama.cpp falls back to Q5_0 and qllama to Q8_0.
Then, for every matrix both files hold in the same k-quant type, the relative RMS error of its
dequantized weights (the gguf package's dequantize) from the float weights: the k-quant search
against llama.cpp's, tensor by tensor. And since the fallbacks differ in size, two more files
isolate the search: llama.cpp's own Q4_K_M file with its k-quant matrices replaced by qllama's
blocks of the same type (same size, same everything else), with and without --calibration.

Needs llama-cpp-python in the same environment as qllama (`pip install -e '.[bench]'`, which compiles
llama.cpp, about 10 minutes); without it the script says so and exits 1. Prints Markdown.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from machine_info import REPO, git_commit, machine_line, version  # noqa: E402 (bench/ is on sys.path)

STORIES = REPO / "tests" / "models" / "stories260K"
FIXTURES = REPO / "tests" / "fixtures" / "hf"
TEXT = REPO / "bench" / "data" / "gpl-3.txt"
CALIBRATION = Path("/usr/share/common-licenses/Apache-2.0")
PROMPTS = {"stories": "Once upon a time, there was a little girl named Lily.",
           "smollm2": "The capital of France is Paris. The capital of Germany is"}
CTX = 512
N_GREEDY = 48


def llama(path: Path, threads: int, n_ctx: int = CTX):
    import llama_cpp
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, n_threads=threads,
                           n_threads_batch=threads, verbose=False)


def cpp_logits(llm, ids) -> np.ndarray:
    """(len(ids), vocab) float32 logits of ids run from position 0 with an empty cache."""
    llm.reset()
    llm.eval(list(map(int, ids)))
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


def cpp_greedy(llm, ids, n: int, stops) -> list[int]:
    llm.reset()
    llm.eval(list(map(int, ids)))
    out = []
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if token in stops:
            break
        out.append(token)
        llm.eval([token])
    return out


def first_difference(model, ids, a: list[int], b: list[int]) -> str:
    """Where qllama's greedy tokens a and llama.cpp's b part, and how far apart the two picks' logits
    are there in qllama (a prefill pass): a near-tie, or a real disagreement."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            logits = model.logits(list(ids) + a[:i])[-1]
            return f"differ at token {i + 1} (logits {abs(logits[x] - logits[y]):.3f} apart)"
    return "same" if len(a) == len(b) else f"same for {min(len(a), len(b))}, then one stops"


def float_gguf(source: Path, out: Path) -> Path:
    """Every tensor of a GGUF dequantized to F32, metadata kept: the float model both quantizers start from."""
    import gguf
    from qllama.readers.gguf_fields import field_value
    if out.exists():
        return out
    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(out, "llama")
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        writer.add_key_value(key, field_value(reader, field), field.types[0],
                             field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for t in reader.tensors:
        writer.add_tensor(t.name, gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def tensor_types(path: Path) -> str:
    import gguf
    counts = Counter(t.tensor_type.name for t in gguf.GGUFReader(path).tensors)
    return ", ".join(f"{n} {k}" for k, n in counts.most_common())


# ---------------------------------------------------------------- part 1: agreement

def agree_row(label, gguf_path, twin, ids, threads, oracle=None) -> str:
    import qllama
    q_gguf, q_twin = qllama.load(gguf_path), qllama.load(twin)
    tok = q_twin.tokenizer
    llm = llama(gguf_path, threads)
    text = tok.decode(ids)
    same_ids = llm.tokenize(text.encode("utf-8"), add_bos=tok.add_bos, special=False) == q_gguf.tokenizer.encode(text)
    ours, theirs = q_gguf.logits(ids), cpp_logits(llm, ids)
    twin_same = bool(np.array_equal(ours, q_twin.logits(ids)))
    rel = float(np.abs(theirs - ours).max() / np.abs(ours).max())
    # the yardstick: how far qllama's own int8-activation kernels are from its float32 reference path
    exact = qllama.load(gguf_path, reference=True).logits(ids)
    noise = float(np.abs(ours - exact).max() / np.abs(exact).max())
    argmax = int((theirs.argmax(-1) == ours.argmax(-1)).sum())
    stops = set(tok.stop_ids)
    mine = list(q_gguf.generate(ids, max_tokens=N_GREEDY, temperature=0))
    greedy = first_difference(q_gguf, ids, mine, cpp_greedy(llm, ids, N_GREEDY, stops))
    row = (f"| {label} | {tensor_types(gguf_path)} | {'yes' if same_ids else 'NO'} | {'yes' if twin_same else 'no'} "
           f"| {rel:.2e} | {noise:.2e} | {argmax}/{len(ids)} | {len(mine)} tokens: {greedy} |")
    if oracle is not None:
        scale = np.abs(oracle).max()
        row += f" {np.abs(theirs - oracle).max() / scale:.2e} / {np.abs(q_twin.logits(ids) - oracle).max() / scale:.2e} |"
    else:
        row += " |"
    del llm
    return row


def part_agree(work: Path, threads: int, out) -> None:
    from qllama.pull import ensure_default_gguf
    from qllama.quantize.convert import convert
    print("\n### llama.cpp loads qllama's .gguf\n", file=out)
    print("| file | tensors | same token ids | qllama: .gguf logits = .safetensors | llama.cpp vs qllama logits "
          "(max rel.) | qllama vs its float32 path | same argmax | greedy, llama.cpp vs qllama "
          "| vs transformers: llama.cpp / qllama |", file=out)
    print("|---|---|---|---|---|---|---|---|---|", file=out)
    smollm2 = float_gguf(ensure_default_gguf(), work / "smollm2-f32.gguf")
    jobs = [("stories260K.bin", STORIES / "stories260K.bin", fmt, {}, "stories")
            for fmt in ("q8_0", "q4_0", "q4_1", "q4_k_m")]
    jobs += [("SmolLM2 F32", smollm2, fmt, {}, "smollm2") for fmt in ("q8_0", "q4_0", "q4_1", "q4_k_m", "q6_k")]
    bpe = FIXTURES / "gqa_tied_f32" / "tokenizer.json"
    jobs += [(f"fixture {p.name}", p, "q8_0", {"tokenizer": bpe}, "fixture") for p in sorted(FIXTURES.iterdir())
             if p.is_dir()]
    for label, source, fmt, options, kind in jobs:
        if AGREE_FORMATS is not None and fmt not in AGREE_FORMATS:
            continue
        stem = work / f"{source.name.split('.')[0]}-{fmt}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the fixtures' 172-wide rows are stored as F32: said in the table
            for suffix in (".gguf", ".safetensors"):
                convert(source, stem.with_suffix(suffix), format=fmt, force=True, **options)
        oracle = None
        if kind == "fixture":
            ids = json.loads((source / "tokens.json").read_text())
            oracle = np.load(source / "logits.npy")
        else:
            import qllama
            ids = qllama.load(stem.with_suffix(".safetensors")).tokenizer.encode(PROMPTS[kind])
        if source.name == "llama3_untied_f32":  # qllama's GGUF reader does not read rope_freqs yet
            print(f"| {label} {fmt} | {tensor_types(stem.with_suffix('.gguf'))} | | | "
                  f"{llama3_row(stem, ids, threads, oracle)} |", file=out)
        else:
            print(agree_row(f"{label} {fmt}", stem.with_suffix(".gguf"), stem.with_suffix(".safetensors"), ids,
                            threads, oracle), file=out)
        out.flush()


def llama3_row(stem: Path, ids, threads: int, oracle) -> str:
    """llama.cpp's logits of the .gguf against qllama's of the .safetensors twin, and both against transformers'."""
    import qllama
    twin = stem.with_suffix(".safetensors")
    ours, exact = qllama.load(twin).logits(ids), qllama.load(twin, reference=True).logits(ids)
    theirs = cpp_logits(llama(stem.with_suffix(".gguf"), threads), ids)
    scale = np.abs(oracle).max()
    return (f"{np.abs(theirs - ours).max() / np.abs(ours).max():.2e} (vs the .safetensors) "
            f"| {np.abs(ours - exact).max() / np.abs(exact).max():.2e} "
            f"| {int((theirs.argmax(-1) == ours.argmax(-1)).sum())}/{len(ids)} | "
            f"| {np.abs(theirs - oracle).max() / scale:.2e} / {np.abs(ours - oracle).max() / scale:.2e}")


# ---------------------------------------------------------------- part 2: quality

def cpp_quantize(source: Path, out: Path, threads: int, ftype: str = "Q4_0") -> Path:
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = threads
    if llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama_model_quantize failed for {source}")
    return out


def float_models(work: Path) -> dict[str, Path]:
    from qllama.pull import ensure_default_gguf
    return {"stories260K (F32 GGUF as shipped)": STORIES / "stories260K.gguf",
            "SmolLM2-135M-Instruct (its Q4_1 GGUF dequantized to F32)": float_gguf(ensure_default_gguf(),
                                                                                   work / "smollm2-f32.gguf")}


REUSE = False   # --reuse: keep the files a previous run left in --workdir
AGREE_FORMATS = None   # --agree-formats: part agree runs only these formats (None: all)


def qllama_gguf(title: str, reference: Path, path: Path, label: str, **options) -> Path:
    from qllama.quantize.convert import convert
    if REUSE and path.exists():
        return path
    start = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert(reference, path, force=True, **options)
    print(f"  {title}: {label} in {time.monotonic() - start:.1f} s", file=sys.stderr)
    return path


def part_quality(work: Path, threads: int, out) -> None:
    for title, reference in float_models(work).items():
        stem = work / reference.stem
        files = {"llama.cpp Q4_0 (llama_model_quantize)": cpp_quantize(reference, Path(f"{stem}-cpp-q4_0.gguf"), threads)}
        gptq = {"calibration": CALIBRATION}
        for method, tag, options in (("absmax", "absmax", {"search": False}), ("search", "search", {}),
                                     ("GPTQ (--calibration Apache-2.0)", "gptq", gptq),
                                     ("GPTQ, --embeddings-format q4_0", "gptq-e4", {**gptq, "embeddings_format": "q4_0"})):
            files[f"qllama q4_0, {method}"] = qllama_gguf(title, reference, Path(f"{stem}-qllama-{tag}.gguf"),
                                                          f"qllama q4_0 {method}", format="q4_0", **options)
        judge(title, reference, files, threads, out)


def part_kquant(work: Path, threads: int, out) -> None:
    for title, reference in float_models(work).items():
        stem = work / reference.stem
        cpp = cpp_quantize(reference, Path(f"{stem}-cpp-q4_k_m.gguf"), threads, "Q4_K_M")
        files = {"llama.cpp Q4_K_M (llama_model_quantize)": cpp}
        for label, tag, options in (("qllama q4_k_m", "q4_k_m", {"format": "q4_k_m"}),
                                    ("qllama q4_k_m, --calibration Apache-2.0", "q4_k_m-cal",
                                     {"format": "q4_k_m", "calibration": CALIBRATION}),
                                    ("qllama q4_0 (g32, search)", "q4_0", {"format": "q4_0"})):
            files[label] = qllama_gguf(title, reference, Path(f"{stem}-qllama-{tag}.gguf"), label, **options)
        ours = {k: v for k, v in files.items() if k.startswith("qllama q4_k_m")}
        for label, path in ours.items():
            hybrid = swap_kquant_blocks(cpp, path, Path(f"{path.with_suffix('')}-in-cpp.gguf"))
            if hybrid is not None:
                files[f"llama.cpp Q4_K_M with the k-quant blocks of {label}"] = hybrid
        judge(title, reference, files, threads, out)
        tensor_errors(reference, cpp, ours, out)


def swap_kquant_blocks(cpp: Path, ours: Path, out: Path) -> Path | None:
    """llama.cpp's file with every k-quant matrix that ours holds in the same type replaced by our
    blocks; None if there is none."""
    import gguf
    from qllama.readers.gguf_fields import field_value
    mine = {t.name: t for t in gguf.GGUFReader(ours).tensors}
    reader = gguf.GGUFReader(cpp)
    swapped = [t.name for t in reader.tensors if t.tensor_type.name.endswith("_K") and t.name in mine
               and mine[t.name].tensor_type == t.tensor_type]
    if not swapped:
        return None
    writer = gguf.GGUFWriter(out, "llama")
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        writer.add_key_value(key, field_value(reader, field), field.types[0],
                             field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None)
    for t in reader.tensors:
        data = (mine[t.name] if t.name in swapped else t).data
        writer.add_tensor(t.name, np.ascontiguousarray(data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def tensor_errors(reference: Path, cpp: Path, ours: dict[str, Path], out) -> None:
    """Relative RMS error from the float weights of each matrix that llama.cpp's file and every one of
    ours hold in the same k-quant type (both dequantized by the gguf package)."""
    import gguf
    from gguf.quants import dequantize

    def matrices(path):
        return {t.name: t for t in gguf.GGUFReader(path).tensors if t.tensor_type.name.endswith("_K")}
    floats = {t.name: np.asarray(t.data, np.float64) for t in gguf.GGUFReader(reference).tensors}
    theirs, mine = matrices(cpp), {label: matrices(p) for label, p in ours.items()}
    shared = [n for n, t in theirs.items() if all(m.get(n) is not None and m[n].tensor_type == t.tensor_type
                                                  for m in mine.values())]
    if not shared:
        print("\nNo matrix is a k-quant in both files (rows not whole super-blocks of 256).", file=out)
        return
    print("\n| matrix | type | llama.cpp rel. RMS error | " + " | ".join(mine) + " |", file=out)
    print("|---|---|---|" + "---|" * len(mine), file=out)
    totals = {label: [] for label in ["llama.cpp"] + list(mine)}

    def rel(t, ref):
        err = dequantize(t.data, t.tensor_type).astype(np.float64).reshape(ref.shape) - ref
        return float(np.sqrt((err ** 2).sum() / (ref ** 2).sum()))
    for name in shared:
        ref = floats[name]
        row = [rel(theirs[name], ref)] + [rel(m[name], ref) for m in mine.values()]
        for label, e in zip(totals, row):
            totals[label].append(e)
        print(f"| {name} | {theirs[name].tensor_type.name} | " + " | ".join(f"{e:.5f}" for e in row) + " |", file=out)
    print("| mean | | " + " | ".join(f"{np.mean(v):.5f}" for v in totals.values()) + " |", file=out)
    out.flush()


def judge(title: str, reference: Path, files: dict[str, Path], threads: int, out) -> None:
    """llama.cpp runs the float reference and every file over TEXT: perplexity, KL from F32, top-1."""
    from qllama.perplexity import log_softmax, mean_se, split_windows
    text = TEXT.read_text(encoding="utf-8").removesuffix("\n")
    ref = llama(reference, threads)
    add_bos = ref.metadata.get("tokenizer.ggml.add_bos_token", "true") == "true"
    tokens = ref.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False)
    windows = split_windows(tokens, CTX, ref.token_bos() if add_bos else None)
    runs = {name: llama(path, threads) for name, path in files.items()}
    first = CTX // 2
    nll = {name: [] for name in ["F32"] + list(files)}
    kl = {name: [] for name in files}
    top1 = {name: [] for name in files}
    for window in windows:
        targets, rows = window[first + 1:], np.arange(len(window) - first - 1)
        ref_logp = log_softmax(cpp_logits(ref, window)[first:-1])
        nll["F32"].append(-ref_logp[rows, targets])
        for name, llm in runs.items():
            logp = log_softmax(cpp_logits(llm, window)[first:-1])
            nll[name].append(-logp[rows, targets])
            kl[name].append((np.exp(ref_logp) * (ref_logp - logp)).sum(-1))
            top1[name].append(logp.argmax(-1) == ref_logp.argmax(-1))
    n_params = sum(int(np.prod(t.shape)) for t in __import__("gguf").GGUFReader(reference).tensors)
    print(f"\n### {title}: {len(tokens):,} tokens, {len(windows)} windows of {CTX}, "
          f"{sum(map(len, nll['F32'])):,} scored\n", file=out)
    print("| file | tensors | bits/weight | perplexity | KL divergence from F32 | top-1 agreement |", file=out)
    print("|---|---|---|---|---|---|", file=out)
    for name, path in [("F32", reference)] + list(files.items()):
        m, se = mean_se(np.concatenate(nll[name]))
        row = f"| {name} | {tensor_types(path)} | {8 * path.stat().st_size / n_params:.3f} | {math.exp(m):.3f} ± {math.exp(m) * se:.3f} |"
        if name in kl:
            k, k_se = mean_se(np.concatenate(kl[name]))
            agree = np.concatenate(top1[name])
            row += f" {k:.5f} ± {k_se:.5f} | {agree.mean():.4f} |"
        else:
            row += " 0 | 1 |"
        print(row, file=out)
    out.flush()
    del ref, runs


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="agree,quality,kquant")
    p.add_argument("--workdir", type=Path, default=None, help="keep the files here (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reuse", action="store_true", help="keep qllama's files already in --workdir")
    p.add_argument("--agree-formats", default=None, help="part agree: only these formats (e.g. q4_k_m,q6_k)")
    args = p.parse_args()
    global REUSE, AGREE_FORMATS
    REUSE = args.reuse
    AGREE_FORMATS = None if args.agree_formats is None else set(args.agree_formats.split(","))
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python is not installed: pip install -e '.[bench]' (compiles llama.cpp)", file=sys.stderr)
        sys.exit(1)
    print(f"Machine: {machine_line()}; qllama git {git_commit()}, llama-cpp-python {version('llama_cpp_python')}, "
          f"gguf {version('gguf')}, numpy {version('numpy')}; {args.threads} threads")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for part in args.parts.split(","):
            {"agree": part_agree, "quality": part_quality, "kquant": part_kquant}[part](work, args.threads,
                                                                                      sys.stdout)


if __name__ == "__main__":
    main()
