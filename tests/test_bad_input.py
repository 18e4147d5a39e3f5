"""Bad input: each gets one line naming the file and the problem, a non-zero exit and no traceback."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import assert_one_line_error, qllama
from paths import MODELS

HF_TINY = Path(__file__).parent / "fixtures" / "hf" / "llama3_untied_f32"


def test_missing_path(tmp_path):
    assert_one_line_error(qllama("info", tmp_path / "nope.gguf"), "nope.gguf", "no such file")


def test_folder_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert_one_line_error(qllama("info", tmp_path), "config.json")


def test_truncated_safetensors(tmp_path):
    shutil.copy(HF_TINY / "config.json", tmp_path)
    data = (HF_TINY / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_one_line_error(qllama("info", tmp_path), "model.safetensors", "truncated")


def test_safetensors_with_garbage_header(tmp_path):
    shutil.copy(HF_TINY / "config.json", tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 64)
    assert_one_line_error(qllama("info", tmp_path), "model.safetensors")


def test_gguf_with_wrong_magic(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + (MODELS / "stories260K" / "stories260K.gguf").read_bytes()[4:])
    assert_one_line_error(qllama("info", bad), "bad.gguf", "magic")


def test_gguf_with_tensor_past_the_end(tmp_path):
    data = (MODELS / "stories260K" / "stories260K.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:-4096])
    assert_one_line_error(qllama("info", cut), "cut.gguf", "past the end")


@pytest.mark.parametrize("change, fragment", [
    ({"architectures": ["MistralForCausalLM"], "model_type": "mistral"}, "MistralForCausalLM"),
    ({"attention_bias": True}, "attention_bias"),
    ({"num_local_experts": 8}, "num_local_experts"),
    ({"sliding_window": 4096}, "sliding_window"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}}, "yarn"),
])
def test_unsupported_config_is_refused_by_name(tmp_path, change, fragment):
    config = json.loads((HF_TINY / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    shutil.copy(HF_TINY / "model.safetensors", tmp_path)
    assert_one_line_error(qllama("info", tmp_path), "config.json", fragment)


def test_llama2c_with_wrong_size(tmp_path):
    data = (MODELS / "stories260K" / "stories260K.bin").read_bytes()
    (tmp_path / "short.bin").write_bytes(data[:-100])
    shutil.copy(MODELS / "stories260K" / "tok512.model", tmp_path)
    assert_one_line_error(qllama("info", tmp_path / "short.bin"), "short.bin", "header implies")


def test_prompt_longer_than_context():
    result = qllama("run", "Once upon a time there was a cat", "-m", MODELS / "stories260K" / "stories260K.bin",
                    "--ctx", "4")
    assert_one_line_error(result, "context")


def test_a_tokenizer_larger_than_the_embedding_is_refused():
    result = qllama("run", "Once", "-m", MODELS / "stories260K" / "stories260K.bin", "--tokenizer",
                    MODELS / "llama-tokenizer" / "tokenizer.model")
    assert_one_line_error(result, "tokenizer.model", "32000 tokens", "512 rows")


def test_a_missing_tokenizer_file_is_named_even_for_a_gguf(tmp_path):
    result = qllama("run", "Once", "-m", MODELS / "stories260K" / "stories260K.gguf", "--tokenizer", tmp_path / "nope.model")
    assert_one_line_error(result, "nope.model")


def test_a_fifo_as_model_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    assert_one_line_error(qllama("info", fifo, timeout=60), "model.gguf", "not a regular file")


def test_a_context_beyond_the_models_is_refused():
    result = qllama("run", "Once", "-m", MODELS / "stories260K" / "stories260K.bin", "--ctx", "1000000000")
    assert_one_line_error(result, "--ctx 1000000000", "512")


@pytest.mark.parametrize("option, value", [("--temp", "nan"), ("--repeat-penalty", "nan"), ("--top-p", "nan"),
                                           ("--seed", "-1")])
def test_sampling_values_that_are_not_numbers_in_range(option, value):
    result = qllama("run", "Once", "-m", MODELS / "stories260K" / "stories260K.bin", option, value)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_prompt_that_is_not_utf8():
    result = subprocess.run([sys.executable, "-m", "qllama", "run", b"caf\xe9", "-m",
                             str(MODELS / "stories260K" / "stories260K.bin")], capture_output=True, timeout=120)
    assert result.returncode == 1 and result.stderr.decode().strip() == "error: PROMPT: not UTF-8 text"


def test_nan_weights_are_refused_at_load_naming_the_tensor(tmp_path):
    """A NaN in a norm: refused on both paths (the fast one would print plausible text from it)."""
    import numpy as np
    data = bytearray((MODELS / "stories260K" / "stories260K.bin").read_bytes())
    rms_att = 28 + 512 * 64 * 4                     # after the 7-int header and the (512, 64) token embedding
    data[rms_att:rms_att + 4] = np.float32("nan").tobytes()   # layer 0's attention norm, first weight
    (tmp_path / "nan.bin").write_bytes(bytes(data))
    shutil.copy(MODELS / "stories260K" / "tok512.model", tmp_path)
    for path in ([], ["--kv-cache", "f32"]):
        result = qllama("run", "Once", "-m", tmp_path / "nan.bin", "--raw", "-n", "2", *path)
        assert_one_line_error(result, "nan.bin", "model.layers.0.input_layernorm.weight", "NaN")


def test_an_infinite_scale_in_a_quantized_file_is_refused(tmp_path):
    out = tmp_path / "q8.safetensors"
    assert qllama("quantize", MODELS / "stories260K" / "stories260K.bin", out, "--format", "q8").returncode == 0
    data = bytearray(out.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    entry = json.loads(data[8:8 + header_len])["model.layers.0.self_attn.q_proj.weight.scales"]
    start = 8 + header_len + entry["data_offsets"][0]
    data[start:start + 2] = b"\x00\x7c"            # fp16 +inf
    out.write_bytes(bytes(data))
    assert_one_line_error(qllama("run", "Once", "-m", out, "--raw", "-n", "2"), "q8.safetensors",
                          "model.layers.0.self_attn.q_proj.weight", "infinite")
