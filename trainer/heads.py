"""TrainModule: what the optimizer trains and DDP wraps -- the model plus the training-only heads.

The model's forward returns what it computed on the way when asked (visual tokens, attention,
final patch features; see FoveatedVLM.forward); this module's forward turns those into the
auxiliary losses (trainer/objectives.py) in the same call, so that DDP sees every parameter that
gets a gradient, the object head's included. The head is never part of the model: checkpoints save
it next to the model as object_head.safetensors (trainer/checkpoint.py), RUN/final is the model alone.

    net = DDP(TrainModule(model, cfg.loss))      # or the module itself in a single process
    step = net(batch, mode, objects=..., target=...)
    step.loss            text loss (+ lambda_coarse * coarse) + weighted object / gaze / token / look terms
    step.out             the model's VLMOutput (None in stage 0: no LLM runs)
    step.sums            the aux terms' named sums for the logs
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from fvlm.batch import Batch
from fvlm.vlm import VLMBase, VLMOutput

from .config import LossConfig
from .gaze import target_rows, visible_targets
from .look import LookHooks
from .objectives import VISION, Sums, gaze_term, look_term, object_term, token_term
from .objects import ObjectHead


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar: what to backpropagate
    out: VLMOutput | None  # the model's outputs (None in stage 0)
    sums: Sums = field(default_factory=dict)  # named sums of the aux terms (trainer/objectives.py)


class TrainModule(nn.Module):
    def __init__(self, model: VLMBase, loss: LossConfig):
        super().__init__()
        self.model = model
        self.weights = loss
        vision = model.config.vision
        self.patch = vision["patch_size"]
        where = model.config.image_size if loss.object_position else None
        self.object_head = ObjectHead(vision["hidden_size"], self.patch, where) if loss.object_weight > 0 else None
        if loss.gaze_weight > 0 or model.config.gaze_embedding:  # foveated only (config.validate)
            model.encoder.attention_backend = "torch"  # the Triton kernel gives no gradient through probs
        self.look = LookHooks(model.llm) if loss.look_weight > 0 else None

    @property
    def heads(self) -> dict[str, nn.Module]:
        """The training-only modules by name (saved beside the model, never in it)."""
        return {} if self.object_head is None else {"object_head": self.object_head}

    def forward(self, batch: Batch, mode: str, *, objects: torch.Tensor | None = None,
                target: torch.Tensor | None = None, measure_coarse: bool = False) -> StepOutput:
        """mode: a model mode, or VISION (stage 0: the encoder and the object head alone).
        objects [B, T, K, 6] object targets and target [B] the asked-about object (trainer/objects.py),
        None where the batch has none (e.g. text retention)."""
        w, fm = self.weights, batch.frame_mask
        if mode == VISION:
            features = self.model.encoder.encode_patches(batch.pixel_values[fm]).features  # [n, N, D]
            loss, sums = object_term(self.object_head, features, objects[fm], w.object_weight)
            return StepOutput(loss, None, sums)
        asked = mode != "coarse_only" and target is not None
        steer, read = asked and w.gaze_weight > 0, asked and w.token_weight > 0
        supervise = objects is not None and self.object_head is not None
        look = self.look is not None and mode == "coarse_fine"
        with self.look.recording() if look else contextlib.nullcontext():
            out = self.model(batch, mode=mode, measure_coarse=measure_coarse, return_attention=steer,
                             return_tokens=read, return_features=supervise, return_hidden=look)
            terms = [look_term(self.look.last_pass(), out.labels, batch, w.look_weight)] if look else []
        loss, sums = out.loss, {}
        if out.features is not None:
            terms.append(object_term(self.object_head, out.features, objects[fm], w.object_weight))
        if steer or read:
            rows = target_rows(objects, target)[fm]  # [n, 6] the asked-about object per real frame
            rows = visible_targets(rows, self.model.config.image_size // self.patch, self.patch)
            if steer:
                terms.append(gaze_term(out.attention, rows, self.patch, w.gaze_weight))
            if read:
                terms.append(token_term(self.object_head, out.tokens, rows, w.token_weight))
        for term, parts in terms:
            loss = loss + term
            sums |= parts
        return StepOutput(loss, out, sums)
