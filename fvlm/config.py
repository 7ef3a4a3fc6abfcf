"""FVLMConfig: everything needed to rebuild a model, as one dataclass <-> config.json.

The vision and LLM configs are stored in full (transformers' own `to_dict()` output), so a saved
model rebuilds offline. When building from components, `vision`/`llm` may instead be a Hugging
Face id or a local directory; `FoveatedVLM.from_components` resolves it and stores the dict.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

CONFIG_NAME = "config.json"
ARCHITECTURES = ("foveated", "multi_token")
LAYOUTS = ("text_first", "video_first")
MODES = ("coarse_only", "coarse_fine", "autoregressive")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class FVLMConfig:
    vision: dict[str, Any] | str  # Dinov2Config as a dict, or an HF id / local dir
    llm: dict[str, Any] | str  # causal-LM config as a dict (with "model_type"), or an HF id / dir
    architecture: str = "foveated"  # "foveated" (1 token/frame) | "multi_token" (baseline B1)
    tokens_per_frame: int = 16  # multi_token only: pooled patch tokens per frame (a square)
    image_size: int = 224  # frames are resized + center-cropped to this (DINO interpolates pos-emb)
    query_dim: int = 384
    visual_scale: float = 0.14  # visual tokens are dino_to_llm(z) * visual_scale
    layout: str = "text_first"  # "text_first": question, then frames | "video_first": upstream
    deep_query: bool = True  # False = shallow query (ablation A1): one attention on final features
    gaze_embedding: bool = False  # True: add an embedding of where the query looked to each token (fvlm/gaze.py)
    lambda_coarse: float = 0.0  # weight of the auxiliary coarse loss (it is always measurable)
    max_frames: int = 64
    fps: float = 1.0  # frame sampling rate
    image_frames: int = 8  # a still image is replicated to this many frames
    system_prompt: str = "You are a helpful AI assistant."
    attention_map: str = "last"  # heatmap aggregate: "last" | "mean" (over layers) | "layer:<i>"
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    notes: str = ""  # free text shown by `fvlm info` (e.g. "random weights, untrained")

    def __post_init__(self) -> None:
        for key in ("vision", "llm"):  # JSON-canonical (int dict keys become str), so equality
            if isinstance(getattr(self, key), dict):  # survives a save/load round trip
                try:
                    setattr(self, key, json.loads(json.dumps(getattr(self, key))))
                except (TypeError, ValueError) as e:
                    raise ConfigError(f"config key {key!r}: not JSON-serialisable: {e}") from e
        self.image_mean = tuple(float(x) for x in self.image_mean)
        self.image_std = tuple(float(x) for x in self.image_std)
        self.validate()

    def validate(self) -> None:
        def bad(key: str, why: str) -> ConfigError:
            return ConfigError(f"config key {key!r}: {why}")

        for key in ("vision", "llm"):
            value = getattr(self, key)
            if isinstance(value, dict):
                if "model_type" not in value:
                    raise bad(key, "a config dict needs 'model_type' (e.g. 'dinov2', 'llama')")
            elif not isinstance(value, str) or not value:
                raise bad(key, f"expected a config dict or an HF id/path, got {type(value).__name__}")
        if self.architecture not in ARCHITECTURES:
            raise bad("architecture", f"{self.architecture!r} is not one of {ARCHITECTURES}")
        if self.layout not in LAYOUTS:
            raise bad("layout", f"{self.layout!r} is not one of {LAYOUTS}")
        for key in ("image_size", "query_dim", "max_frames", "image_frames", "tokens_per_frame"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad(key, f"expected a positive integer, got {value!r}")
        side = round(self.tokens_per_frame**0.5)
        if side * side != self.tokens_per_frame:
            raise bad("tokens_per_frame", f"must be a square number (4, 16, 64), got {self.tokens_per_frame}")
        for key in ("visual_scale", "fps"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise bad(key, f"expected a positive number, got {value!r}")
        if not isinstance(self.lambda_coarse, (int, float)) or self.lambda_coarse < 0:
            raise bad("lambda_coarse", f"expected a number >= 0, got {self.lambda_coarse!r}")
        if not isinstance(self.deep_query, bool):
            raise bad("deep_query", f"expected true/false, got {self.deep_query!r}")
        if not isinstance(self.gaze_embedding, bool):
            raise bad("gaze_embedding", f"expected true/false, got {self.gaze_embedding!r}")
        if self.gaze_embedding and (self.architecture != "foveated" or not self.deep_query):
            raise bad("gaze_embedding", "needs the foveated architecture with the deep query (the gaze is "
                      "read from the query's attention in the config.attention_map layer)")
        if self.attention_map not in ("last", "mean") and not _is_layer_spec(self.attention_map):
            raise bad("attention_map", f"use 'last', 'mean' or 'layer:<i>', got {self.attention_map!r}")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise bad("image_mean/image_std", "need three values (RGB)")

    # ---- dict / JSON round trip -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["image_mean"], d["image_std"] = list(self.image_mean), list(self.image_std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FVLMConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"expected a JSON object for FVLMConfig, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"unknown config key(s) {unknown}; valid keys are {sorted(known)}"
            )
        missing = [k for k in ("vision", "llm") if k not in d]
        if missing:
            raise ConfigError(f"config is missing required key(s) {missing}")
        return cls(**d)

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "FVLMConfig":
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise ConfigError(f"{path} not found: is {directory} a saved fvlm model directory?")
        return cls.from_dict(read_json(path))

    # ---- derived ----------------------------------------------------------------------------
    def layer_index(self, num_layers: int) -> int | None:
        """Which layer the heatmap shows: an index, or None for the mean over layers."""
        if self.attention_map == "last":
            return num_layers - 1
        if self.attention_map == "mean":
            return None
        i = int(self.attention_map.split(":", 1)[1])
        if not -num_layers <= i < num_layers:
            raise ConfigError(f"attention_map {self.attention_map!r}: the model has {num_layers} layers")
        return i % num_layers


def _is_layer_spec(s: Any) -> bool:
    if not isinstance(s, str) or not s.startswith("layer:"):
        return False
    try:
        int(s.split(":", 1)[1])
    except ValueError:
        return False
    return True


def read_json(path: Path) -> Any:
    """A JSON file's content; invalid JSON is a ConfigError that names the file."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from e
