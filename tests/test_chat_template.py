"""Chat template rendering against Hugging Face transformers' `apply_chat_template`.

The oracle is tests/fixtures/template_cases.json, written by tests/fixtures/make_template_cases.py
with transformers: real models' templates (tests/fixtures/templates/), qllama's built-ins and small
probe templates, on fixed conversations. Every case must match exactly, and every error transformers
raises must be a one-line QllamaError here. Each built-in must also equal a real model's template of
its family (rendered by transformers) on plain conversations.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

import pytest

import qllama
from qllama import chat_template
from qllama.chat_template import BUILTIN_TEMPLATES, render_chat, resolve_template
from qllama.errors import QllamaError

FIXTURES = Path(__file__).parent / "fixtures"
TEMPLATE_DIR = FIXTURES / "templates"
DATA = json.loads((FIXTURES / "template_cases.json").read_text(encoding="utf-8"))
REGENERATE = "regenerate with tests/fixtures/make_template_cases.py (see its docstring)"


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    """strftime_now sees the clock the fixture script gave transformers."""
    fixed = datetime.fromisoformat(DATA["now"])
    monkeypatch.setattr(chat_template, "now", lambda: fixed)


def template_arg(key: str) -> str:
    """What qllama is given for a case's template: the file's text, the built-in's name, the probe's text."""
    info = DATA["templates"][key]
    if info["kind"] == "file":
        return (TEMPLATE_DIR / key).read_text(encoding="utf-8")
    if info["kind"] == "builtin":
        return info["name"]
    return info["text"]


def render_case(case: dict) -> str:
    info = DATA["templates"][case["template"]]
    return render_chat(template_arg(case["template"]), DATA["conversations"][case["conversation"]],
                       case["add_generation_prompt"], info["bos_token"], info["eos_token"],
                       tools=DATA["tools"] if case["tools"] else None, **case["variables"])


def assert_one_line_error(err: QllamaError):
    msg = str(err)
    assert msg.startswith("chat template: "), msg
    assert "\n" not in msg and "\r" not in msg, msg
    chained = err.__cause__ is not None or (err.__context__ is not None and not err.__suppress_context__)
    assert not chained, "the Jinja traceback must not be chained"


RENDERED = [c for c in DATA["cases"] if "expected" in c]
REFUSED = [c for c in DATA["cases"] if "error" in c]


def case_id(case: dict) -> str:
    return f"{case['template']}::{case['case']}"


@pytest.mark.parametrize("case", RENDERED, ids=case_id)
def test_renders_as_transformers(case):
    assert render_case(case) == case["expected"]


@pytest.mark.parametrize("case", REFUSED, ids=case_id)
def test_refuses_as_transformers(case):
    with pytest.raises(QllamaError) as info:
        render_case(case)
    assert_one_line_error(info.value)
    if case["error_type"] == "TemplateError":  # raise_exception: the template's own words are kept
        assert " ".join(case["error"].split()) in str(info.value)


def test_fixture_covers_every_template_and_builtin():
    files = sorted(p.name for p in TEMPLATE_DIR.glob("*.jinja"))
    recorded = sorted(k for k, v in DATA["templates"].items() if v["kind"] == "file")
    assert files == recorded, REGENERATE
    for name in files:  # the cases were rendered from these very bytes
        text = (TEMPLATE_DIR / name).read_text(encoding="utf-8")
        assert hashlib.sha256(text.encode()).hexdigest() == DATA["templates"][name]["sha256"], (name, REGENERATE)
    for name, text in BUILTIN_TEMPLATES.items():
        info = DATA["templates"].get(f"builtin:{name}")
        assert info is not None, (name, REGENERATE)
        assert hashlib.sha256(text.encode()).hexdigest() == info["sha256"], (name, REGENERATE)
    readme = (TEMPLATE_DIR / "README.md").read_text(encoding="utf-8")
    for name in files:
        assert f"`{name}` | `{DATA['templates'][name]['sha256']}`" in readme, name
    assert len(RENDERED) > 300 and len(REFUSED) > 30


# --- built-ins against real templates of their families ---------------------------------------

@pytest.mark.parametrize("oracle", DATA["oracles"],
                         ids=lambda o: f"{o['builtin']}={o['reference']}::{o['conversation']}"
                                       f"/{'prompt' if o['add_generation_prompt'] else 'no_prompt'}")
def test_builtin_matches_reference_template(oracle):
    out = render_chat(oracle["builtin"], oracle["builtin_messages"], oracle["add_generation_prompt"],
                      oracle["bos_token"], oracle["eos_token"])
    assert out == oracle["expected"]


def test_every_builtin_has_a_reference():
    checked = {o["builtin"] for o in DATA["oracles"]}
    assert checked == set(BUILTIN_TEMPLATES)
    for name in ("chatml", "llama2", "llama3", "mistral", "zephyr", "phi3", "gemma"):
        assert name in BUILTIN_TEMPLATES


def meta_llama2_prompt(dialog: list[dict], bos: str, eos: str) -> str:
    """Llama 2 chat as Meta's reference code builds it (llama `generation.py`, chat_completion): the
    system text wrapped in <<SYS>> joins the first user message; each [INST] pair is one BOS..EOS unit."""
    if dialog[0]["role"] == "system":
        first = "<<SYS>>\n" + dialog[0]["content"] + "\n<</SYS>>\n\n" + dialog[1]["content"]
        dialog = [{"role": "user", "content": first}] + dialog[2:]
    text = ""
    for prompt, answer in zip(dialog[::2], dialog[1::2]):
        text += f"{bos}[INST] {prompt['content'].strip()} [/INST] {answer['content'].strip()} {eos}"
    if len(dialog) % 2:
        text += f"{bos}[INST] {dialog[-1]['content'].strip()} [/INST]"
    return text


@pytest.mark.parametrize("conv", ["system_user", "user_only", "multi_turn", "system_multi_turn", "finished"])
def test_llama2_builtin_matches_meta_reference_code(conv):
    messages = DATA["conversations"][conv]
    assert render_chat("llama2", messages, True, "<s>", "</s>") == meta_llama2_prompt(messages, "<s>", "</s>")


def test_builtins_refuse_roles_they_cannot_place():
    messages = [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}]
    for name in ("llama2", "mistral", "zephyr", "phi3", "gemma"):
        with pytest.raises(QllamaError, match=f"{name} template: no place for role tool") as info:
            render_chat(name, messages)
        assert_one_line_error(info.value)


# --- names, errors, sandbox ---------------------------------------------------------------------

def test_resolve_template():
    assert resolve_template("chatml") == BUILTIN_TEMPLATES["chatml"]
    assert resolve_template(" Llama3 ") == BUILTIN_TEMPLATES["llama3"]
    text = "{{ messages[0]['content'] }}"
    assert resolve_template(text) is text
    assert render_chat("chatml", [{"role": "user", "content": "hi"}]) == \
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("name", ["chatlm", "llama-3", "vicuna", "a name with spaces\nand a newline"])
def test_unknown_builtin_name_is_refused_clearly(name):
    for call in (lambda: resolve_template(name), lambda: render_chat(name, [{"role": "user", "content": "hi"}])):
        with pytest.raises(QllamaError) as info:
            call()
        assert_one_line_error(info.value)
        assert "unknown built-in template" in str(info.value)
        assert ", ".join(BUILTIN_TEMPLATES) in str(info.value)


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__ }}{{ messages.pop() }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ raise_exception.__globals__.keys() }}",
    "{{ strftime_now.__globals__['now'] }}",
    "{{ dict.__class__.__subclasses__() }}",
    "{% set x = messages[0] %}{{ x.update({'role': 'system'}) }}",
    "{{ messages[0].clear() }}",
    "{% set ns = namespace() %}{% set ns._private = 1 %}",
    "{% set messages.role = 'system' %}",
    "{% set ns = namespace(__class__=1) %}",
])
def test_sandbox_refuses_escapes_and_mutation(template):
    """Unsafe attributes come back undefined, and using them (or mutating the inputs) is an error."""
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(QllamaError) as info:
        render_chat(template, messages)
    assert_one_line_error(info.value)
    assert messages == [{"role": "user", "content": "hi"}]


def test_error_messages_are_one_line_and_say_where():
    with pytest.raises(QllamaError, match=r"^chat template: syntax error on line 2: ") as info:
        render_chat("{% for m in messages %}\n{{ m.role }\n{% endfor %}", [{"role": "user", "content": "x"}])
    assert_one_line_error(info.value)
    with pytest.raises(QllamaError, match=r"^chat template: line 3: TypeError: ") as info:
        render_chat("{% for m in messages %}\n\n{{ m.content + 1 }}{% endfor %}", [{"role": "user", "content": "x"}])
    with pytest.raises(QllamaError, match=r"refused the conversation: roles must alternate \(really\)$"):
        render_chat("{{ raise_exception('roles must\n  alternate (really)') }}", [{"role": "user", "content": "x"}])
    with pytest.raises(QllamaError, match=r"refused by the sandbox: access to attribute '__class__'"):
        render_chat("{{ ''.__class__.__mro__ }}", [{"role": "user", "content": "x"}])


def test_bad_inputs_are_refused_clearly():
    for messages in ([], None, ["hello"]):
        with pytest.raises(QllamaError, match="^chat template: "):
            render_chat("chatml", messages)
    with pytest.raises(QllamaError, match="tools must be a list of dicts"):
        render_chat("chatml", [{"role": "user", "content": "x"}], tools=[print])
    with pytest.raises(QllamaError, match="cannot pass a object to a template"):
        render_chat("chatml", [{"role": "user", "content": object()}])
    with pytest.raises(QllamaError, match="expected Jinja text or a built-in name"):
        render_chat({"default": "{{ x }}"}, [{"role": "user", "content": "x"}])


def test_plain_data_and_passthrough():
    """Callers' subclasses and numpy scalars reach the template as plain values; extra keywords arrive."""
    import enum

    import numpy as np

    class Role(str, enum.Enum):
        USER = "user"

    out = render_chat("{{ messages[0].role }} {{ n + 1 }} {{ flag }} {{ messages[0].content | tojson }}",
                      [{"role": Role.USER, "content": ("a", np.int64(2), np.bool_(False))}],
                      n=np.float32(1.5), flag=np.bool_(True))
    assert out == 'user 2.5 True ["a", 2, false]'


def test_strftime_now_uses_the_clock(monkeypatch):
    monkeypatch.setattr(chat_template, "now", lambda: datetime(2024, 12, 31, 23, 59))
    llama32 = (TEMPLATE_DIR / "meta-llama-Llama-3.2-3B-Instruct.jinja").read_text(encoding="utf-8")
    assert "Today Date: 31 Dec 2024\n" in render_chat(llama32, [{"role": "user", "content": "hi"}])
    assert "Today Date: 02 Jan 2025\n" in render_chat(llama32, [{"role": "user", "content": "hi"}],
                                                       date_string="02 Jan 2025")


def test_render_chat_is_exported():
    assert qllama.render_chat is render_chat and "render_chat" in qllama.__all__
