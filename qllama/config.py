"""ModelArgs: the hyperparameters of a LLaMA-family model, read from any supported checkpoint.

One frozen dataclass with llama2.c's short names. Readers build it from a Hugging Face config.json,
GGUF `llama.*` metadata or a llama2.c header; whatever qllama cannot run is refused here, by name.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

from .config_values import LIMITS, Values
from .errors import QllamaError

# "freq_factors": a divisor per rotating pair, as GGUF's rope_freqs.weight holds it (llama.cpp's converter
# writes Llama 3.1+'s llama3 scaling that way, with none of its parameters)
ROPE_SCALING_TYPES = ("none", "linear", "llama3", "freq_factors")


@dataclass(frozen=True)
class ModelArgs:
    dim: int                # width of the residual stream (hidden_size)
    hidden_dim: int         # width of the SwiGLU feed-forward (intermediate_size)
    n_layers: int           # transformer blocks
    n_heads: int            # query heads
    n_kv_heads: int         # key/value heads; < n_heads means grouped-query attention
    head_dim: int           # width of one head; usually dim // n_heads, but configs may say otherwise
    vocab_size: int         # rows of the token embedding
    norm_eps: float         # RMSNorm epsilon
    rope_theta: float       # RoPE base frequency
    max_seq_len: int        # context length the model was made for
    tied_embeddings: bool   # the output head reuses the token embedding
    rope_scaling: str = "none"       # "none", "linear" or "llama3"
    rope_factor: float = 1.0         # linear and llama3: the context extension factor
    rope_low_freq_factor: float = 1.0    # llama3 only
    rope_high_freq_factor: float = 4.0   # llama3 only
    rope_original_max_seq_len: int = 8192  # llama3 only: the context before extension
    rope_freq_factors: tuple[float, ...] = ()  # freq_factors only: (head_dim/2,) divisors of the inverse frequencies

    def __post_init__(self):
        object.__setattr__(self, "rope_freq_factors", tuple(float(f) for f in self.rope_freq_factors))  # JSON gives a list
        for name in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "vocab_size", "max_seq_len",
                     "rope_original_max_seq_len"):
            value, hi = getattr(self, name), LIMITS.get(name, LIMITS["max_seq_len"])
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= hi:
                raise QllamaError(f"model config: {name} must be an integer in [1, {hi}], got {value!r}")
        for name in ("norm_eps", "rope_theta", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise QllamaError(f"model config: {name} must be a finite number, got {value!r}")
        if not isinstance(self.tied_embeddings, bool) or not isinstance(self.rope_scaling, str):
            raise QllamaError("model config: tied_embeddings must be true or false and rope_scaling a string")
        if self.n_heads % self.n_kv_heads:
            raise QllamaError(f"model config: n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise QllamaError(f"model config: head_dim {self.head_dim} must be even for RoPE")
        if self.rope_scaling not in ROPE_SCALING_TYPES:
            raise QllamaError(f"model config: rope scaling {self.rope_scaling!r} is not supported")
        if not self.norm_eps > 0 or not self.rope_theta > 0 or not self.rope_factor > 0:
            raise QllamaError("model config: norm_eps, rope_theta and the rope factor must be positive")
        factors, n_pairs = self.rope_freq_factors, self.head_dim // 2
        if (self.rope_scaling == "freq_factors") != bool(factors):
            raise QllamaError("model config: rope frequency factors go with rope scaling 'freq_factors', and only with it")
        if factors and (len(factors) != n_pairs or not all(math.isfinite(f) and f > 0 for f in factors)):
            raise QllamaError(f"model config: rope frequency factors must be {n_pairs} positive numbers "
                              f"(head_dim {self.head_dim} / 2), got {len(factors)}")

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def n_rep(self) -> int:
        """How many query heads share one key/value head."""
        return self.n_heads // self.n_kv_heads

    def to_json(self) -> str:
        data = asdict(self)
        if not self.rope_freq_factors:  # left out unless used: qllama before it can still read the file
            del data["rope_freq_factors"]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelArgs":
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise QllamaError(f"model config: ModelArgs metadata is a JSON {type(data).__name__}, not an object")
            unknown = sorted(set(data) - {f.name for f in fields(cls)})
            if unknown:
                raise QllamaError(f"model config: {unknown[0]!r} is unknown to this qllama (written by a newer "
                                  f"version?); upgrade qllama")
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise QllamaError(f"model config: bad ModelArgs metadata ({e})") from None

    @classmethod
    def checked(cls, source: str, **values) -> "ModelArgs":
        """Construct, naming `source` in any refusal."""
        try:
            return cls(**values)
        except QllamaError as e:
            raise QllamaError(f"{source}: {str(e).removeprefix('model config: ')}") from None

    @classmethod
    def from_hf_config(cls, cfg: dict, source: str = "config.json") -> "ModelArgs":
        """From a LlamaForCausalLM config.json (transformers 4.x top-level rope keys or 5.x rope_parameters)."""
        refuse_unsupported_hf(cfg, source)
        v = Values(cfg, source)
        dim = v.int("hidden_size", hi=LIMITS["dim"])
        n_heads = v.int("num_attention_heads", hi=LIMITS["n_heads"])
        # 5.x nests everything in rope_parameters; 4.x has rope_scaling + rope_theta
        rope = Values({**v.dict("rope_scaling").data, **v.dict("rope_parameters").data}, source)
        theta = rope.float("rope_theta", v.float("rope_theta", 10000.0)) if rope.has("rope_theta") else v.float("rope_theta", 10000.0)
        kind = rope.str("rope_type", rope.str("type", "default"))
        kind = {"default": "none"}.get(kind, kind)
        if kind not in ("none", "linear", "llama3"):
            raise QllamaError(f"{source}: rope_scaling type {kind!r} is not supported (supported: linear, llama3)")
        extra = {}
        if kind != "none":
            extra["rope_factor"] = rope.float("factor", 1.0, hi=1e6)
        if kind == "llama3":
            extra.update(
                rope_low_freq_factor=rope.float("low_freq_factor", 1.0, hi=1e6),
                rope_high_freq_factor=rope.float("high_freq_factor", 4.0, hi=1e6),
                rope_original_max_seq_len=rope.int("original_max_position_embeddings", 8192, hi=LIMITS["max_seq_len"]),
            )
        return cls.checked(
            source,
            dim=dim,
            hidden_dim=v.int("intermediate_size", hi=LIMITS["hidden_dim"]),
            n_layers=v.int("num_hidden_layers", hi=LIMITS["n_layers"]),
            n_heads=n_heads,
            n_kv_heads=v.int("num_key_value_heads", n_heads, hi=LIMITS["n_heads"]),
            head_dim=v.int("head_dim", max(dim // n_heads, 1), hi=LIMITS["head_dim"]),
            vocab_size=v.int("vocab_size", hi=LIMITS["vocab_size"]),
            norm_eps=v.float("rms_norm_eps", 1e-6, hi=1.0),
            rope_theta=theta,
            max_seq_len=v.int("max_position_embeddings", 2048, hi=LIMITS["max_seq_len"]),
            tied_embeddings=v.bool("tie_word_embeddings", False),
            rope_scaling=kind,
            **extra,
        )

    @classmethod
    def from_gguf(cls, meta: dict, source: str, vocab_size: int, tied: bool, rope_freqs=None) -> "ModelArgs":
        """From GGUF `llama.*` metadata; vocab_size and tying come from the tensors, which are the truth.
        rope_freqs: the rope_freqs.weight tensor's values, if the file has one."""
        v = Values(meta, source)
        arch = meta.get("general.architecture")
        if arch != "llama":
            raise QllamaError(f"{source}: general.architecture = {arch!r} is not supported (only 'llama')")
        if meta.get("llama.expert_count", 0):
            raise QllamaError(f"{source}: llama.expert_count = {meta['llama.expert_count']} (mixture of experts) is not supported")
        dim = v.int("llama.embedding_length", hi=LIMITS["dim"])
        n_heads = v.int("llama.attention.head_count", hi=LIMITS["n_heads"])
        head_dim = v.int("llama.attention.key_length", v.int("llama.rope.dimension_count", max(dim // n_heads, 1),
                                                              hi=LIMITS["head_dim"]), hi=LIMITS["head_dim"])
        kind = v.str("llama.rope.scaling.type", "none")
        kind = {"": "none"}.get(kind, kind)
        if kind not in ("none", "linear"):
            raise QllamaError(f"{source}: llama.rope.scaling.type = {kind!r} is not supported")
        factor = v.float("llama.rope.scaling.factor", 1.0, hi=1e6) if kind == "linear" else 1.0
        scaling = {"rope_scaling": kind, "rope_factor": factor}
        if rope_freqs is not None:
            if len(rope_freqs) != head_dim // 2:
                raise QllamaError(f"{source}: tensor rope_freqs.weight has {len(rope_freqs)} values, "
                                  f"expected head_dim / 2 = {head_dim // 2}")
            # llama.cpp divides each frequency by its factor and all of them by the linear factor: one divisor
            scaling = {"rope_scaling": "freq_factors", "rope_freq_factors": tuple(float(f) * factor for f in rope_freqs)}
        return cls.checked(
            source,
            dim=dim,
            hidden_dim=v.int("llama.feed_forward_length", hi=LIMITS["hidden_dim"]),
            n_layers=v.int("llama.block_count", hi=LIMITS["n_layers"]),
            n_heads=n_heads,
            n_kv_heads=v.int("llama.attention.head_count_kv", n_heads, hi=LIMITS["n_heads"]),
            head_dim=head_dim,
            vocab_size=vocab_size,
            norm_eps=v.float("llama.attention.layer_norm_rms_epsilon", 1e-5, hi=1.0),
            rope_theta=v.float("llama.rope.freq_base", 10000.0),
            max_seq_len=v.int("llama.context_length", 2048, hi=LIMITS["max_seq_len"]),
            tied_embeddings=tied,
            **scaling,
        )


def refuse_unsupported_hf(cfg: dict, source: str) -> None:
    """Refuse, naming the key and value, every config qllama would otherwise run wrongly."""
    archs = cfg.get("architectures") or ["LlamaForCausalLM"]
    if archs != ["LlamaForCausalLM"]:
        raise QllamaError(f"{source}: architectures = {archs} is not supported (only LlamaForCausalLM)")
    if cfg.get("model_type", "llama") != "llama":
        raise QllamaError(f"{source}: model_type = {cfg['model_type']!r} is not supported (only 'llama')")
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            raise QllamaError(f"{source}: {key} = {cfg[key]!r} is not supported")
    for key in ("num_local_experts", "num_experts", "sliding_window"):
        if cfg.get(key):
            raise QllamaError(f"{source}: {key} = {cfg[key]!r} is not supported")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise QllamaError(f"{source}: hidden_act = {act!r} is not supported (only 'silu')")
