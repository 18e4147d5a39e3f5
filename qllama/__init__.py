"""qllama: a quantized LLaMA runtime in Python. `qllama.load(path)` -> Model."""
from .chat_template import render_chat
from .errors import QllamaError
from . import pull
from .model import Model, load
from .session import Session

__version__ = "0.1.0"
__all__ = ["Model", "QllamaError", "Session", "load", "pull", "render_chat", "__version__"]
