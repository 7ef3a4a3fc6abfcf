"""Gaze supervision: an auxiliary loss that pulls the fine query's attention onto the asked-about object.

Trained on the answer loss alone, the ShapesQA models never learned to look at the object a question
names (selectivity 1.05-1.16): the fine query spread its attention over the frame, so the one token per
frame was mostly background, and shape answers stayed at chance even once the encoder could tell shapes
apart (trainer/objects.py). ShapesQA records say which object each question is about (`target`, and
per-frame boxes), so with `loss.gaze_weight > 0` the trainer adds, for every real frame where that
object is visible, the negative log of the attention mass the query puts inside its box:

    probs [n, L, H, N] --(head mean, CLS dropped, renormalised)--> maps [n, L, g*g]
    mass [n, L] = sum over patches of map * (fraction of the patch the box covers)
    loss = gaze_weight * mean over (frames with a visible target, layers) of -log(mass)

Every DINO layer is supervised: the token leaves the last layer, so a gaze that only one layer keeps
would be diluted again by the layers after it. Only the fine (and autoregressive) queries are
supervised, never the static coarse query. The question still has to steer the gaze at inference:
nothing about the target reaches the model except through the prompt. Records without a target
(counting, captions) add nothing. The gradient flows through the attention probabilities, which the
fused Triton kernel does not provide, so the trainer switches the query attention to the torch
backend while this loss is on.
"""

from __future__ import annotations

import torch

from fvlm.shapesqa.score import MIN_COVERAGE, patch_coverage

from .objects import FIELDS

MASS_FLOOR = 1e-4  # -log(mass) is capped at ~9.2 so one empty map cannot dominate a batch


def target_rows(objects: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """objects [B, T, K, 6] and target [B] (object index, -1 = none) -> [B, T, 6], the target's row
    per frame (shape id -1 where there is no target)."""
    B, T, K, _ = objects.shape
    rows = objects.new_full((B, T, FIELDS), -1.0)
    has = (target >= 0) & (target < K)
    if bool(has.any()):
        idx = target.clamp(0, K - 1)[:, None, None, None].expand(B, T, 1, FIELDS)
        picked = objects.gather(2, idx)[:, :, 0]  # [B, T, 6]
        rows[has] = picked[has]
    return rows


def visible_targets(rows: torch.Tensor, grid: int, patch: int) -> torch.Tensor:
    """rows [n, 6] -> the same with shape id -1 where the target covers under MIN_COVERAGE patches
    of the model input (outside the crop, or too small to look at)."""
    cover = patch_coverage(rows[:, :4].float(), grid, patch).sum(1)  # [n] patches' worth of box
    rows = rows.clone()
    rows[cover < MIN_COVERAGE, 4] = -1
    return rows


def gaze_mass(probs: torch.Tensor, boxes: torch.Tensor, patch: int) -> torch.Tensor:
    """Attention mass inside each box, per layer: probs [n, L, H, N] (CLS first, then a square grid),
    boxes [n, 4] in model-input pixels -> [n, L], each in [0, 1]."""
    N = probs.shape[-1]
    grid = round((N - 1) ** 0.5)
    if grid * grid != N - 1:
        raise ValueError(f"gaze supervision needs CLS + a square patch grid, got {N} keys")
    maps = probs.float().mean(2)[..., 1:]  # [n, L, g*g]
    maps = maps / maps.sum(-1, keepdim=True).clamp_min(1e-12)
    cover = patch_coverage(boxes.float(), grid, patch)  # [n, g*g]
    return torch.einsum("nlp,np->nl", maps, cover)


def gaze_loss(probs: torch.Tensor, rows: torch.Tensor, patch: int) -> tuple[torch.Tensor, dict[str, float]]:
    """probs [n, L, H, N] of the real frames, rows [n, 6] the target's row per frame -> (unweighted
    loss, stats). Frames whose target is absent or covers under MIN_COVERAGE patches are left out."""
    grid = round((probs.shape[-1] - 1) ** 0.5)
    keep = visible_targets(rows, grid, patch)[:, 4] >= 0
    if not bool(keep.any()):
        return probs.sum() * 0.0, {"frames": 0.0}
    mass = gaze_mass(probs[keep], rows[keep, :4], patch)  # [M, L]
    loss = -mass.clamp_min(MASS_FLOOR).log().mean()
    return loss, {"frames": float(keep.sum()), "mass": float(mass.detach().mean())}
