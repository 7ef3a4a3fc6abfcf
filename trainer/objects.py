"""Object supervision: an auxiliary loss that teaches the vision encoder what each object is.

The answer loss reaches DINO only through one token per frame, and on ShapesQA that signal was too
weak for the encoder to learn shape at all (`experiments.shapesqa.shapes_probe`: the trained
encoder held no more shape than a random one). With `loss.object_weight > 0` the trainer adds, for every visible object
of every frame, a linear classification of its shape and colour from the encoder's final patch
features pooled over the object's box:

    features [F, N, D] --(patch-coverage weights of the box)--> pooled [M, D] --> shape / colour logits
    loss = object_weight * (CE(shape) + CE(colour)) / 2      (mean over the M object-frames)

With `loss.token_weight > 0` as well, the same two classifiers must also name the shape and colour of
the object a question is about (JSON `target`) from the frame's visual token, the vector the LLM
reads, wherever that object is visible. The encoder could tell shapes apart after object supervision
while the token a question's query read from it could not (`experiments.shapesqa.shapes_probe`);
this asks the query and its read-out to carry the asked-about object, in the same feature space as its pooled patches:

    tokens z [n, D] --> shape / colour logits      loss = token_weight * (CE(shape) + CE(colour)) / 2

With `loss.object_position` both losses get a third classifier, where the object is: the cell of its
box centre on a POSITION_CELLS x POSITION_CELLS grid over the model input (the mean of three
cross-entropies then). A token is a weighted mix of patch values, so it carries where the object is
only if the values do; this asks the encoder and the query to keep it.

The boxes, shapes and colours come from the sample's JSON (ShapesQA writes `boxes`, `visible` and
`objects`, see fvlm/shapesqa/generate.py). The head is trained with the connector group and is never part
of the saved model (RUN/final); checkpoints carry it so that a resume is exact.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fvlm.shapesqa.score import MIN_COVERAGE, patch_coverage
from fvlm.shapesqa.generate import COLORS, SHAPES

COLOR_NAMES = tuple(COLORS)
FIELDS = 6  # x0, y0, x1, y1 (model-input pixels), shape id, colour id; shape id -1 = no object
POSITION_CELLS = 4  # loss.object_position: the box centre's cell on a 4 x 4 grid (16 classes)


class ObjectLabelError(ValueError):
    """A sample's JSON cannot give object targets."""


def object_targets(meta: dict, frame_numbers: list[int], frame_hw: tuple[int, int], image_size: int
                   ) -> np.ndarray:
    """Targets [T, K, 6] for the kept frames `frame_numbers` of a sample, boxes mapped from the
    frame (size frame_hw) to the model input (centre square crop resized to image_size)."""
    boxes, visible, objects = meta.get("boxes"), meta.get("visible"), meta.get("objects")
    if not (isinstance(boxes, list) and isinstance(visible, list) and isinstance(objects, list)):
        raise ObjectLabelError("no 'boxes' / 'visible' / 'objects' lists in the JSON")
    if len(boxes) != len(visible) or (frame_numbers and max(frame_numbers) >= len(boxes)):
        raise ObjectLabelError(f"{len(boxes)} frames of boxes, {len(visible)} of visibility, "
                               f"frames up to {max(frame_numbers, default=-1)} used")
    ids = []
    for o in objects:
        if not isinstance(o, dict) or o.get("shape") not in SHAPES or o.get("color") not in COLORS:
            raise ObjectLabelError(f"object {o!r}: shape must be one of {SHAPES}, colour one of {COLOR_NAMES}")
        ids.append((SHAPES.index(o["shape"]), COLOR_NAMES.index(o["color"])))
    H, W = frame_hw
    s = min(H, W)
    scale, ox, oy = image_size / s, (W - s) // 2, (H - s) // 2  # as fvlm.video.center_crop
    out = np.full((len(frame_numbers), len(objects), FIELDS), -1.0, dtype=np.float32)
    for t, n in enumerate(frame_numbers):
        if len(boxes[n]) != len(objects) or len(visible[n]) != len(objects):
            raise ObjectLabelError(f"frame {n}: {len(boxes[n])} boxes for {len(objects)} objects")
        for k, (box, vis) in enumerate(zip(boxes[n], visible[n])):
            if vis and box is not None:
                x0, y0, x1, y1 = box
                out[t, k, :4] = ((x0 - ox) * scale, (y0 - oy) * scale, (x1 - ox) * scale, (y1 - oy) * scale)
                out[t, k, 4:] = ids[k]
    return out


def collate_targets(rows: list[np.ndarray | None], frames: int) -> torch.Tensor:
    """Per-sample targets [T_i, K_i, 6] (None: no frames) -> [B, frames, K, 6], padded with -1."""
    rows = [np.zeros((0, 0, FIELDS), np.float32) if r is None else r for r in rows]
    K = max((r.shape[1] for r in rows), default=0)
    out = torch.full((len(rows), frames, max(K, 1), FIELDS), -1.0)
    for b, r in enumerate(rows):
        out[b, : r.shape[0], : r.shape[1]] = torch.from_numpy(r)
    return out


class ObjectHead(nn.Module):
    """Linear shape and colour (and, with image_size given, position) classifiers on box-pooled
    final patch features and on visual tokens."""

    def __init__(self, dim: int, patch_size: int, image_size: int | None = None):
        super().__init__()
        self.patch_size = patch_size
        self.image_size = image_size
        self.shape = nn.Linear(dim, len(SHAPES))
        self.color = nn.Linear(dim, len(COLOR_NAMES))
        self.position = None if image_size is None else nn.Linear(dim, POSITION_CELLS**2)
        self.stats: dict[str, float] = {}  # the last call's accuracies and object count (for logs)

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """features [F, N, D] (CLS first, then a square patch grid), targets [F, K, 6] -> loss."""
        Fr, N, _ = features.shape
        grid = round((N - 1) ** 0.5)
        if grid * grid != N - 1:
            raise ValueError(f"object supervision needs CLS + a square patch grid, got {N} tokens")
        flat = targets.reshape(-1, FIELDS)  # [F * K, 6]
        frame = torch.arange(Fr, device=features.device).repeat_interleave(targets.shape[1])  # [F * K]
        w = patch_coverage(flat[:, :4].float(), grid, self.patch_size)  # [F * K, g * g]
        keep = (flat[:, 4] >= 0) & (w.sum(1) >= MIN_COVERAGE)
        if not bool(keep.any()):
            self.stats = {"objects": 0.0}
            return features.sum() * 0.0  # keeps the head in the graph (DDP) without a signal
        w, frame, flat = w[keep], frame[keep], flat[keep]
        w = w / w.sum(1, keepdim=True)
        patches = features[frame, 1:].float()  # [M, g * g, D]
        pooled = torch.einsum("mp,mpd->md", w, patches)  # [M, D]
        loss, acc = self._classify(pooled, flat)
        self.stats = {"objects": float(keep.sum()), **acc}
        return loss

    def _classify(self, x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """x [M, D] against rows [M, 6] (box in columns 0-3, shape id, colour id in 4, 5) -> (mean of
        the cross-entropies, their accuracies)."""
        heads = {"shape": (self.shape, rows[:, 4].long()), "color": (self.color, rows[:, 5].long())}
        if self.position is not None:
            heads["position"] = (self.position, self.cell(rows[:, :4]))
        losses, acc = [], {}
        for name, (head, y) in heads.items():
            logits = head(x)
            losses.append(F.cross_entropy(logits, y))
            acc[f"{name}_acc"] = float((logits.detach().argmax(1) == y).float().mean())
        return sum(losses) / len(losses), acc

    def cell(self, boxes: torch.Tensor) -> torch.Tensor:
        """boxes [M, 4] (x0, y0, x1, y1 in model-input pixels) -> the centre's grid cell [M], row-major."""
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2  # [M, 2] (x, y)
        ij = (centre / self.image_size * POSITION_CELLS).floor().long().clamp(0, POSITION_CELLS - 1)
        return ij[:, 1] * POSITION_CELLS + ij[:, 0]

    def token_loss(self, tokens: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """tokens [n, D] of the real frames, rows [n, 6] the asked-about object's row per frame
        (trainer/gaze.py: visible_targets, shape id -1 where it is absent or too small) -> (unweighted
        loss, stats)."""
        keep = rows[:, 4] >= 0
        if not bool(keep.any()):
            return tokens.sum() * 0.0, {"frames": 0.0}
        loss, acc = self._classify(tokens[keep].float(), rows[keep])
        return loss, {"frames": float(keep.sum()), **acc}

