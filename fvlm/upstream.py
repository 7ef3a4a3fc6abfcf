"""The upstream fVLM release format (e.g. the hub repository sanps/fVLM-135M), rebuilt as an fvlm model.

An upstream checkpoint is a `model.safetensors` in upstream key names (encoder.dino.*,
encoder.query_input_proj, encoder.output_proj, dino_to_llm, llm_to_query, q_static, q_init, llm.*),
with upstream's own config.json beside it (or none). fvlm uses the same parameter names, so the
weights load unchanged; what the checkpoint lacks is an fvlm config. `upstream_config` makes one with
the upstream recipe:

- vision: the DINOv2 whose width the weights show (384 -> facebook/dinov2-small, 768 -> dinov2-base)
- llm: the SmolLM2-Instruct whose width they show (of its token embeddings or the tied lm_head) (576 -> 135M, 960 -> 360M, 2048 -> 1.7B); its
  config and tokenizer come from the hub cache (config and tokenizer files only, not its weights)
- layout="video_first" (how upstream trained), query_dim = the width of q_static, visual_scale and
  deep_query from upstream's config.json when it has them, else upstream's defaults (0.14, true).

Everything else in upstream's config.json is ignored (docs/hub.md lists what is read).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from .config import CONFIG_NAME, FVLMConfig, read_json
from .errors import CheckpointError, ConfigError
from .resolve import CONFIG_FILES, TOKENIZER_FILES, Source, resolve

UPSTREAM_VISION = {384: "facebook/dinov2-small", 768: "facebook/dinov2-base"}  # by DINO width
UPSTREAM_LLMS = {576: "HuggingFaceTB/SmolLM2-135M-Instruct", 960: "HuggingFaceTB/SmolLM2-360M-Instruct",
                 2048: "HuggingFaceTB/SmolLM2-1.7B-Instruct"}  # by LLM width
UPSTREAM_DEFAULTS = {"visual_scale": 0.14, "deep_query": True}
READ_FIELDS = {"query_dim": int, "visual_scale": float, "deep_query": bool}  # from upstream's config.json
# tensors every upstream FoveatedVLM checkpoint has; the widths are read from these three
VISION_KEY, QUERY_KEY = "encoder.dino.embeddings.cls_token", "q_static"
LLM_KEYS = ("llm.model.embed_tokens.weight", "llm.lm_head.weight")  # tied: either may be the one stored
MARKERS = (VISION_KEY, QUERY_KEY, "q_init", "encoder.query_input_proj.weight", "dino_to_llm.weight")


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file, read from its header (no tensor data)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e


def is_upstream(shapes: dict[str, tuple[int, ...]]) -> bool:
    return all(k in shapes for k in MARKERS) and any(k in shapes for k in LLM_KEYS)


def read_fields(raw: Any, where: str) -> dict[str, Any]:
    """READ_FIELDS from upstream's config.json: top level, or its `model` section (a training config)."""
    if not isinstance(raw, dict):
        return {}
    sections = [raw] + ([raw["model"]] if isinstance(raw.get("model"), dict) else [])
    out: dict[str, Any] = {}
    for section in sections:
        for key, kind in READ_FIELDS.items():
            if key not in section or key in out:
                continue
            value = section[key]
            ok = isinstance(value, bool) if kind is bool else (
                isinstance(value, (int, float)) and not isinstance(value, bool)
                and (kind is float or float(value).is_integer()))
            if not ok:
                raise ConfigError(f"{where}: upstream field {key!r} = {value!r} is not a {kind.__name__}")
            out[key] = kind(value)
    return out


def upstream_config(source: Source, shapes: dict[str, tuple[int, ...]]) -> tuple[FVLMConfig, Path]:
    """(the fvlm config of the upstream checkpoint in `source`, the directory to load its tokenizer from)."""
    from transformers import AutoConfig

    llm_key = next(k for k in LLM_KEYS if k in shapes)
    d_vision, d_llm, query_dim = shapes[VISION_KEY][-1], shapes[llm_key][-1], shapes[QUERY_KEY][-1]
    vision_id, llm_id = UPSTREAM_VISION.get(d_vision), UPSTREAM_LLMS.get(d_llm)
    if vision_id is None or llm_id is None:
        raise CheckpointError(
            f"{source.name}: an upstream fVLM checkpoint with DINO width {d_vision} and LLM width {d_llm}; "
            f"the upstream recipe knows DINO widths {sorted(UPSTREAM_VISION)} and LLM widths "
            f"{sorted(UPSTREAM_LLMS)}. Build it with FoveatedVLM.from_components(...) and "
            "fvlm.hub.load_upstream_weights instead"
        )
    config_path = source.path / CONFIG_NAME
    raw = None
    if config_path.is_file():
        raw = read_json(config_path)
    fields = {**UPSTREAM_DEFAULTS, **read_fields(raw, str(config_path))}
    if fields.setdefault("query_dim", query_dim) != query_dim:
        raise CheckpointError(f"{config_path}: query_dim {fields['query_dim']} but the weights' q_static has "
                              f"width {query_dim}")
    vision = resolve(vision_id, files=CONFIG_FILES, required=CONFIG_FILES)
    llm = resolve(llm_id, files=CONFIG_FILES + TOKENIZER_FILES, required=CONFIG_FILES)
    has_tokenizer = any((source.path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    config = FVLMConfig(
        vision=AutoConfig.from_pretrained(str(vision.path)).to_dict(),
        llm=AutoConfig.from_pretrained(str(llm.path)).to_dict(),
        architecture="foveated", layout="video_first", **fields,
        notes=(f"upstream fVLM checkpoint {source.name}, rebuilt with the upstream recipe: vision "
               f"{vision_id}, LLM {llm_id} (configs{'' if has_tokenizer else ' and tokenizer'} from the hub)"),
    )
    return config, source.path if has_tokenizer else llm.path
