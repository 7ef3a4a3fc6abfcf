"""The look term (loss.look_weight): the position that predicts the answer must attend to the frames.

A small LLM can learn to answer some question types from the text alone and then stop attending to
the visual tokens for them: once that attention is near zero, the text loss's gradient through it
is near zero too, and no amount of training on those questions reopens the path (ShapesQA's motion
and position questions, experiments/shapesqa/RESULTS.md). This term pushes the attention back:

    A_l [B, H, L, L]   the LLM's attention probabilities in layer l, fine pass (coarse_fine steps)
    j_b                the position that predicts row b's first target token
    mass_b = mean over layers l and heads h of sum over real frames t of A_l[b, h, j_b, P + t]
    loss   = -mean_b log(mass_b + 1e-6)     over rows with a target and a real frame

The gradient of -log(mass) does not vanish as the mass does (unlike the text loss's), so a small
weight is enough to keep the frames in view; what the answer makes of them is the text loss's job.

The probabilities come from forward hooks on the LLM's attention modules, which return them under
transformers' eager attention only: LookHooks switches the LLM to eager attention for training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from fvlm.batch import Batch


class LookHooks:
    """Records the attention probabilities [B, H, L, L] of every LLM layer while `recording()`."""

    def __init__(self, llm: torch.nn.Module):
        llm.set_attn_implementation("eager")  # the only implementation that returns the probabilities
        self.layers = llm.get_decoder().layers
        self.probs: list[torch.Tensor] | None = None  # None: not recording (evaluation, generation)
        for layer in self.layers:
            layer.self_attn.register_forward_hook(self._keep)

    def _keep(self, module: torch.nn.Module, args: tuple, output: tuple) -> None:
        if self.probs is not None:
            self.probs.append(output[1])

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        self.probs = []
        try:
            yield
        finally:
            self.probs = None

    def last_pass(self) -> list[torch.Tensor]:
        """Per layer, the probabilities of the most recent LLM pass (the fine pass of coarse_fine)."""
        n = len(self.layers)
        if self.probs is None or len(self.probs) < n:
            raise RuntimeError("no LLM pass was recorded: call inside recording()")
        return self.probs[-n:]


def look_loss(probs: list[torch.Tensor], labels: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, dict]:
    """probs: per layer [B, H, L, L]; labels [B, L] next-token labels of the same pass (-100: none).
    -> (loss, {"mass": mean mass of the rows used, "rows": how many})."""
    P, T = batch.prefix_ids.shape[1], batch.frame_mask.shape[1]
    has = labels != -100  # [B, L]
    use = has.any(1) & batch.frame_mask.any(1)  # [B]
    if not bool(use.any()):
        return probs[0].sum() * 0.0, {"mass": 0.0, "rows": 0}
    j = has.float().argmax(1)[use]  # [b] first target position of each used row
    rows = use.nonzero()[:, 0]  # [b]
    a = torch.stack(probs)[:, rows, :, j]  # [layers, B, H, L, L] -> [b, layers, H, L] (indexed dims first)
    frames = a[..., P : P + T] * batch.frame_mask[rows][:, None, None, :]  # [b, layers, H, T]
    mass = frames.sum(-1).float().mean((1, 2))  # [b]
    return -(mass + 1e-6).log().mean(), {"mass": float(mass.detach().mean()), "rows": int(rows.numel())}
