"""The real `qllama chat` and `qllama run` with the real SmolLM2, driven as a person would: through a
pseudo-terminal (pexpect), and piped."""
import re
import subprocess
import sys

import pexpect
import pytest

from cli_helpers import assert_one_line_error, qllama

QUESTION = "What is the capital of France? Answer in one word."
PROMPT = ">>> "


@pytest.fixture()
def chat(smollm2_gguf, tmp_path):
    """A function starting `qllama chat` in a terminal; every child is closed at the end."""
    children = []

    def start(*args):
        env = {"XDG_STATE_HOME": str(tmp_path / "state"), "PATH": "/usr/bin:/bin", "TERM": "dumb",
               "HOME": str(tmp_path), "QLLAMA_CACHE": str(smollm2_gguf.parent.parent)}
        child = pexpect.spawn(sys.executable, ["-m", "qllama", "chat", "-m", str(smollm2_gguf), "--temp", "0", *args],
                              env=env, encoding="utf-8", timeout=120, dimensions=(40, 200))
        children.append(child)
        child.expect_exact(PROMPT)
        return child
    yield start
    for child in children:
        child.close(force=True)


def ask(child, text):
    child.sendline(text)
    child.expect_exact(PROMPT)
    return child.before


def test_a_reply_streams_and_the_second_turn_runs_only_its_tokens(chat, smollm2_gguf):
    child = chat()
    assert "Paris" in ask(child, QUESTION)
    ask(child, "And of Germany?")
    stats = ask(child, "/stats")
    run = int(re.search(r"last prompt: (\d+) tokens run", stats).group(1))
    import qllama
    tok = qllama.load(smollm2_gguf).tokenizer
    turn = "<|im_end|>\n<|im_start|>user\nAnd of Germany?<|im_end|>\n<|im_start|>assistant\n"  # ChatML, documented
    assert run == len(tok.encode(turn, parse_special=True))
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_a_long_reply_and_keeps_the_chat(chat):
    child = chat("-n", "4000")
    story = "Write a very long story about a dragon who learns to cook, with many chapters."
    child.sendline(story)
    child.expect_exact(story + "\r\n")         # the terminal's echo of the line
    child.expect(r"\w+ \w+ \w+ \w+ \w+")       # the reply is streaming
    child.sendintr()
    child.expect_exact("[reply stopped]")
    child.expect_exact(PROMPT)
    assert "Traceback" not in child.before
    stats = ask(child, "/stats")
    assert "1 turn(s)" in stats
    assert "Paris" in ask(child, QUESTION)


def test_clear_forgets_and_ctrl_d_leaves(chat):
    child = chat()
    ask(child, QUESTION)
    assert "Cleared" in ask(child, "/clear")
    assert "context: 0 of" in ask(child, "/stats")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_at_an_empty_prompt_leaves(chat):
    child = chat()
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and "Traceback" not in child.before


def test_a_full_context_shows_a_notice_and_the_chat_goes_on(chat):
    child = chat("--ctx", "160", "-n", "24")
    seen = ""
    for i in range(6):
        seen += ask(child, f"Question {i}: name a colour.")
    assert "[context full" in seen and "Traceback" not in seen
    assert re.search(r"\w", ask(child, "Question 6: name a colour.").split("\n", 1)[1])   # still answering
    in_use = int(re.search(r"context: (\d+) of 160", ask(child, "/stats")).group(1))
    assert in_use <= 160


def test_multiline_message(chat):
    child = chat()
    child.sendline('"""What is the capital')
    child.expect_exact("... ")
    child.sendline('of France? Answer in one word."""')
    child.expect_exact(PROMPT)
    assert "Paris" in child.before


def test_bad_commands_and_files_are_one_line_errors_and_the_chat_goes_on(chat, tmp_path):
    (tmp_path / "bad.json").write_text('{"messages": [{"role": "wizard", "content": "x"}]}')
    child = chat()
    assert re.search(r"error: unknown command '/frobnicate'", ask(child, "/frobnicate"))
    assert "error: " in ask(child, f"/load {tmp_path / 'missing.json'}")
    assert "role 'wizard'" in ask(child, f"/load {tmp_path / 'bad.json'}")
    assert "error: " in ask(child, "/set temperature hot")
    assert "Set temperature to 0" in ask(child, "/set temperature 0")
    assert "Paris" in ask(child, QUESTION)
    assert "Saved" in ask(child, f"/save {tmp_path / 'c.json'}")
    assert (tmp_path / "c.json").read_text().count("\"role\"") == 2          # the question and its answer


def test_a_template_that_fails_to_render_is_an_error_and_the_chat_goes_on(chat, tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text("{% if messages|length > 1 %}{{ raise_exception('only one message, please') }}{% endif %}"
                        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                        "<|im_start|>assistant\n")
    child = chat("--template", str(template), "-n", "8")
    ask(child, "Hi")
    out = ask(child, "Hi again")
    assert re.search(r"error: chat template: .*only one message, please", out) and "Traceback" not in out
    assert "Cleared" in ask(child, "/clear")


def test_piped_mode_prints_only_the_replies(smollm2_gguf):
    result = subprocess.run([sys.executable, "-m", "qllama", "chat", "-m", str(smollm2_gguf), "--temp", "0", "-n", "16"],
                            input=f"{QUESTION}\nAnd of Germany? Answer in one word.\n", capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and "Paris" in lines[0] and "Berlin" in lines[1]


def test_unknown_template_name_is_a_one_line_error(smollm2_gguf):
    result = qllama("chat", "-m", smollm2_gguf, "--template", "nonesuch", input="")
    assert_one_line_error(result, "nonesuch")


def test_a_template_with_a_syntax_error_is_refused_before_the_chat_starts(smollm2_gguf, tmp_path):
    # no message is ever rendered (empty input): the template is compiled at start all the same
    template = tmp_path / "broken.jinja"
    template.write_text("{% for message in %}{{ message }}{% endfor %}")
    result = qllama("chat", "-m", smollm2_gguf, "--template", template, input="")
    assert_one_line_error(result, str(template), "syntax error on line 1")


def test_run_applies_the_chat_template(smollm2_gguf):
    result = qllama("run", QUESTION, "-m", smollm2_gguf, "--temp", "0", "-n", "16")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout and QUESTION not in result.stdout


def test_run_raw_completes_and_reads_stdin(smollm2_gguf):
    result = qllama("run", "-", "-m", smollm2_gguf, "--raw", "--temp", "0", "-n", "8", input="The capital of France is\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("The capital of France is") and "Paris" in result.stdout


def test_run_stop_understands_newline(smollm2_gguf):
    ask = ("run", "Name three fruits as a numbered list.", "-m", smollm2_gguf, "--temp", "0", "-n", "40")
    full, cut = qllama(*ask), qllama(*ask, "--stop", "\\n")
    assert full.stdout.count("\n") > 2
    assert cut.stdout == full.stdout[:full.stdout.index("\n")] + "\n"
