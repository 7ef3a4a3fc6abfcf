"""GazeEmbedding: tell the LLM where the query looked (config `gaze_embedding`, off by default).

A frame's visual token is an attention-weighted mix of patch values, so it says *what* the query saw
but not *where*: the mix is the same wherever the object sits, unless the values happen to carry
their position. The model knows where it looked, though. This module summarises the query's
attention over the patch grid in six numbers and adds a small learned embedding of them to the
frame's token before the LLM:

    probs [n, L, H, N] --(config.attention_map layer, head mean, CLS dropped)--> p [n, gh*gw]
    gaze  [n, 4] = (mean x, mean y, spread x, spread y) of p, in [-1, 1] frame coordinates
    move  [n, 2] = the mean's change since the same clip's previous frame (0 at a clip's first frame)
    token [n, d_llm] += gain * mlp(gaze, move)

No extra tokens and almost no compute. "Where is it at the end" is read from the last frame's gaze;
"which way does it move" from the moves, which point the same way in every frame and so survive an
even look over the frames (the positions alone would need the LLM to subtract two frames).
Gradients flow through the probabilities into the query (train with the torch attention backend:
the Triton kernel gives none through probs).

The gain matters: the embedding is new to an LLM that was trained without it, and with Adam its
output moves by about gain x lr per step. At gain 1 an LLM fine-tuned for hundreds of steps never
started to read it, not even a perfect gaze (the asked object's true box); at gain 10 it did.
"""

from __future__ import annotations

import torch
from torch import nn

FEATURES = 6  # mean x, mean y, spread x, spread y, move x, move y


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


def with_moves(gaze: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
    """gaze [n, 4], prev [n, 2] the previous frame's centre (NaN or None: no previous frame) -> [n, 6]."""
    move = torch.zeros_like(gaze[:, :2]) if prev is None else (gaze[:, :2] - prev).nan_to_num(0.0)
    return torch.cat([gaze, move], dim=1)


def previous_centres(gaze: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """gaze [n, 4] of whole clips' frames in order; first [n] bool, True at each clip's first frame
    -> [n, 2] each row's previous frame's centre, NaN at clip starts."""
    prev = torch.roll(gaze[:, :2], 1, dims=0)
    return prev.masked_fill(first[:, None], float("nan"))


class GazeEmbedding(nn.Module):
    """[n, 6] (gaze_features and the move, see with_moves) -> an embedding [n, d_llm] to add to the
    frame's visual token."""

    def __init__(self, d_llm: int, hidden: int = 64, init_std: float = 0.02, gain: float = 10.0):
        super().__init__()
        self.gain = gain
        self.inp = nn.Linear(FEATURES, hidden)
        self.out = nn.Linear(hidden, d_llm)
        # small but not zero: with a zero output layer the LLM never sees the gaze vary at the start,
        # so neither side has a reason to begin using it
        nn.init.normal_(self.out.weight, std=init_std)
        nn.init.zeros_(self.out.bias)

    def forward(self, gaze: torch.Tensor) -> torch.Tensor:
        return self.gain * self.out(torch.nn.functional.gelu(self.inp(gaze)))
