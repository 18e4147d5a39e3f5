"""Chat templates: the model's own Jinja template, rendered in a sandbox, or a named built-in.

Rendered as transformers' `apply_chat_template` does (trim_blocks, lstrip_blocks, `raise_exception`),
in Jinja's immutable sandbox because the template comes from an untrusted model file.
"""
from __future__ import annotations

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import QllamaError

BUILTIN_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
        "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama2": (
        "{% for message in messages %}{% if message['role'] == 'system' %}{{ '<<SYS>>\n' + message['content'] "
        "+ '\n<</SYS>>\n\n' }}{% elif message['role'] == 'user' %}{{ bos_token + '[INST] ' + message['content'] "
        "+ ' [/INST]' }}{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}{% endfor %}"
    ),
}


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def render_chat(template: str, messages: list[dict], add_generation_prompt: bool = True,
                bos_token: str = "", eos_token: str = "") -> str:
    """The prompt text for `messages` ([{"role": ..., "content": ...}]) in the given template."""
    template = BUILTIN_TEMPLATES.get(template, template)
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                bos_token=bos_token, eos_token=eos_token)
    except jinja2.exceptions.TemplateError as e:
        raise QllamaError(f"chat template: {e}") from None


def chat_prompt_ids(model, messages: list[dict], template: str | None = None) -> list[int]:
    """Token ids of the conversation so far, ending with the assistant's turn to speak."""
    tok = model.tokenizer
    template = template or model.chat_template
    if template is None:
        raise QllamaError(f"{model.checkpoint.path}: the model has no chat template; name one with --template "
                          f"({', '.join(BUILTIN_TEMPLATES)})")
    bos = tok.token_text(tok.bos_id) if tok.bos_id is not None else ""
    eos = tok.token_text(tok.eos_id) if tok.eos_id is not None else ""
    text = render_chat(template, messages, True, bos, eos)
    add_bos = tok.add_bos and not (bos and text.startswith(bos))
    return tok.encode(text, add_bos=add_bos, parse_special=True)
