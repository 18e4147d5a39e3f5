"""ChatFormat: a model's tokenizer and chat template together: messages -> rendered text -> token ids.

Shared by the chat (Conversation), the Python API's chat() and the server.
"""
from __future__ import annotations

from .chat_template import check_template, render_chat, resolve_template
from .errors import QllamaError
from .tokenizer import END_OF_TURN


class ChatFormat:
    def __init__(self, model, template: str | None = None):
        if model.tokenizer is None:
            raise QllamaError(f"{model.checkpoint.path}: the model has no tokenizer, so it cannot chat")
        source = template or model.chat_template
        if source is None:
            raise QllamaError(f"{model.checkpoint.path}: the model has no chat template; name one with --template")
        self.tokenizer = tok = model.tokenizer
        self.template = resolve_template(source)
        check_template(self.template)
        self.bos = tok.token_text(tok.bos_id) if tok.bos_id is not None else ""
        self.eos = tok.token_text(tok.eos_id) if tok.eos_id is not None else ""
        # an end-of-turn marker the template writes but the vocabulary lacks ends a reply as text
        self.stop_strings = [t for t in END_OF_TURN if t in self.template and tok.lookup(t) is None]

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return render_chat(self.template, messages, add_generation_prompt, bos_token=self.bos, eos_token=self.eos)

    def encode(self, text: str, first: bool = True) -> list[int]:
        """Rendered text -> ids, special tokens parsed; BOS first for a whole rendering (first=True)
        when the tokenizer adds one, unless the template wrote it already."""
        tok = self.tokenizer
        add_bos = first and tok.add_bos and not (self.bos and text.startswith(self.bos))
        return tok.encode(text, add_bos=add_bos, parse_special=True)

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The whole conversation, ending with the assistant's turn to speak."""
        return self.encode(self.render(messages))
