"""The saved-model format: config.json + model.safetensors + tokenizer files. Never unpickles.

- `save_pretrained(model, dir)`: our own format; loading it needs no network.
- `load_model(name, model_class)`: a directory or hub id (fvlm.resolve) holding our format or an
  upstream fVLM checkpoint (fvlm.upstream); `checkpoint_format(dir)` says which.
- `read_weights`, `adapt_state_dict`, `load_weights`: safetensors in, checked against the model.
- `from_components(cls, vision=..., llm=...)`: a fresh model from HF ids, local dirs or config objects.

This module knows no model class: its callers pass one (`FoveatedVLM.from_pretrained` its own,
`fvlm.hub.load` the one config.json names), so the models import it without importing back.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, save_model

from .config import CONFIG_NAME, FVLMConfig, read_json
from .errors import CheckpointError, ConfigError
from .resolve import Source, resolve
from .upstream import is_upstream, tensor_shapes, upstream_config

WEIGHTS_NAME = "model.safetensors"

# transformers renamed DINOv2's attention modules; checkpoints may carry either scheme.
_DINO_RENAMES = [
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
]
_WRAPPER_PREFIX = re.compile(r"^(module\.|_orig_mod\.)+")  # DDP / torch.compile wrappers


# ---- saving -------------------------------------------------------------------------------------
def save_pretrained(model, directory: str | os.PathLike,
                    weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write config.json, model.safetensors and the tokenizer; each file lands atomically.
    weights: the state dict to write instead of the model's own (e.g. gathered from FSDP shards;
    tied weights stored once), None for the model's."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".saving-") as tmp:
        tmp = Path(tmp)
        model.config.save(tmp)
        if weights is None:
            save_model(model, str(tmp / WEIGHTS_NAME))
        else:
            save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS_NAME))
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(tmp)
        for f in sorted(tmp.iterdir()):
            os.replace(f, directory / f.name)
    return directory


# ---- loading ------------------------------------------------------------------------------------
def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A safetensors file as a state dict. Pickle formats (.bin/.pt) are refused."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: only .safetensors weights are loaded (pickle files can run code)")
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e


def adapt_state_dict(sd: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Strip DDP/compile prefixes; map DINOv2 attention names to the installed transformers'."""
    expected = set(model.state_dict())
    out = {}
    for key, value in sd.items():
        key = _WRAPPER_PREFIX.sub("", key)
        if key not in expected:
            for old, new in _DINO_RENAMES:
                for a, b in ((old, new), (new, old)):
                    if a in key and key.replace(a, b) in expected:
                        key = key.replace(a, b)
        out[key] = value
    return out


def load_weights(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str = "weights") -> None:
    """Load a state dict strictly, except for tied weights stored once (e.g. lm_head = embeddings)."""
    sd = adapt_state_dict(sd, model)
    current = model.state_dict()
    wrong = [f"{k}: {tuple(v.shape)} vs model {tuple(current[k].shape)}"
             for k, v in sd.items() if k in current and v.shape != current[k].shape]
    if wrong:
        raise CheckpointError(f"{source}: shape mismatch for {len(wrong)} tensors, e.g. {wrong[:5]}")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    params = dict(model.named_parameters(remove_duplicate=False))
    names_of: dict[int, list[str]] = {}
    for name, p in params.items():
        names_of.setdefault(id(p), []).append(name)
    missing = [k for k in missing if not (k in params and any(o in sd for o in names_of[id(params[k])]))]
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match the model: {len(missing)} missing (e.g. {missing[:5]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:5]}); check that the config matches"
        )


def checkpoint_format(directory: str | os.PathLike) -> str:
    """"fvlm" (config.json written by save_pretrained) or "upstream" (upstream fVLM weights, their own
    or no config.json). Anything else raises: the error says what is missing."""
    directory = Path(directory)
    config_path, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    raw = None
    if config_path.is_file():
        raw = read_json(config_path)
    if isinstance(raw, dict) and all(isinstance(raw.get(k), dict) and "model_type" in raw[k] for k in ("vision", "llm")):
        return "fvlm"
    if weights.is_file() and is_upstream(tensor_shapes(weights)):
        return "upstream"
    if raw is None:
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}"
                              + ("" if weights.is_file() else f" and no {WEIGHTS_NAME}")
                              + ": is it a saved fvlm model directory?")
    FVLMConfig.from_dict(raw)  # raises a ConfigError that names the bad keys, if any
    raise ConfigError(f"{config_path}: a saved model stores 'vision' and 'llm' as config dicts, not names "
                      "(build with from_components, then save_pretrained)")


def load_model(name: str | os.PathLike | Source, model_class: Callable[[FVLMConfig], type],
               device: str | torch.device | None = None):
    """The model `name` names (a directory or hub id, see fvlm.resolve), saved with save_pretrained or
    an upstream fVLM checkpoint, as the class `model_class(config)` picks for its config."""
    from transformers import AutoTokenizer

    source = resolve(name, required=(WEIGHTS_NAME,))
    directory = source.path
    if checkpoint_format(directory) == "upstream":
        config, tokenizer_dir = upstream_config(source, tensor_shapes(directory / WEIGHTS_NAME))
    else:
        config, tokenizer_dir = FVLMConfig.load(directory), directory
    tokenizer = None
    if (tokenizer_dir / "tokenizer.json").is_file() or (tokenizer_dir / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    model = model_class(config)(config, tokenizer)
    weights = directory / WEIGHTS_NAME
    where = f"{source.name}: {WEIGHTS_NAME}" if source.repo_id else str(weights)
    load_weights(model, read_weights(weights), source=where)
    model.eval()
    return model.to(device) if device is not None else model


# ---- building from components -------------------------------------------------------------------
def _as_config_dict(spec, what: str) -> tuple[dict, str | None]:
    """(config dict, pretrained source or None) for a config object / dict / HF id / local dir."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(spec, PretrainedConfig):
        return spec.to_dict(), None
    if isinstance(spec, dict):
        return dict(spec), None
    if isinstance(spec, (str, os.PathLike)):
        return AutoConfig.from_pretrained(str(spec)).to_dict(), str(spec)
    raise ConfigError(f"{what} must be a transformers config, a dict, an HF id or a directory; "
                      f"got {type(spec).__name__}")


def from_components(cls, vision, llm, tokenizer=None, **config_kwargs):
    """A fresh model: pretrained weights where `vision`/`llm` name a checkpoint, random otherwise."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    vision_cfg, vision_src = _as_config_dict(vision, "vision")
    llm_cfg, llm_src = _as_config_dict(llm, "llm")
    if tokenizer is None:
        if llm_src is None:
            raise ConfigError("pass tokenizer= when the LLM is given as a config (no tokenizer to load)")
        tokenizer = AutoTokenizer.from_pretrained(llm_src)
    config_kwargs.setdefault("architecture", cls.architecture)
    config = FVLMConfig(vision=vision_cfg, llm=llm_cfg, **config_kwargs)
    if config.architecture != cls.architecture:
        raise ConfigError(f"architecture={config.architecture!r} does not match {cls.__name__}")
    vocab = config.llm.get("vocab_size")
    if vocab is not None and len(tokenizer) > vocab:
        raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens but the LLM vocab_size is {vocab}")
    model = cls(config, tokenizer)
    if vision_src is not None:
        model.vision_model.load_state_dict(AutoModel.from_pretrained(vision_src).state_dict())
    if llm_src is not None:
        model.llm.load_state_dict(AutoModelForCausalLM.from_pretrained(llm_src).state_dict())
    return model
