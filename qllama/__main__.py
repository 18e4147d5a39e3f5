"""`python -m qllama`: the same as the `qllama` command."""
from .cli import main

main()
