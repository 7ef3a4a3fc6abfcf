"""The model of a trainer config: tokenizer, FoveatedVLM / MultiTokenVLM, init_from, freezing,
gradient checkpointing and torch.compile.

model.tokenizer: null = the LLM's own (model.llm must be an HF id or dir); a string = an HF id or
a directory; {train_on: globs, vocab_size: N} = a byte-BPE ChatML tokenizer trained offline with
fvlm.tokenizer.train_tokenizer on the chat text of those shards (deterministic). A resumed run
takes the tokenizer saved in its checkpoint.

model.vision / model.llm: HF ids or dirs (pretrained weights), or inline config dicts with a
model_type (random init; an inline LLM without vocab_size gets the tokenizer's size). With
init_from (a saved model directory, its model.safetensors, or a hub id owner/name[@revision] such as
the upstream release sanps/fVLM-135M), the weights come from there instead (the components' hub
weights are not fetched);
with model.init_parts too, only those parts (vision = the DINO encoder, llm, connector = dino_to_llm)
are loaded, from a model of either architecture, and the rest keeps its seeded fresh init.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from fvlm.config import FVLMConfig
from fvlm.errors import CheckpointError, ConfigError
from fvlm.hub import WEIGHTS_NAME, load_weights, model_class, read_weights, resolve
from fvlm.tokenizer import train_tokenizer
from fvlm.vlm import VLMBase

from .config import INIT_PARTS, Config, TokenizerSpec
from .data import expand_shards, shard_texts


def build_tokenizer(cfg: Config, resume_dir: Path | None = None):
    from transformers import AutoTokenizer

    spec = cfg.model.tokenizer
    if resume_dir is not None:
        return AutoTokenizer.from_pretrained(str(resume_dir))
    if isinstance(spec, TokenizerSpec):
        texts = [cfg.model.fvlm.get("system_prompt", FVLMConfig.system_prompt)]
        texts += list(shard_texts(expand_shards(spec.train_on, "model.tokenizer.train_on")))
        return train_tokenizer(texts, vocab_size=spec.vocab_size)
    name = spec if spec is not None else cfg.model.llm
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as e:  # a missing dir reads as a bad hub id; offline, a hub id is missing
        key = "model.tokenizer" if spec is not None else "model.llm"
        raise ConfigError(f"config key {key!r}: no tokenizer loads from {name!r} (a previous stage's "
                          f"final/ that has not been trained yet? run that stage first): {e}") from e


def _component(spec: str | dict[str, Any], weights: bool, extra: dict[str, Any] | None = None):
    """What from_components gets: the spec itself (weights loaded), or its config object only."""
    if isinstance(spec, dict):
        return {**(extra or {}), **spec}
    if weights:
        return spec
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(spec)


def build_model(cfg: Config, tokenizer) -> VLMBase:
    """A fresh model per the config (seeded by run.seed), with init_from weights if set."""
    m = cfg.model
    architecture = m.fvlm.get("architecture", "foveated")
    cls = model_class(
        FVLMConfig(vision={"model_type": "dinov2"}, llm={"model_type": "llama"}, architecture=architecture)
    )
    torch.manual_seed(cfg.run.seed)
    pretrained = m.init_from is None
    model = cls.from_components(
        vision=_component(m.vision, pretrained),
        llm=_component(m.llm, pretrained, {"vocab_size": len(tokenizer)}),
        tokenizer=tokenizer,
        **m.fvlm,
    )
    if m.init_from is not None:
        name = os.path.expandvars(m.init_from)
        weights = Path(name)
        if not weights.is_file():
            try:
                weights = resolve(name, required=(WEIGHTS_NAME,)).path / WEIGHTS_NAME
            except CheckpointError as e:
                raise ConfigError(f"config key 'model.init_from': {e}") from e
        if not weights.is_file():
            raise ConfigError(
                f"config key 'model.init_from': {weights} not found (give a saved model dir, "
                "e.g. a previous stage's RUN/final or RUN/checkpoints/best, or a hub id)"
            )
        if m.init_parts is None:
            load_weights(model, with_new_gaze_embedding(model, read_weights(weights)), source=str(weights))
        else:
            load_parts(model, read_weights(weights), m.init_parts, source=str(weights))
    model.train()
    return model


def with_new_gaze_embedding(model: VLMBase, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """init_from a model without a gaze embedding into one with it (model.fvlm.gaze_embedding: true):
    every loaded weight as saved, the embedding at its fresh init (fvlm/gaze.py)."""
    gaze = getattr(model, "gaze_embed", None)
    if gaze is None or any(k.startswith("gaze_embed.") for k in sd):
        return sd
    print("init_from has no gaze embedding: it starts fresh")
    return {**{f"gaze_embed.{k}": v for k, v in gaze.state_dict().items()}, **sd}


# where each part's weights sit in a saved FoveatedVLM / MultiTokenVLM
_PART_PREFIXES = {"vision": ("encoder.dino.", "dino."), "llm": ("llm.",), "connector": ("dino_to_llm.",)}
assert tuple(_PART_PREFIXES) == INIT_PARTS


def load_parts(model: VLMBase, sd: dict[str, torch.Tensor], parts: list[str], source: str) -> None:
    """Load the named parts of a saved model (of either architecture) strictly into `model`."""
    modules = {"vision": model.vision_model, "llm": model.llm, "connector": model.dino_to_llm}
    for part in parts:
        prefix = next((p for p in _PART_PREFIXES[part] if any(k.startswith(p) for k in sd)), None)
        if prefix is None:
            raise ConfigError(f"config key 'model.init_parts': {source} has no {part} weights "
                              f"(no key starts with {' or '.join(_PART_PREFIXES[part])})")
        sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        load_weights(modules[part], sub, source=f"{source} [{part}]")


def freeze(model: VLMBase, cfg: Config) -> None:
    """freeze_dino / freeze_llm: those parameters get no gradient and no optimizer state."""
    if cfg.model.freeze_dino:
        model.vision_model.requires_grad_(False)
    if cfg.model.freeze_llm:
        model.llm.requires_grad_(False)


def speedups(model: VLMBase, cfg: Config) -> None:
    """Gradient checkpointing (LLM layers; also DINO for multi_token, whose DINO runs its own
    forward: the foveated encoder walks DINO's layers itself) and torch.compile of those parts."""
    if cfg.model.gradient_checkpointing:
        for part in [model.llm] + ([model.vision_model] if model.architecture == "multi_token" else []):
            _checkpoint_activations(part)
    if cfg.model.compile:
        model.llm.get_decoder().compile(dynamic=True)
        if model.architecture == "multi_token":
            model.vision_model.compile(dynamic=True)


def _checkpoint_activations(module) -> None:
    """Non-reentrant activation checkpointing of an HF model's layers (the method was renamed from
    gradient_checkpointing_enable in transformers 5.2x; the pyproject range spans both names)."""
    if hasattr(module, "activation_checkpointing_enable"):
        module.activation_checkpointing_enable({"use_reentrant": False})
    else:
        module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
