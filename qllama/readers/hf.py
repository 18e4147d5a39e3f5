"""Hugging Face folder reader: config.json + model.safetensors (or shards with an index) + tokenizer.

Names are already Hugging Face's and q/k rows already rotate-half, so the only clean-up is mlx-lm's
`sanitize`: drop `rotary_emb.inv_freq` buffers and a duplicate lm_head of a tied model.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..checkpoint import Checkpoint, SourceTensor, check_tensors
from ..config import ModelArgs
from ..config_values import Values
from ..errors import QllamaError
from .safetensors_file import SafetensorsFile, to_float32


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise QllamaError(f"{path}: cannot read ({e.strerror})") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise QllamaError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise QllamaError(f"{path}: expected a JSON object")
    return data


def weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise QllamaError(f"{index}: no weight_map")
        for name in weight_map.values():  # the index is untrusted: shards must be plain files in this folder
            if not isinstance(name, str) or Path(name).name != name:
                raise QllamaError(f"{index}: bad shard file name {str(name)[:60]!r}")
        names = sorted(set(weight_map.values()))
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise QllamaError(f"{folder}: no *.safetensors weights (PyTorch .bin/.pt checkpoints are not read: "
                          f"they are pickles)")
    return files


def read_chat_template(folder: Path) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        try:
            return jinja.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise QllamaError(f"{jinja}: cannot read the chat template ({e})") from None
    cfg_path = folder / "tokenizer_config.json"
    template = read_json(cfg_path).get("chat_template") if cfg_path.exists() else None
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict) and isinstance(t.get("name"), str)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def find_tokenizer(folder: Path, tokenizer_path):
    from ..tokenizer import load_tokenizer_file
    if tokenizer_path is not None:
        return load_tokenizer_file(Path(tokenizer_path), folder)
    for name in ("tokenizer.model", "tokenizer.json"):  # the original SentencePiece model first
        if (folder / name).exists():
            return load_tokenizer_file(folder / name, folder)
    return None


def read_hf_folder(folder: Path, tokenizer_path=None) -> Checkpoint:
    config_path = folder / "config.json"
    if not config_path.exists():
        raise QllamaError(f"{folder}: no config.json: not a Hugging Face model folder")
    cfg = read_json(config_path)
    tensors: dict[str, SourceTensor] = {}
    shards = []
    for file in weight_files(folder):
        if not file.exists():
            raise QllamaError(f"{file}: shard named in the index is missing")
        st = SafetensorsFile(file)
        shards.append(st)
        for name, raw in st.arrays.items():
            if name.endswith("rotary_emb.inv_freq"):
                continue
            dtype = st.dtypes[name]
            if dtype not in ("F32", "F16", "BF16"):
                raise QllamaError(f"{file}: tensor {name} has dtype {dtype}; expected F32, F16 or BF16")
            tensors[name] = SourceTensor(tuple(raw.shape), dtype, raw, lambda a, d=dtype: to_float32(a, d),
                                         release=lambda st=st, n=name: st.release(n))
    tied = Values(cfg, str(config_path)).bool("tie_word_embeddings", False) or "lm_head.weight" not in tensors
    if tied:
        tensors.pop("lm_head.weight", None)
    args = ModelArgs.from_hf_config({**cfg, "tie_word_embeddings": tied}, str(config_path))
    check_tensors(folder, args, {n: t.shape for n, t in tensors.items()})
    tokenizer = find_tokenizer(folder, tokenizer_path)
    return Checkpoint(folder, "hf", args, tensors, tokenizer, read_chat_template(folder),
                      {"source": str(folder)}, release=lambda: [st.release_all() for st in shards])
