"""Forward FLOPs per sample, and iso-FLOP sample counts: samples = C / (3 * forward FLOPs).

We count 2 FLOPs per multiply-add over the matmuls and attention products (norms, softmax,
biases and pooling are ignored). Upstream's counter counted multiply-adds (half of this) and ran
its coarse LLM pass over the whole sequence; at a given budget our sample counts are therefore
about half of upstream's, and foveated vs multi-token compare correctly.

Per sample with T frames, S text tokens of which P sit before the video (text_first prefix):
- DINO patch pass per frame: embedding + L_v layers over N = (image/patch)^2 + 1 tokens.
- Query pass per frame and query (foveated): query_input_proj, per layer q/o projections,
  attention over the N cached keys and the MLP; output_proj. coarse_fine runs two (coarse + fine).
- Connector: dino_to_llm per visual token and pass, llm_to_query per frame.
- LLM: per token, projections + MLP (gated) + attention over its causal context; coarse_fine's
  coarse pass covers the visual tokens only (plus the prefix P in text_first layout).
- LM head over the S text tokens.
Multi-token (B1): the same DINO pass, k pooled tokens per frame, one LLM pass over P + T*k + S.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import Config

# Dimensions of the hub models the configs name, so FLOP counts and the scaling grid's dry run
# work offline. Values from their config.json files.
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "facebook/dinov2-small": {
        "model_type": "dinov2",
        "hidden_size": 384,
        "num_hidden_layers": 12,
        "num_attention_heads": 6,
        "mlp_ratio": 4,
        "patch_size": 14,
    },
    "HuggingFaceTB/SmolLM2-135M-Instruct": {
        "model_type": "llama",
        "hidden_size": 576,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "intermediate_size": 1536,
        "vocab_size": 49152,
    },
    "HuggingFaceTB/SmolLM2-360M-Instruct": {
        "model_type": "llama",
        "hidden_size": 960,
        "num_hidden_layers": 32,
        "num_attention_heads": 15,
        "num_key_value_heads": 5,
        "intermediate_size": 2560,
        "vocab_size": 49152,
    },
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": {
        "model_type": "llama",
        "hidden_size": 2048,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "intermediate_size": 8192,
        "vocab_size": 49152,
    },
}


@dataclass
class Dims:
    D: int  # vision width
    L_v: int  # vision layers
    mlp_v: int  # vision MLP hidden width
    patch: int
    N: int  # tokens per frame (patches + CLS)
    d: int  # LLM width
    L: int  # LLM layers
    d_kv: int  # LLM key/value width (GQA)
    ff: int  # LLM MLP hidden width (gated: 3 matrices)
    vocab: int
    query_dim: int
    deep_query: bool
    architecture: str  # foveated | multi_token
    tokens_per_frame: int  # multi_token
    layout: str  # text_first | video_first


def resolve(spec: str | dict[str, Any]) -> dict[str, Any]:
    """A model config as a dict: inline, from the table above, or via transformers (hub/cache)."""
    if isinstance(spec, dict):
        return spec
    if spec in KNOWN_CONFIGS:
        return KNOWN_CONFIGS[spec]
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(spec).to_dict()


def dims(vision: str | dict[str, Any], llm: str | dict[str, Any], fvlm: dict[str, Any]) -> Dims:
    """Dims from the vision / LLM specs and FVLMConfig fields (defaults as FVLMConfig's)."""
    v, t = resolve(vision), resolve(llm)
    D, image, patch = v["hidden_size"], fvlm.get("image_size", 224), v.get("patch_size", 14)
    heads = t["num_attention_heads"]
    d = t["hidden_size"]
    return Dims(
        D=D,
        L_v=v["num_hidden_layers"],
        mlp_v=int(D * v.get("mlp_ratio", 4)),
        patch=patch,
        N=(image // patch) ** 2 + 1,
        d=d,
        L=t["num_hidden_layers"],
        d_kv=t.get("num_key_value_heads", heads) * (d // heads),
        ff=t["intermediate_size"],
        vocab=t["vocab_size"],
        query_dim=fvlm.get("query_dim", 384),
        deep_query=fvlm.get("deep_query", True),
        architecture=fvlm.get("architecture", "foveated"),
        tokens_per_frame=fvlm.get("tokens_per_frame", 16),
        layout=fvlm.get("layout", "text_first"),
    )


def _llm(m: Dims, tokens: float, context_before: float = 0.0) -> float:
    """FLOPs of `tokens` new tokens after `context_before` cached ones (causal attention)."""
    per_token = 2 * m.d * m.d + 2 * m.d * m.d_kv + 3 * m.d * m.ff  # q, o, k, v, gated MLP
    attended = tokens * context_before + tokens * (tokens + 1) / 2  # sum of context lengths
    return 2 * m.L * (tokens * per_token + 2 * attended * m.d)


def _patch_pass(m: Dims) -> float:
    """DINO over one frame."""
    embed = (m.N - 1) * 3 * m.patch * m.patch * m.D
    layer = 4 * m.N * m.D * m.D + 2 * m.N * m.N * m.D + 2 * m.N * m.D * m.mlp_v
    return 2 * (embed + m.L_v * layer)


def _query_pass(m: Dims) -> float:
    """One query through the cached K/V of one frame."""
    if m.deep_query:
        layers = m.L_v * (2 * m.D * m.D + 2 * m.N * m.D + 2 * m.D * m.mlp_v)
    else:  # A1: one attention over the final features
        layers = m.D * m.D + 2 * m.N * m.D
    return 2 * (m.query_dim * m.D + layers + m.D * m.D)


def forward_flops(
    m: Dims, frames: float, text_tokens: float, prefix_tokens: float, mode: str = "coarse_fine"
) -> dict[str, float]:
    """Forward FLOPs of one sample, by part, and their 'total'."""
    T, S = frames, text_tokens
    P = prefix_tokens if m.layout == "text_first" else 0.0
    parts = {"vision": T * _patch_pass(m), "lm_head": 2 * S * m.d * m.vocab}
    if m.architecture == "multi_token":
        k = m.tokens_per_frame
        parts["connector"] = 2 * T * k * m.D * m.d
        parts["llm"] = _llm(m, S + T * k)
    elif mode == "coarse_only":
        parts["query"] = T * _query_pass(m)
        parts["connector"] = 2 * T * m.D * m.d
        parts["llm"] = _llm(m, S + T)
    else:  # coarse_fine (autoregressive reads each frame once with the fine query: same count)
        parts["query"] = 2 * T * _query_pass(m)
        parts["connector"] = 2 * (2 * T * m.D * m.d) + 2 * T * m.d * m.query_dim
        parts["llm"] = _llm(m, P + T) + _llm(m, S + T)
    parts["total"] = sum(parts.values())
    return parts


def samples_for_budget(budget: float, forward_per_sample: float) -> int:
    """Iso-FLOP sample count: training costs ~3x the forward (forward + backward)."""
    return int(budget // (3 * forward_per_sample))


def sample_flops(
    cfg: Config, vision: str | dict[str, Any] | None = None, llm: str | dict[str, Any] | None = None
) -> dict[str, float]:
    """Forward FLOPs per sample of a trainer config (flops.avg_* sample, the main training mode).
    vision / llm: resolved config dicts where the caller has them (default: the config's specs)."""
    m = dims(vision or cfg.model.vision, llm or cfg.model.llm, cfg.model.fvlm)
    f = cfg.flops
    return forward_flops(m, f.avg_frames, f.avg_text_tokens, f.avg_prefix_tokens, cfg.main_mode)
