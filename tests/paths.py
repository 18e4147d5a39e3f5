"""Where the tests find the real model files: tests/models/, carried by the repository (README there)."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "tests" / "models"
