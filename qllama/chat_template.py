"""Chat templates: the model's own Jinja template, rendered in a sandbox, or a named built-in.

A prompt must be what the model was trained on, so templates render as Hugging Face transformers'
`apply_chat_template` renders them (transformers 5.x, `utils/chat_template_utils.py`):
- Jinja's ImmutableSandboxedEnvironment, because the template comes from an untrusted model file;
  trim_blocks, lstrip_blocks, the loopcontrols extension and a `{% generation %}` tag;
- the globals transformers adds: `raise_exception`, `strftime_now`, a `dict` that is not the type
  itself, and a `namespace` that refuses underscore names;
- `tojson` as plain `json.dumps`: keys in their given order, no HTML escaping, non-ASCII kept
  (Jinja's own filter sorts keys and escapes `<>&'`, which changes tool prompts);
- the same data: keys whose value is None dropped from each message, a message's reasoning copied
  under the names templates read, `tools` and `documents` passed as None when not given (so
  `tools is defined` is true, as in transformers), and everything copied into plain JSON-like values.
tests/test_chat_template.py checks all of this against transformers on real templates.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from contextlib import contextmanager
from datetime import datetime
from functools import lru_cache

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import QllamaError

# Written from each family's documented prompt format; tests/test_chat_template.py checks each one
# against a real model's template rendered by transformers. System messages, where a family has no
# place for them (mistral, gemma), join the next user message, as those families document.
BUILTIN_TEMPLATES = {
    # ChatML (OpenHermes, Qwen, SmolLM): any role name.
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    # Llama 2 chat (Meta's llama `generation.py`): <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {answer} </s>
    "llama2": (
        "{% set ns = namespace(system='') %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}"
        "{% set ns.system = '<<SYS>>\n' + message['content'] + '\n<</SYS>>\n\n' %}"
        "{% elif message['role'] == 'user' %}"
        "{{ bos_token + '[INST] ' + (ns.system + message['content']) | trim + ' [/INST]' }}"
        "{% set ns.system = '' %}"
        "{% elif message['role'] == 'assistant' %}"
        "{{ ' ' + message['content'] | trim + ' ' + eos_token }}"
        "{% else %}{{ raise_exception('llama2 template: no place for role ' ~ message['role']) }}"
        "{% endif %}"
        "{% endfor %}"
    ),
    # Llama 3 instruct: a header per message, content trimmed, any role name.
    "llama3": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
        " + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    # Mistral instruct (v0.1/v0.2, Mixtral): <s>[INST] {user} [/INST]{answer}</s>[INST] ...
    "mistral": (
        "{{ bos_token }}"
        "{% set ns = namespace(system='') %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{% set ns.system = ns.system + message['content'] + '\n\n' %}"
        "{% elif message['role'] == 'user' %}"
        "{{ '[INST] ' + ns.system + message['content'] + ' [/INST]' }}{% set ns.system = '' %}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
        "{% else %}{{ raise_exception('mistral template: no place for role ' ~ message['role']) }}"
        "{% endif %}"
        "{% endfor %}"
    ),
    # Zephyr (HuggingFaceH4/zephyr-7b-beta): <|role|>\n{content}</s>\n
    "zephyr": (
        "{% for message in messages %}"
        "{% if message['role'] in ['system', 'user', 'assistant'] %}"
        "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
        "{% else %}{{ raise_exception('zephyr template: no place for role ' ~ message['role']) }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
    # Phi-3 / Phi-3.5: <|role|>\n{content}<|end|>\n; an empty system message is left out; EOS closes
    # a finished conversation.
    "phi3": (
        "{% for message in messages %}"
        "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
        "{{ raise_exception('phi3 template: no place for role ' ~ message['role']) }}"
        "{% elif message['role'] != 'system' or message['content'] %}"
        "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
    ),
    # Gemma (1, 2; Gemma 3 for the system message): <start_of_turn>user|model\n{content}<end_of_turn>\n
    "gemma": (
        "{{ bos_token }}"
        "{% set ns = namespace(system='') %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{% set ns.system = ns.system + message['content'] + '\n\n' %}"
        "{% elif message['role'] == 'user' %}"
        "{{ '<start_of_turn>user\n' + ns.system + message['content'] | trim + '<end_of_turn>\n' }}"
        "{% set ns.system = '' %}"
        "{% elif message['role'] == 'assistant' %}"
        "{{ '<start_of_turn>model\n' + message['content'] | trim + '<end_of_turn>\n' }}"
        "{% else %}{{ raise_exception('gemma template: no place for role ' ~ message['role']) }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
}

_JINJA_SYNTAX = ("{{", "{%", "{#")
# Older Jinja releases have known sandbox escapes (CVE-2024-56201, CVE-2024-56326, CVE-2025-27516).
_MIN_JINJA = (3, 1, 6)
_JINJA_VERSION = tuple(int(x) for x in re.findall(r"\d+", jinja2.__version__)[:3])


def resolve_template(name_or_text: str) -> str:
    """The Jinja text of a built-in template name, or the text itself when it is a template."""
    key = name_or_text.strip().lower()
    if key in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[key]
    if not any(mark in name_or_text for mark in _JINJA_SYNTAX):
        shown = name_or_text if len(name_or_text) <= 40 else name_or_text[:40] + "..."
        raise QllamaError(f"chat template: unknown built-in template {shown!r}; "
                          f"known: {', '.join(BUILTIN_TEMPLATES)}")
    return name_or_text


def now() -> datetime:
    """The time `strftime_now` formats (local time, as transformers); tests replace it."""
    return datetime.now()


class _TemplateRaised(jinja2.TemplateError):
    """What `raise_exception(...)` raises: the template refused the conversation."""


def _raise_exception(message):
    raise _TemplateRaised(message)


def _strftime_now(fmt):
    return now().strftime(fmt)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _DictMaker:
    """`dict(...)` and `dict.fromkeys(...)` for templates, without handing them the `dict` type."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, keys, value=None):
        return dict.fromkeys(keys, value)


def _check_namespace_name(name):
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(f"a namespace cannot hold the underscore name {name!r}")


class _Namespace(jinja2.utils.Namespace):
    """Jinja's `namespace()`, refusing underscore names (a step towards Python internals)."""

    def __init__(*args, **kwargs):  # no named `self`, so `namespace(self=...)` works as in Jinja
        attrs = dict(*args[1:], **kwargs)
        for name in attrs:
            _check_namespace_name(name)
        jinja2.utils.Namespace.__init__(args[0], attrs)

    def __setitem__(self, name, value):
        _check_namespace_name(name)
        super().__setitem__(name, value)


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; a prompt
    only needs its body. Rendered through a call block, so `set` inside stays local as in transformers."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def _make_env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now,
                       dict=_DictMaker(), namespace=_Namespace)
    return env


_ENV = _make_env()


@lru_cache(maxsize=32)
def _compile(text: str) -> jinja2.Template:
    return _ENV.from_string(text)


def _plain(value):
    """A copy of `value` made only of JSON-like Python values, so a template reaches no caller
    object's methods (subclasses such as enums and numpy scalars become their base values)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)  # the text of a str enum, not its name
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    raise QllamaError(f"chat template: cannot pass a {type(value).__name__} to a template; "
                      f"use dicts, lists, strings, numbers, booleans and None")


_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


def _prepare_messages(messages) -> list[dict]:
    """transformers' view of the messages: None-valued keys dropped; a message's reasoning, under
    any of its names, also given as `reasoning_content` and (unless set) `thinking`."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise QllamaError("chat template: no messages to render")
    prepared = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise QllamaError(f"chat template: each message must be a dict, got a {type(message).__name__}")
        message = _plain({k: v for k, v in message.items() if v is not None})
        reasoning = next((message[k] for k in _REASONING_KEYS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        prepared.append(message)
    return prepared


def _plain_list_of_dicts(what: str, items):
    if items is None:
        return None
    if not isinstance(items, (list, tuple)) or not all(isinstance(x, Mapping) for x in items):
        raise QllamaError(f"chat template: {what} must be a list of dicts")
    return _plain(list(items))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _template_line(exc: BaseException) -> int | None:
    """The template line being rendered when `exc` was raised (Jinja maps its frames to "<template>")."""
    line, tb = None, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _describe(exc: Exception) -> str:
    """A one-line QllamaError message for a template that failed to compile or render."""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"chat template: syntax error on line {exc.lineno}: {_one_line(exc.message)}"
    if isinstance(exc, _TemplateRaised):
        return f"chat template: the template refused the conversation: {_one_line(exc.message)}"
    line = _template_line(exc)
    where = f"line {line}: " if line is not None else ""
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return f"chat template: {where}refused by the sandbox: {_one_line(exc)}"
    if isinstance(exc, jinja2.TemplateError):
        return f"chat template: {where}{_one_line(exc)}"
    return f"chat template: {where}{type(exc).__name__}: {_one_line(exc)}"


# What a template may get wrong at render time: its own errors, and Python's from its expressions
# ('a' + 1, a missing key, json.dumps of an undefined value, runaway macro recursion).
_RENDER_ERRORS = (jinja2.TemplateError, TypeError, ValueError, LookupError, ArithmeticError,
                  AttributeError, RecursionError)


@contextmanager
def naming_template(source):
    """A template that fails to compile or render says which one: the --template file or the model's."""
    try:
        yield
    except QllamaError as e:
        if str(e).startswith("chat template:"):
            raise QllamaError(f"{source}: {e}") from None
        raise


def check_template(text: str) -> None:
    """Compile Jinja text now, so a syntax error is reported before a chat starts, not at its first turn."""
    try:
        _compile(text)
    except jinja2.TemplateError as e:
        raise QllamaError(_describe(e)) from None


def render_chat(template: str, messages: list[dict], add_generation_prompt: bool = True,
                bos_token: str = "", eos_token: str = "", **kwargs) -> str:
    """The prompt text for `messages` ([{"role": ..., "content": ...}, ...]) in `template`: Jinja
    text or a built-in name (BUILTIN_TEMPLATES). Keyword arguments reach the template as variables
    (tools=[...], documents=[...], date_string=..., enable_thinking=...)."""
    if _JINJA_VERSION < _MIN_JINJA:
        raise QllamaError(f"chat template: jinja2 {jinja2.__version__} has known sandbox escapes; "
                          f"install jinja2>={'.'.join(map(str, _MIN_JINJA))}")
    if not isinstance(template, str):
        raise QllamaError(f"chat template: expected Jinja text or a built-in name, got a {type(template).__name__}")
    text = resolve_template(template)
    tools = _plain_list_of_dicts("tools", kwargs.pop("tools", None))
    documents = _plain_list_of_dicts("documents", kwargs.pop("documents", None))
    variables = _plain(dict(kwargs, bos_token=bos_token, eos_token=eos_token))
    messages = _prepare_messages(messages)
    try:
        return _compile(text).render(messages=messages, tools=tools, documents=documents,
                                     add_generation_prompt=add_generation_prompt, **variables)
    except _RENDER_ERRORS as e:
        raise QllamaError(_describe(e)) from None
