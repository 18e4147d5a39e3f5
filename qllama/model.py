"""The numpy float32 reference forward pass of a LLaMA model, and the Model that runs it.

This is the truth every fast path is tested against, and it is itself tested against Hugging Face
transformers and karpathy's llama2.c sample. It reads top to bottom in the order of the math
(llama2.c run.c `forward`): rmsnorm -> qkv -> RoPE -> attention over the cache -> wo + residual ->
rmsnorm -> SwiGLU -> w2 + residual -> final norm -> logits.
"""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import Callable

import numba
import numpy as np

from . import plane_cache
from .api import TextAPI
from .cache import KVCache, Span
from .checkpoint import Checkpoint, SourceTensor, open_checkpoint
from .config import ModelArgs
from .errors import QllamaError
from .kernels import elementwise
from .kernels.attention import attention as attention_kernel
from .kernels.warmup import prepare_kernels
from .kernels.repack import Stored, stored_ggml, stored_planes
from .linear import DEFAULT_PATH, DenseLinear, QuantLinear, fusable
from .quantize.formats import BY_GGML_TYPE, nearest_format
from .quantize.tensor import requantize
from .rope import apply_rope, inverse_frequencies, rope_at
from .session import Session

KV_DTYPES = {"f16": np.float16, "f32": np.float32}
FLOAT_TYPES = ("F32", "F16", "BF16", "F64")   # stored as floats: DenseLinear
DEFAULT_CTX = 4096  # like llama.cpp: a long-context model gets this unless asked for more


def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: int, n_rep: int) -> np.ndarray:
    """q: (n, n_heads, hd) at positions pos..pos+n; k, v: (pos+n, n_kv_heads, hd) -> (n, n_heads*hd).
    The n_rep query heads that share a key/value head are stacked, so each KV head is one matmul."""
    n, n_heads, hd = q.shape
    kv_heads = n_heads // n_rep
    qg = q.reshape(n, kv_heads, n_rep, hd).transpose(1, 2, 0, 3).reshape(kv_heads, n_rep * n, hd)
    scores = (qg @ k.transpose(1, 2, 0)) / np.float32(np.sqrt(hd))     # (kv_heads, n_rep*n, pos+n)
    scores = scores.reshape(kv_heads, n_rep, n, k.shape[0])
    causal = np.arange(k.shape[0])[None, :] > (pos + np.arange(n))[:, None]
    scores[..., causal] = -np.inf
    out = softmax(scores).reshape(kv_heads, n_rep * n, k.shape[0]) @ v.transpose(1, 0, 2)
    return out.reshape(kv_heads, n_rep, n, hd).transpose(2, 0, 1, 3).reshape(n, n_heads * hd)


def attend_reference(q: np.ndarray, keys: np.ndarray, values: np.ndarray, pos: int, n_rep: int) -> np.ndarray:
    """attention() on the cache's keys and values as float32 (a copy when the cache is float16)."""
    return attention(q, keys.astype(np.float32, copy=False), values.astype(np.float32, copy=False), pos, n_rep)


def attend_kernel(q: np.ndarray, keys: np.ndarray, values: np.ndarray, pos: int, n_rep: int) -> np.ndarray:
    """The Numba kernel, reading a float16 cache in place (as its bits)."""
    if keys.dtype == np.float16:
        keys, values = keys.view(np.uint16), values.view(np.uint16)
    out = np.empty((q.shape[0], q.shape[1] * q.shape[2]), np.float32)
    attention_kernel(np.ascontiguousarray(q), keys, values, pos, out)
    return out


QKV = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")
GATE_UP = ("mlp.gate_proj.weight", "mlp.up_proj.weight")
STACKED = {QKV: "self_attn.qkv_proj.weight", GATE_UP: "mlp.gate_up_proj.weight"}  # a layer's fused matrices


@dataclass(frozen=True)
class Ops:
    """The steps of a forward pass between the matmuls: numpy (the reference) or Numba kernels."""
    rmsnorm: Callable        # (x, weight, eps)
    rope: Callable           # (x, cos, sin)
    silu_mul: Callable       # (gate, up) -> silu(gate) * up
    attend: Callable         # (q, keys, values, pos, n_rep)
    concat: Callable = np.concatenate   # (parts) -> the parts' rows one after another


REFERENCE_OPS = Ops(rmsnorm, apply_rope, lambda gate, up: silu(gate) * up, attend_reference)
KERNEL_OPS = Ops(elementwise.rmsnorm, elementwise.rope, elementwise.silu_mul, attend_kernel)


@dataclass(frozen=True)
class Backend:
    """Where a model runs: the classes its matrices become, where its vectors and KV caches live,
    and its Ops. The CPU's is below; the GPU's is qllama/cuda/backend.py."""
    device: str
    quant: type              # QuantizedTensor -> a linear
    dense: type              # float32 matrix -> a linear
    vector: Callable         # float32 vector (norm weights) -> what Ops read
    cache: type              # (args, ctx, dtype) -> a KV cache
    ops: Ops
    fuses: bool              # whether a layer's q, k, v (and gate, up) become one linear


CPU = Backend("cpu", QuantLinear, DenseLinear, lambda v: v, KVCache, KERNEL_OPS, fuses=True)
DEVICES = ("cpu", "cuda")


def attend_spans(ops: Ops, spans: list[Span], layer: int, q, k, v, n_rep: int) -> np.ndarray:
    """Store each span's keys/values in its cache and attend over that cache: (n, heads, hd) -> (n, q_dim)."""
    if len(spans) == 1:
        s = spans[0]
        keys, values = s.cache.update(layer, s.pos, k, v)              # (pos+n, kv_heads, hd)
        return ops.attend(q, keys, values, s.pos, n_rep)
    parts, start = [], 0
    for s in spans:
        rows = slice(start, start + s.n)
        keys, values = s.cache.update(layer, s.pos, k[rows], v[rows])
        parts.append(ops.attend(q[rows], keys, values, s.pos, n_rep))
        start += s.n
    return ops.concat(parts)


def forward(w: dict, args: ModelArgs, spans: list[Span], inv_freq: np.ndarray, tokens: np.ndarray,
            last_only: bool = False, observe=None, ops: Ops = REFERENCE_OPS) -> np.ndarray:
    """tokens (n,) of one or more sequences (spans, one after another, each over its own KV cache)
    -> logits (n, vocab), or the last token's of each span with last_only. Several spans make one
    pass over the weights for all of them: the server's batched decoding.
    observe(weight_name, x), if given, sees the input of every matmul (for calibration);
    ops: the steps between the matmuls (REFERENCE_OPS or KERNEL_OPS)."""
    def linear(name, x):                                                # x (n, in) @ W (out, in).T
        if observe is not None:
            observe(name, x)
        return w[name](x)

    def linears(prefix, names, x):       # several matrices of one input, stacked where the model could
        fused = w.get(prefix + STACKED[names])
        if fused is None:
            return [linear(prefix + name, x) for name in names]
        for name in names if observe is not None else ():
            observe(prefix + name, x)
        return np.split(fused(x), fused.splits, axis=1)

    n = len(tokens)
    x = w["model.embed_tokens.weight"].rows(tokens)                     # (n, dim)
    positions = np.concatenate([np.arange(s.pos, s.pos + s.n) for s in spans])
    rc, rs = rope_at(inv_freq, positions)                               # (n, head_dim/2)
    for i in range(args.n_layers):
        p = f"model.layers.{i}."
        # attention: rmsnorm, project to q/k/v, rotate q and k, attend over the cache
        h = ops.rmsnorm(x, w[p + "input_layernorm.weight"], args.norm_eps)
        q, k, v = linears(p, QKV, h)
        q = q.reshape(n, args.n_heads, args.head_dim)
        k, v = k.reshape(n, args.n_kv_heads, args.head_dim), v.reshape(n, args.n_kv_heads, args.head_dim)
        q, k = ops.rope(q, rc, rs), ops.rope(k, rc, rs)
        att = attend_spans(ops, spans, i, q, k, v, args.n_rep)          # (n, q_dim)
        x = x + linear(p + "self_attn.o_proj.weight", att)
        # feed-forward: rmsnorm, SwiGLU, project back, residual
        h = ops.rmsnorm(x, w[p + "post_attention_layernorm.weight"], args.norm_eps)
        gate = ops.silu_mul(*linears(p, GATE_UP, h))
        x = x + linear(p + "mlp.down_proj.weight", gate)
    if last_only:
        x = x[np.cumsum([s.n for s in spans]) - 1]                      # (n_spans, dim)
    x = ops.rmsnorm(x, w["model.norm.weight"], args.norm_eps)
    return linear("model.embed_tokens.weight" if args.tied_embeddings else "lm_head.weight", x)  # (n, vocab)


class Model(TextAPI):
    """What is loaded once and never changes: weights, tokenizer, chat template, RoPE frequencies, kernels.

    Conversations live in Sessions (qllama/session.py), each with its own KV cache, all sharing these
    weights: `new_session()` makes one. For the easy cases the model has a default session of its own,
    and `forward`, `prefill`, `logits`, `generate` and the text API (qllama/api.py: complete, stream,
    chat, tokenize) run on it. A context manager: leaving it frees the weights.
    """

    def __init__(self, checkpoint: Checkpoint, ctx: int | None = None, reference: bool = False,
                 kv_dtype: str | None = None, threads: int | None = None, device: str = "cpu"):
        self.checkpoint = checkpoint
        self.args = checkpoint.args
        self.tokenizer = checkpoint.tokenizer
        self.chat_template = checkpoint.chat_template
        self.ctx = ctx or min(self.args.max_seq_len, DEFAULT_CTX)
        if not 0 < self.ctx <= self.args.max_seq_len:
            raise QllamaError(f"--ctx {self.ctx}: must be in 1..{self.args.max_seq_len} (the context "
                              f"{checkpoint.path.name} was made for)")
        self.backend = self._backend(device, reference, kv_dtype)
        # the reference keeps float32 keys/values; the CPU kernels float16 (half the memory and
        # reads); the GPU float32 (for now)
        kv_dtype = kv_dtype or ("f32" if reference or device == "cuda" else "f16")
        if kv_dtype not in KV_DTYPES:
            raise QllamaError(f"KV cache type {kv_dtype!r} is not one of {', '.join(KV_DTYPES)}")
        self.kv_dtype = KV_DTYPES[kv_dtype]
        def weights():
            return load_weights(checkpoint, reference, self.args.n_layers, self.backend)
        if self.backend is CPU and not reference and checkpoint.path.is_file():
            # the kernels' layout kept on disk: the next load maps it instead of repacking
            self.weights = plane_cache.load(checkpoint.path, {"path": DEFAULT_PATH}, weights)
        else:
            self.weights = weights()
        if checkpoint.release is not None:
            # the kernels read copies (or map the pages again where they read the file's planes):
            # whatever the copying mapped, in pages or in the page cache's large folios, goes
            checkpoint.release()
        self.inv_freq = inverse_frequencies(self.args)     # RoPE's angular speeds (head_dim/2,)
        self.ops = REFERENCE_OPS if reference else self.backend.ops
        self.threads = threads          # kernel threads for this model's passes (None: Numba's setting)
        self._lock = threading.Lock()
        self.closed = False
        if not reference and self.backend is CPU:
            prepare_kernels(self)
        self._session = None

    def run(self, spans: list[Span], tokens: np.ndarray, last_only: bool = False, observe=None) -> np.ndarray:
        """The forward pass over sessions' caches (Session.forward and decode_batch check the
        arguments). One pass at a time: Numba's thread pool takes one caller at once, so sessions
        on several threads take turns here, each with the model's thread count."""
        if self.closed:
            raise QllamaError(f"{self.checkpoint.path}: the model was closed")
        with self._lock:
            if self.threads is not None:    # Numba's setting is per calling thread
                numba.set_num_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))
            logits = forward(self.weights, self.args, spans, self.inv_freq, tokens, last_only, observe, self.ops)
        return np.asarray(logits, dtype=np.float32)     # a device's logits come to the host here

    @staticmethod
    def _backend(device: str, reference: bool, kv_dtype: str | None) -> Backend:
        if device not in DEVICES:
            raise QllamaError(f"device {device!r} is not one of {', '.join(DEVICES)}")
        if device == "cpu":
            return CPU
        if reference:
            raise QllamaError("--reference runs on the CPU only, not with --device cuda")
        if kv_dtype == "f16":
            raise QllamaError(f"--device cuda keeps a float32 KV cache: --kv-cache {kv_dtype} is CPU only for now")
        from .cuda.backend import cuda_backend
        return cuda_backend()

    def new_cache(self, ctx: int):
        """An empty KV cache of ctx positions where this model runs (a Session's)."""
        return self.backend.cache(self.args, ctx, self.kv_dtype)

    def decode_batch(self, sessions: list[Session], tokens) -> np.ndarray:
        """One new token for each session, in ONE pass over the weights -> logits (n_sessions, vocab)."""
        for s in sessions:
            if s.n_past >= s.ctx:
                raise QllamaError(f"a session is full ({s.ctx} tokens)")
        tokens = np.asarray(tokens, dtype=np.int64)
        self.check_ids(tokens)
        logits = self.run([Span(s.cache, s.n_past, 1) for s in sessions], tokens, last_only=True)
        for s, t in zip(sessions, tokens.tolist()):
            s.tokens.append(t)
        return logits

    def check_ids(self, tokens: np.ndarray) -> None:
        vocab = self.args.vocab_size
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= vocab):
            bad = int(tokens[(tokens < 0) | (tokens >= vocab)][0])
            raise QllamaError(f"{self.checkpoint.path}: token id {bad} is outside the model's vocabulary [0, {vocab})")

    def new_session(self, ctx: int | None = None) -> Session:
        """A conversation of its own: an empty KV cache of ctx positions (default: the model's)."""
        return Session(self, ctx)

    @property
    def session(self) -> Session:
        """The model's default session, made on first use."""
        if self._session is None:
            self._session = self.new_session()
        return self._session

    @property
    def n_past(self) -> int:
        return self.session.n_past

    def forward(self, tokens, pos: int, last_only: bool = False, observe=None) -> np.ndarray:
        """Run tokens at positions pos.. of the default session; float32 logits."""
        return self.session.forward(tokens, pos, last_only, observe)

    def logits(self, token_ids) -> np.ndarray:
        """float32 logits (n_tokens, vocab) of one sequence starting at position 0."""
        return self.forward(token_ids, 0)

    def prefill(self, token_ids: list[int]) -> np.ndarray:
        """Logits after the last of token_ids, reusing the default session's cached prefix."""
        return self.session.prefill(token_ids)

    def generate(self, prompt, **kwargs):
        """Tokens (ints) for a prompt (text or token ids) on the default session; see
        qllama.generate.generate_tokens."""
        return self.session.generate(prompt, **kwargs)


def load_weights(checkpoint: Checkpoint, reference: bool, n_layers: int, backend: Backend) -> dict:
    """The checkpoint's tensors -> {name: float32 vector or the backend's linear}. Matrices with
    quantized bytes are laid out for their kernels a group at a time (one tensor, or on a backend
    that fuses, a layer's q, k, v or gate, up as one linear), so at most one group's requantized
    planes or mapped pages are held besides the result."""
    path, tensors, weights, requantized = checkpoint.path, checkpoint.tensors, {}, {}
    fused = {}                                  # first part's name -> (fused name, the parts' names)
    for i in range(n_layers if backend.fuses else 0):
        for names, fused_name in STACKED.items():
            parts = [f"model.layers.{i}.{n}" for n in names]
            if all(p in tensors for p in parts):
                fused[parts[0]] = (f"model.layers.{i}.{fused_name}", parts)
    grouped = {p for _, parts in fused.values() for p in parts}
    for name in tensors:
        if name in grouped and name not in fused:
            continue                            # laid out with the group's first part
        group_name, names = fused.get(name, (name, [name]))
        stored = [None if reference else stored_bytes(tensors[n], requantized) for n in names]
        if len(names) > 1 and all(stored) and fusable(stored):
            lin = backend.quant(stored)
            if not lin.finite:                  # name the part that holds it
                refuse_nonfinite(path, next(n for n, s in zip(names, stored) if not backend.quant([s]).finite))
            weights[group_name] = lin
            continue
        for n, s in zip(names, stored):
            weights[n] = (finite(path, n, backend.quant([s])) if s is not None else
                          dense_weight(path, n, tensors[n], CPU if reference else backend))
    if requantized:
        print(f"qllama: {path.name}: no kernels for " + ", ".join(
            f"{source} ({n} tensors, requantized to {target})" for (source, target), n in requantized.items())
            + " at load", file=sys.stderr)
    return weights


def refuse_nonfinite(path, name: str):
    raise QllamaError(f"{path}: tensor {name} holds NaN or infinite values")


def finite(path, name: str, weight):
    """weight, when its float values (for quantized planes: the fp16 scales and mins) are all finite.
    A NaN makes every logit NaN on the reference path, yet the fast path's int8 activation codes are
    finite and print plausible text from a broken model: refuse the file, naming the tensor."""
    ok = np.isfinite(weight).all() if isinstance(weight, np.ndarray) else weight.finite
    if not ok:
        refuse_nonfinite(path, name)
    return weight


def stored_bytes(t: SourceTensor, requantized: dict) -> Stored | None:
    """A matrix's quantized bytes for the kernels (repack.Stored), or None for vectors and float
    matrices: qllama files' planes, GGUF types with a table entry (Q8_0, Q4_0, Q4_1, Q4_K, Q5_K,
    Q6_K) as their blocks; other quantized GGUF types requantized, a block of rows at a time, into
    the nearest table format at or above their bits per weight (counted in `requantized`:
    (type, format) -> tensors). The source's pages are dropped once the kernels' copy is made."""
    if len(t.shape) == 1:
        return None
    if t.quantized is not None:
        return stored_planes(t.quantized, done=t.done)
    if t.dtype in BY_GGML_TYPE:     # the reader checked that rows are whole blocks
        return stored_ggml(t.raw, t.shape, BY_GGML_TYPE[t.dtype], t.rows, done=t.done)
    if t.dtype not in FLOAT_TYPES:
        fmt = nearest_format(ggml_bits_per_weight(t.dtype))
        requantized[t.dtype, fmt.name] = requantized.get((t.dtype, fmt.name), 0) + 1
        if plane_cache.replaying():             # the requantized planes are in the cache entry
            t.done()
            return Stored(fmt, tuple(t.shape), {})
        q = requantize(t.raw, t.rows, t.decode, t.shape, fmt)
        t.done()
        return stored_planes(q)
    return None


def dense_weight(path, name: str, t: SourceTensor, backend: Backend):
    """Vectors -> float32 arrays where the backend's Ops read them (on the CPU: copies, so the forward
    pass never touches the file's pages); float matrices (and every matrix on the reference path)
    -> the backend's float32 linear. Checked finite on the host, before they move."""
    w = finite(path, name, np.array(t.float32()) if len(t.shape) == 1 else t.float32())
    return backend.vector(w) if w.ndim == 1 else backend.dense(w)


def ggml_bits_per_weight(type_name: str) -> float:
    import gguf
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    return 8 * size / block


def load(path, ctx: int | None = None, tokenizer=None, reference: bool = False, kv_dtype: str | None = None,
         threads: int | None = None, device: str = "cpu") -> Model:
    """Load any supported checkpoint (HF folder, GGUF, llama2.c .bin, qllama file, or a pulled
    model's name) into a Model. reference=True runs the numpy float32 reference path instead of the
    quantized kernels; kv_dtype "f16" (the fast path's default) or "f32" (the reference's);
    threads: kernel threads for this model (default: all cores); device "cpu" or "cuda" (an
    NVIDIA GPU through numba-cuda: pip install 'qllama[cuda]')."""
    from .pull import resolve_model
    path = resolve_model(None if path is None else str(path))
    return Model(open_checkpoint(path, tokenizer), ctx, reference, kv_dtype, threads, device)
