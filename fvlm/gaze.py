"""GazeEmbedding: tell the LLM where the query looked (config `gaze_embedding`, off by default).

A frame's visual token is an attention-weighted mix of patch values, so it says *what* the query saw
but not *where*: the mix is the same wherever the object sits, unless the values happen to carry
their position. The model knows where it looked, though. This module summarises the query's
attention over the patch grid in four numbers and adds a small learned embedding of them to the
frame's token before the LLM:

    probs [n, L, H, N] --(config.attention_map layer, head mean, CLS dropped)--> p [n, gh*gw]
    gaze  [n, 4] = (mean x, mean y, spread x, spread y) of p, in [-1, 1] frame coordinates
    token [n, d_llm] += mlp(gaze)

No extra tokens and almost no compute; "which way does it move" becomes the difference between two
frames' gaze positions, "where is it" the last one's. Gradients flow through the probabilities into
the query (train with the torch attention backend: the Triton kernel gives none through probs).
"""

from __future__ import annotations

import torch
from torch import nn

FEATURES = 4  # mean x, mean y, spread x, spread y


def gaze_features(probs: torch.Tensor, layer: int | None, grid: tuple[int, int]) -> torch.Tensor:
    """probs [n, L, H, N] (CLS first, then a row-major gh x gw patch grid) -> [n, 4]: the centre of
    mass (x, y) and the standard deviation (x, y) of the patch attention, x and y in [-1, 1]."""
    gh, gw = grid
    p = (probs.mean(1) if layer is None else probs[:, layer]).mean(1)[:, 1:].float()  # [n, gh*gw]
    if p.shape[1] != gh * gw:
        raise ValueError(f"attention over {p.shape[1]} patches, expected a {gh} x {gw} grid")
    p = p / p.sum(1, keepdim=True).clamp_min(1e-12)
    ys = (torch.arange(gh, device=p.device, dtype=p.dtype) + 0.5) / gh * 2 - 1  # [gh] patch centres
    xs = (torch.arange(gw, device=p.device, dtype=p.dtype) + 0.5) / gw * 2 - 1  # [gw]
    x = xs.repeat(gh)  # [gh*gw] row-major
    y = ys.repeat_interleave(gw)  # [gh*gw]
    mx, my = p @ x, p @ y  # [n]
    sx = (p @ (x * x) - mx * mx).clamp_min(1e-8).sqrt()
    sy = (p @ (y * y) - my * my).clamp_min(1e-8).sqrt()
    return torch.stack([mx, my, sx, sy], dim=1)  # [n, 4]


class GazeEmbedding(nn.Module):
    """gaze [n, 4] -> an embedding [n, d_llm] to add to the frame's visual token."""

    def __init__(self, d_llm: int, hidden: int = 64, init_std: float = 0.02):
        super().__init__()
        self.inp = nn.Linear(FEATURES, hidden)
        self.out = nn.Linear(hidden, d_llm)
        # small but not zero: with a zero output layer the LLM never sees the gaze vary at the start,
        # so neither side has a reason to begin using it
        nn.init.normal_(self.out.weight, std=init_std)
        nn.init.zeros_(self.out.bias)

    def forward(self, gaze: torch.Tensor) -> torch.Tensor:
        return self.out(torch.nn.functional.gelu(self.inp(gaze)))
