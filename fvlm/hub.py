"""Load a model by name: the one shipped inside the package, a directory, or a hub id.

- `load()`: the default model shipped inside the package; `load(name)`: a saved model directory, or a
  Hugging Face hub id `owner/name[@revision]` (e.g. "sanps/fVLM-135M", the upstream release), in
  fvlm's format or upstream fVLM's (`resolve`, `checkpoint_format`; see docs/hub.md).
- `load_pretrained(name)`: FoveatedVLM or MultiTokenVLM, as config.json names (`model_class`).
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
    checkpoint_format,
    from_components,
    load_model,
    load_weights,
    read_weights,
    save_pretrained,
)
from .resolve import MODEL_HELP, Source, parse_hub_id, resolve

__all__ = [
    "DEFAULT_MODEL_DIR",
    "MODEL_HELP",
    "WEIGHTS_NAME",
    "Source",
    "adapt_state_dict",
    "checkpoint_format",
    "from_components",
    "load",
    "load_pretrained",
    "load_upstream_weights",
    "load_weights",
    "model_class",
    "parse_hub_id",
    "read_weights",
    "resolve",
    "save_pretrained",
]

DEFAULT_MODEL_DIR = Path(__file__).parent / "assets" / "default_model"


def model_class(config: FVLMConfig) -> type:
    if config.architecture == "multi_token":
        from .baseline import MultiTokenVLM

        return MultiTokenVLM
    from .model import FoveatedVLM

    return FoveatedVLM


def load_pretrained(name: str | os.PathLike | Source, device: str | torch.device | None = None):
    """A saved model (FoveatedVLM or MultiTokenVLM, from config.json) or an upstream fVLM checkpoint,
    from a directory or a hub id."""
    return load_model(name, model_class, device=device)


def load(name: str | os.PathLike | Source | None = None, device: str | torch.device | None = None):
    """The model `name` names (a directory or a hub id owner/name[@revision]), or by default the
    model shipped inside the package."""
    if name is None:
        if not (DEFAULT_MODEL_DIR / WEIGHTS_NAME).is_file():
            raise CheckpointError(f"the shipped default model is missing from {DEFAULT_MODEL_DIR}; reinstall fvlm")
        name = DEFAULT_MODEL_DIR
    return load_pretrained(name, device=device)


def load_upstream_weights(model, path: str | os.PathLike) -> None:
    """Load an upstream fVLM `model.safetensors` (keys encoder.dino.*, dino_to_llm.*, llm.*, ...)."""
    if model.config.layout != "video_first":
        raise ConfigError("upstream fVLM checkpoints were trained video_first; build with layout='video_first'")
    load_weights(model, read_weights(path), source=str(path))
