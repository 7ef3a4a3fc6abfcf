"""FoveatedEncoder: DINOv2 patches encoded once, then any number of one-token queries.

Phase 1, `encode_patches`: the normal DINOv2 forward, written out layer by layer so that each
layer's key/value projections of norm1(h) are kept (computed once, used by the layer itself and
cached for the queries). Patches never see the query.

Phase 2, `query_attend` (deep query): a query vector walks through every DINO layer with that
layer's own weights, attending only to the cached patch keys/values of its frame (never to
itself), and comes out as the frame's single visual token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import Dinov2Config, Dinov2Model

from .attention import query_attention


@dataclass
class PatchCache:
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (K, V), each [F, N, D]
    features: torch.Tensor | None = None  # [F, N, D] final patch features (None: K/V only, for queries)
    shallow_kv: tuple[torch.Tensor, torch.Tensor] | None = None  # A1 ablation only

    @property
    def num_frames(self) -> int:
        return self.kv[0][0].shape[0]

    def select(self, index: torch.Tensor) -> "PatchCache":
        """The cache of a subset of frames (index [F'] into dim 0)."""
        pick = lambda t: t.index_select(0, index)  # noqa: E731
        return PatchCache(
            kv=[(pick(k), pick(v)) for k, v in self.kv],
            features=None if self.features is None else pick(self.features),
            shallow_kv=None if self.shallow_kv is None else tuple(map(pick, self.shallow_kv)),
        )


def attention_parts(layer: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
    """(q, k, v, out) projections of a Dinov2Layer, across transformers' two naming schemes."""
    att = layer.attention
    if hasattr(att, "q_proj"):  # transformers >= 5 refactor
        return att.q_proj, att.k_proj, att.v_proj, att.o_proj
    return att.attention.query, att.attention.key, att.attention.value, att.output.dense


class FoveatedEncoder(nn.Module):
    def __init__(self, vision_config: Dinov2Config, query_dim: int, deep_query: bool = True):
        super().__init__()
        self.dino = Dinov2Model(vision_config)
        D = vision_config.hidden_size
        self.num_heads = vision_config.num_attention_heads
        self.head_dim = D // self.num_heads
        self.deep_query = deep_query
        self.attention_backend: str | None = None  # None: fvlm.attention picks; "torch" for grads through probs
        self.query_input_proj = nn.Linear(query_dim, D, bias=False)
        self.output_proj = nn.Linear(D, D)

    @property
    def layers(self) -> nn.ModuleList:
        return self.dino.encoder.layer

    def grid(self, image_size: int) -> tuple[int, int]:
        """Patch grid (gh, gw) of a square image of side image_size."""
        p = self.dino.config.patch_size
        return image_size // p, image_size // p

    # ---- phase 1: patches ---------------------------------------------------------------------
    def encode_patches(self, pixel_values: torch.Tensor) -> PatchCache:
        """pixel_values [F, 3, S, S] -> per-layer K/V cache and final features."""
        F_ = pixel_values.shape[0]
        H, d = self.num_heads, self.head_dim
        h = self.dino.embeddings(pixel_values)  # [F, N, D]
        N, D = h.shape[1], h.shape[2]
        drop = self.dino.config.attention_probs_dropout_prob if self.training else 0.0
        kv = []
        for layer in self.layers:
            q_proj, k_proj, v_proj, o_proj = attention_parts(layer)
            x = layer.norm1(h)
            q, k, v = q_proj(x), k_proj(x), v_proj(x)  # [F, N, D] each
            kv.append((k, v))
            heads = lambda t: t.view(F_, N, H, d).transpose(1, 2)  # noqa: E731  [F, H, N, d]
            a = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), dropout_p=drop)
            a = o_proj(a.transpose(1, 2).reshape(F_, N, D))  # [F, N, D]
            h = h + layer.drop_path(layer.layer_scale1(a))
            h = h + layer.drop_path(layer.layer_scale2(layer.mlp(layer.norm2(h))))
        features = self.dino.layernorm(h)  # [F, N, D]
        shallow_kv = None
        if not self.deep_query:  # A1: keys/values = the last layer's K/V projections of norm1(final features)
            _, k_proj, v_proj, _ = attention_parts(self.layers[-1])
            x = self.layers[-1].norm1(features)
            shallow_kv = (k_proj(x), v_proj(x))
        return PatchCache(kv=kv, features=features, shallow_kv=shallow_kv)

    # ---- phase 2: one query per frame ---------------------------------------------------------
    def query_attend(
        self, query: torch.Tensor, cache: PatchCache, return_attention: bool = False,
        backend: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """query [F, query_dim] -> z [F, D], and attention probs [F, L, H, N] if asked.

        backend: the attention backend of the deep query (fvlm.attention), default
        self.attention_backend; fvlm.engine passes "torch" under torch.compile."""
        x = self.query_input_proj(query)  # [F, D]
        F_, D = x.shape
        H, d = self.num_heads, self.head_dim
        probs = []
        if not self.deep_query:  # A1: x itself is the query (no norm1, no q projection)
            res = query_attention(x.view(F_, H, d), *cache.shallow_kv, return_probs=return_attention,
                                  backend=self.attention_backend)
            x = res.out.reshape(F_, D)
            probs.append(res.probs)
        else:
            for layer, (k, v) in zip(self.layers, cache.kv):
                q_proj, _, _, o_proj = attention_parts(layer)
                q = q_proj(layer.norm1(x)).view(F_, H, d)  # [F, H, d]
                res = query_attention(q, k, v, return_probs=return_attention,
                                      backend=backend or self.attention_backend)
                x = x + layer.drop_path(layer.layer_scale1(o_proj(res.out.reshape(F_, D))))
                x = x + layer.drop_path(layer.layer_scale2(layer.mlp(layer.norm2(x))))
                probs.append(res.probs)
        z = self.output_proj(self.dino.layernorm(x))  # [F, D]
        return z, (torch.stack(probs, dim=1) if return_attention else None)
