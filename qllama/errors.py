"""The one exception type qllama raises for problems a user can fix (bad file, bad value)."""


class QllamaError(Exception):
    """A user-facing error; its message is one line naming the file or value at fault."""
