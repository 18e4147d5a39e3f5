"""The bad-input corpus: malformed model files, configs and option values, built from the real
model files the tests carry (tests/models, tests/fixtures/hf) and a qllama file quantized from one.

Each Case is a command line run in a folder of its own that holds the malformed input; `expect`
are the fragments the one error line must contain (the file's or the option's name). The modules
here build one class of input each; `all_cases()` lists them all (cheap: nothing is written until
`Case.write`). Regenerate nothing by hand: the test builds the corpus fresh each run.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

Content = Union[bytes, Path]      # bytes to write, or a file to copy


@dataclass
class Case:
    name: str
    argv: list[str]                                   # qllama's arguments, paths relative to the case folder
    expect: tuple[str, ...]                           # fragments of the one error line
    files: Callable[["Sources"], dict[str, Content]]  # what the case folder holds, by relative path
    must_fail: bool = True                            # False: a mutated file that may still be valid

    def write(self, folder: Path, sources: "Sources") -> None:
        folder.mkdir(parents=True)
        for rel, content in self.files(sources).items():
            target = folder / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copyfile(content, target)
            else:
                target.write_bytes(content)


@dataclass
class Sources:
    """The well-formed files the corpus is built from."""
    qllama_file: Path        # stories260K quantized to q8 by the real `qllama quantize`


def all_cases() -> list[Case]:
    from . import (command_cases, config_cases, gguf_cases, llama2c_cases, mutation_cases, option_cases,
                   qllama_file_cases, safetensors_cases, weight_cases)
    cases = [c for module in (gguf_cases, safetensors_cases, config_cases, llama2c_cases, qllama_file_cases,
                              option_cases, weight_cases, command_cases, mutation_cases) for c in module.cases()]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases
