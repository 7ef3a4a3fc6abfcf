"""MultiTokenVLM (baseline B1): k pooled DINO patch tokens per frame instead of one query token.

DINOv2's final patch features (CLS dropped) on the gh x gw grid are average-pooled to
sqrt(k) x sqrt(k) tokens, projected by dino_to_llm and scaled by visual_scale; one LLM pass.
Same inputs, outputs and generate() as FoveatedVLM; the mode argument is accepted and ignored
(there is no query to choose).
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from transformers import Dinov2Model

from .batch import Batch
from .config import FVLMConfig
from .sequence import assemble
from .vlm import Prefill, VLMBase, VLMOutput, hf_config


class MultiTokenVLM(VLMBase):
    architecture = "multi_token"

    def __init__(self, config: FVLMConfig, tokenizer=None):
        super().__init__(config, tokenizer)
        vision = hf_config(config.vision)
        self.dino = Dinov2Model(vision)
        self.dino_to_llm = nn.Linear(vision.hidden_size, self.llm.config.hidden_size)
        self.side = round(config.tokens_per_frame**0.5)

    @property
    def vision_model(self) -> nn.Module:
        return self.dino

    @property
    def visual_tokens_per_frame(self) -> int:
        return self.config.tokens_per_frame

    def _inputs(self, batch: Batch):
        """[prefix | k tokens per real frame | suffix] as LLM input, and DINO's final features
        [n_real, 1 + N, D] (CLS first, as FoveatedVLM gives them)."""
        B, T = batch.frame_mask.shape
        k = self.config.tokens_per_frame
        pixels = batch.pixel_values[batch.frame_mask]  # [n, 3, S, S]
        final = self.dino(pixel_values=pixels).last_hidden_state  # [n, 1 + gh*gw, D], CLS first
        feats = final[:, 1:]  # [n, gh*gw, D]
        n, N, D = feats.shape
        g = round(N**0.5)
        grid = feats.transpose(1, 2).reshape(n, D, g, g)  # [n, D, gh, gw]
        pooled = F.adaptive_avg_pool2d(grid, self.side).flatten(2).transpose(1, 2)  # [n, k, D]
        tokens = self.dino_to_llm(pooled) * self.config.visual_scale  # [n, k, d_llm]
        visual = tokens.new_zeros(B, T, k, tokens.shape[-1])
        visual[batch.frame_mask] = tokens
        visual_mask = batch.frame_mask.repeat_interleave(k, dim=1)  # [B, T*k]
        return assemble(
            self.embed, batch.prefix_ids, batch.prefix_mask, batch.prefix_targets,
            visual.flatten(1, 2), visual_mask,
            batch.suffix_ids, batch.suffix_mask, batch.suffix_targets,
        ), final

    def forward(self, batch: Batch, mode: str = "coarse_fine", *, return_hidden: bool = False,
                return_features: bool = False, **_: object) -> VLMOutput:
        """Text loss of `batch` (mode is checked, then ignored). return_hidden and return_features
        as in FoveatedVLM.forward; the other requests (attention, tokens, coarse) have nothing to
        return here and are ignored."""
        self.check_mode(mode)
        inp, features = self._inputs(batch)
        hidden = self.decoder(inp.embeds, inp.mask, inp.position_ids)
        text = self.loss(hidden, inp.labels)
        out = VLMOutput(loss=text.loss, text=text)
        if return_hidden:
            out.hidden, out.labels = hidden, inp.labels
        if return_features and features.shape[0] > 0:
            out.features = features
        return out

    def prefill(self, batch: Batch, mode: str, return_attention: bool, on_step=None, fast=None) -> Prefill:
        return self.full_prefill(batch, self._inputs(batch)[0])
