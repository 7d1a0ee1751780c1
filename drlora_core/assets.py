"""The bundled demo model and dataset, addressed by id so that no run needs a download."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
DEMO_MODEL_ID = "drlora-demo-moe"


def demo_model_dir() -> Path:
    return ASSETS_DIR / DEMO_MODEL_ID


def demo_train_file() -> Path:
    return ASSETS_DIR / "demo_data" / "train.jsonl"


def demo_val_file() -> Path:
    return ASSETS_DIR / "demo_data" / "val.jsonl"


def resolve_model_dir(model: str) -> Path:
    """A local Hugging Face directory, or the demo model's id; anything else is refused with what to pass instead."""
    if model == DEMO_MODEL_ID:
        return demo_model_dir()
    path = Path(model).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"model {model!r} is neither the bundled {DEMO_MODEL_ID!r} nor a local directory; pass a directory "
            "holding config.json, *.safetensors and the tokenizer files (models are never downloaded)"
        )
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model directory {path} has no config.json; point --model at a Hugging Face model dir")
    return path
