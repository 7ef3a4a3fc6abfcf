"""What `generate` returns, and how the next token is picked."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class GenerateOutput:
    text: str
    mode: str
    frames: np.ndarray  # [T, s, s, 3] uint8: the square crop the model saw, at display resolution
    timestamps: np.ndarray  # [T] seconds into the source
    attention: np.ndarray | None = None  # [T, gh, gw] the map the heatmaps draw (sums to 1 per frame)
    coarse_attention: np.ndarray | None = None  # [T, gh, gw] static-query map (coarse_fine mode)
    layer_attention: np.ndarray | None = None  # [T, L, gh, gw] head-mean map of every layer
    entropy: np.ndarray | None = None  # [T] attention entropy in nats over all N keys (uniform: ln N)
    token_ids: list[int] = field(default_factory=list)
    source: str = ""


@dataclass
class FrameEvent:
    """A frame has been read (streaming): its crop, where the query looked, the entropy."""

    sample: int  # which video of the batch
    index: int
    timestamp: float
    frame: np.ndarray  # [s, s, 3] uint8
    attention: np.ndarray | None  # [gh, gw]
    coarse_attention: np.ndarray | None = None
    entropy: float | None = None


@dataclass
class TextEvent:
    """The answer so far (streaming), after each generated token."""

    sample: int
    text: str


@dataclass
class DoneEvent:
    output: GenerateOutput


StreamEvent = FrameEvent | TextEvent | DoneEvent


def sample_next(
    logits: torch.Tensor,  # [B, V]
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:  # [B] long
    """Greedy when temperature == 0, else temperature + nucleus (top-p) sampling."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = (logits.float() / temperature).softmax(-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the most likely token
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
