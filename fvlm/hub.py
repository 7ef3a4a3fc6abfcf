"""Which model a directory holds, and the one shipped inside the package.

- `load()`: the default model shipped inside the package; `load(dir)`: any saved model.
- `load_pretrained(dir)`: FoveatedVLM or MultiTokenVLM, as config.json names (`model_class`).
- `load_upstream_weights(model, file)`: the published fVLM-135M `model.safetensors` (upstream key
  names, older transformers' DINOv2 attention names) into a model built with layout="video_first".
- the format itself (`save_pretrained`, `read_weights`, `load_weights`, `from_components`, ...)
  lives in fvlm.pretrained and is re-exported here.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .config import FVLMConfig
from .errors import CheckpointError, ConfigError
from .pretrained import (
    WEIGHTS_NAME,
    adapt_state_dict,
    from_components,
    load_model,
    load_weights,
    read_weights,
    save_pretrained,
)

__all__ = ["DEFAULT_MODEL_DIR", "WEIGHTS_NAME", "adapt_state_dict", "from_components", "load",
           "load_pretrained", "load_upstream_weights", "load_weights", "model_class", "read_weights",
           "save_pretrained"]

DEFAULT_MODEL_DIR = Path(__file__).parent / "assets" / "default_model"


def model_class(config: FVLMConfig) -> type:
    if config.architecture == "multi_token":
        from .baseline import MultiTokenVLM

        return MultiTokenVLM
    from .model import FoveatedVLM

    return FoveatedVLM


def load_pretrained(directory: str | os.PathLike, device: str | torch.device | None = None):
    """A model saved with save_pretrained (FoveatedVLM or MultiTokenVLM, from config.json)."""
    return load_model(directory, model_class, device=device)


def load(path: str | os.PathLike | None = None, device: str | torch.device | None = None):
    """The model in `path`, or the default model shipped inside the package."""
    path = DEFAULT_MODEL_DIR if path is None else Path(path)
    if path == DEFAULT_MODEL_DIR and not (path / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"the shipped default model is missing from {path}; reinstall fvlm")
    return load_pretrained(path, device=device)


def load_upstream_weights(model, path: str | os.PathLike) -> None:
    """Load an upstream fVLM `model.safetensors` (keys encoder.dino.*, dino_to_llm.*, llm.*, ...)."""
    if model.config.layout != "video_first":
        raise ConfigError("upstream fVLM checkpoints were trained video_first; build with layout='video_first'")
    load_weights(model, read_weights(path), source=str(path))
