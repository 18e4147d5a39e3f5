"""Where the tests find the real model files: ../shared/models beside the repository."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_MODELS = REPO.parent / "shared" / "models"
if not SHARED_MODELS.is_dir():
    raise RuntimeError(f"{SHARED_MODELS} is missing: the tests need ../shared/models beside the repository")
