"""The one exception type qllama raises for problems a user can fix (bad file, bad value)."""


class QllamaError(Exception):
    """A user-facing error; its message is one line naming the file or value at fault."""


class Terminated(BaseException):
    """SIGTERM, raised where a handler is installed (quantize's atomic write), so the clean-up that
    Ctrl-C gets runs for a kill too; the command then exits 143."""
