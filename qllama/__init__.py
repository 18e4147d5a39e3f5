"""qllama: a quantized LLaMA runtime in Python. `qllama.load(path)` -> Model."""
from .errors import QllamaError
from .model import Model, load

__version__ = "0.1.0"
__all__ = ["Model", "QllamaError", "load", "__version__"]
