"""`qllama chat`: the interactive terminal over a Conversation, and its piped form.

On a terminal: line editing and history kept across runs (readline), `\"\"\"` opens and closes a
multi-line message (as in ollama), replies stream token by token, Ctrl-C stops a reply and keeps
what was said, Ctrl-C or Ctrl-D at an empty prompt exits. Piped (stdin not a terminal): each line
is a user turn and only the replies go to stdout, one line each; notices go to stderr.
"""
from __future__ import annotations

import dataclasses
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from .conversation import Conversation
from .errors import QllamaError
from .paths import state_dir
from .sampling import SamplingParams

HELP = """Commands:
  /help                 this list
  /bye, /exit           leave (so do Ctrl-D and Ctrl-C at an empty prompt)
  /clear                forget the conversation (the system message stays)
  /system [TEXT]        set the system message (no TEXT: show it)
  /set OPTION VALUE     temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed,
                        max_tokens, verbose (on/off)
  /save FILE            save the conversation as JSON
  /load FILE            continue a saved conversation
  /stats                context in use and the speed of the last reply
A message that starts with \"\"\" goes on until a line that ends with \"\"\".
Ctrl-C during a reply stops it."""
MULTILINE = '"""'
HISTORY_LENGTH = 1000


def parse_option(name: str, value: str):
    """A /set value of the right type for SamplingParams (or max_tokens): int, float or None."""
    kinds = {f.name: f.type for f in dataclasses.fields(SamplingParams)}
    kinds["max_tokens"] = "int"
    if name not in kinds:
        raise QllamaError(f"/set: unknown option {name!r} (known: {', '.join(kinds)}, verbose)")
    if name == "seed" and value.lower() in ("none", "random"):
        return None
    try:
        number = float(value) if "float" in kinds[name] else int(value)
    except ValueError:
        raise QllamaError(f"/set {name}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise QllamaError(f"/set {name}: {value!r} is not a finite number")
    return number


class ChatRepl:
    def __init__(self, conversation: Conversation, params: SamplingParams, max_tokens: int, verbose: bool = False,
                 out=None, err=None):
        self.conversation = conversation
        self.params = params
        self.max_tokens = max_tokens
        self.verbose = verbose
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.failed = False

    def notice(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def error(self, text: str) -> None:
        self.failed = True
        self.notice(f"error: {text}")

    # -- one turn ------------------------------------------------------------------------------
    def reply(self, text: str, cancel: threading.Event) -> None:
        """Stream the reply to `text`; stops early when cancel is set."""
        conv, session = self.conversation, self.conversation.session
        pieces = conv.say(text, max_tokens=self.max_tokens, params=self.params, cancel=cancel)
        if conv.dropped_turns:
            self.notice(f"[context full: the {conv.dropped_turns} oldest turn(s) were dropped to make room]")
        try:
            for piece in pieces:
                self.out.write(piece)
                self.out.flush()
        finally:
            pieces.close()
            self.out.write("\n")
            self.out.flush()
        if session.finish_reason == "context":
            self.notice("[the context is full: the reply was cut; the next message drops the oldest turns]")
        elif session.finish_reason == "cancelled":
            self.notice("[reply stopped]")
        if self.verbose:
            self.notice(session.timings.report())

    # -- commands ------------------------------------------------------------------------------
    def command(self, line: str) -> bool:
        """Run a /command; False means leave."""
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        conv = self.conversation
        if name in ("/bye", "/exit", "/quit"):
            return False
        if name in ("/help", "/?"):
            self.notice(HELP)
        elif name == "/clear":
            conv.clear()
            self.notice("Cleared the conversation.")
        elif name == "/system":
            if arg:
                conv.set_system(arg)
                self.notice("Set the system message.")
            else:
                system = [m["content"] for m in conv.messages if m["role"] == "system"]
                self.notice(system[0] if system else "(no system message)")
        elif name == "/set":
            self.set_option(arg)
        elif name == "/save":
            self.need(arg, "/save FILE")
            conv.save(arg)
            self.notice(f"Saved the conversation to {arg}.")
        elif name == "/load":
            self.need(arg, "/load FILE")
            conv.load(arg)
            self.notice(f"Loaded {len(conv.messages)} messages from {arg}.")
        elif name == "/stats":
            self.notice(self.stats())
        else:
            raise QllamaError(f"unknown command {name!r}; /help lists the commands")
        return True

    @staticmethod
    def need(arg: str, usage: str) -> None:
        if not arg:
            raise QllamaError(f"usage: {usage}")

    def set_option(self, arg: str) -> None:
        name, _, value = arg.partition(" ")
        name, value = name.replace("-", "_"), value.strip()
        self.need(name and value, "/set OPTION VALUE")
        if name == "verbose":
            self.verbose = value.lower() in ("on", "true", "1", "yes")
        elif name == "max_tokens":
            number = parse_option(name, value)
            if number < 1:
                raise QllamaError(f"/set max_tokens: must be at least 1, got {number}")
            self.max_tokens = number
        else:
            self.params = dataclasses.replace(self.params, **{name: parse_option(name, value)})
        self.notice(f"Set {name} to {value}.")

    def stats(self) -> str:
        session = self.conversation.session
        turns = sum(m["role"] == "user" for m in self.conversation.messages)
        return (f"context: {session.n_past} of {session.ctx} tokens in use; {turns} turn(s); "
                f"last prompt: {session.last_prefill} tokens run\n{session.timings.report()}")

    # -- the loops -----------------------------------------------------------------------------
    def handle(self, line: str, cancel: threading.Event) -> bool:
        """One input: a command or a message. False means leave."""
        try:
            if line.startswith("/"):
                return self.command(line)
            if line.strip():
                self.reply(line, cancel)
        except QllamaError as e:
            self.error(str(e))
        return True

    def run_piped(self, lines: Iterator[str]) -> int:
        cancel = threading.Event()
        for line in lines:
            if not self.handle(line.rstrip("\r\n"), cancel):
                break
        return 1 if self.failed else 0

    def run_terminal(self, read: Callable[[str], str]) -> int:
        self.notice("Type a message, /help for commands, /bye or Ctrl-D to leave.")
        while True:
            try:
                line = read_message(read)
            except EOFError:
                self.out.write("\n")
                return 0
            except KeyboardInterrupt:
                if pending_input():
                    self.out.write("\n")
                    continue
                self.out.write("\n")
                return 0
            cancel = threading.Event()
            previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())  # Ctrl-C stops the reply only
            try:
                if not self.handle(line, cancel):
                    return 0
            finally:
                signal.signal(signal.SIGINT, previous)


def read_message(read: Callable[[str], str]) -> str:
    """One message: a line, or the lines from one that starts with three double quotes to one that ends with them.
    Ctrl-C inside a multi-line message drops it (an empty message: nothing is said)."""
    line = read(">>> ")
    if not line.lstrip().startswith(MULTILINE):
        return line
    text = line.lstrip()[len(MULTILINE):]
    try:
        while not text.rstrip().endswith(MULTILINE):
            text += "\n" + read("... ")
    except KeyboardInterrupt:
        return ""
    return text.rstrip()[:-len(MULTILINE)].strip("\n")


def pending_input() -> bool:
    """Whether the line being edited held text when Ctrl-C came (readline only)."""
    try:
        import readline
        return bool(readline.get_line_buffer())
    except (ImportError, AttributeError):
        return False


def with_history(run: Callable[[Callable[[str], str]], int]) -> int:
    """Run the terminal loop with readline's line editing and a history file kept across runs."""
    try:
        import readline
    except ImportError:         # no readline (e.g. Windows): plain input
        return run(input)
    path = state_dir() / "chat_history"
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(HISTORY_LENGTH)
    try:
        return run(input)
    finally:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)
        except OSError:
            pass
