"""One-query cross-attention: the single place every deep-query attention goes through.

For F frames, each with H heads, one query vector attends to that frame's N cached keys:

    q [F, H, d]     k, v [F, N, H*d]  (the encoder's cache layout, no transpose needed)
    out [F, H, d]   probs [F, H, N] (optional)   entropy [F, H] in nats (optional)

`backend="torch"` is the plain reference; `backend="triton"` is the fused kernel in
`fvlm/kernels/` (CUDA only). `backend=None` picks Triton on CUDA when it imports, else torch;
the environment variable FVLM_ATTENTION_BACKEND=torch|triton forces either.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

from .errors import ConfigError, InputError

BACKENDS = ("torch", "triton")


class QueryAttentionOutput(NamedTuple):
    out: torch.Tensor  # [F, H, d]
    probs: torch.Tensor | None  # [F, H, N]
    entropy: torch.Tensor | None  # [F, H]


def query_attention_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    return_probs: bool = False,
    return_entropy: bool = False,
) -> QueryAttentionOutput:
    """Reference implementation; differentiable; works on any device and dtype."""
    F, H, d = q.shape
    N = k.shape[1]
    scale = d**-0.5 if scale is None else scale
    acc = torch.promote_types(q.dtype, torch.float32)  # accumulate in fp32 (or fp64)
    kh = k.view(F, N, H, d).to(acc)  # [F, N, H, d] view of the cache
    vh = v.view(F, N, H, d).to(acc)
    scores = torch.einsum("fhd,fnhd->fhn", q.to(acc), kh) * scale  # [F, H, N]
    probs = scores.softmax(dim=-1)
    out = torch.einsum("fhn,fnhd->fhd", probs, vh).to(q.dtype)  # [F, H, d]
    entropy = None
    if return_entropy:
        entropy = -(probs * torch.log_softmax(scores, dim=-1)).sum(-1)  # [F, H]
    return QueryAttentionOutput(out, probs.to(q.dtype) if return_probs else None, entropy)


def query_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    return_probs: bool = False,
    return_entropy: bool = False,
) -> QueryAttentionOutput:
    """The fused Triton kernel (fvlm/kernels/, CUDA or TRITON_INTERPRET=1); gradients flow to q, k, v
    through `out` only, probs and entropy are non-differentiable. Inputs it cannot take (shapes,
    dtypes, devices, head dims; see the kernel) raise InputError."""
    from .kernels.query_attention import fused_query_attention

    try:
        out, probs, entropy = fused_query_attention(
            q, k, v, scale=scale, return_probs=return_probs, return_entropy=return_entropy
        )
    except ValueError as e:
        raise InputError(str(e)) from e
    return QueryAttentionOutput(out, probs, entropy)


def _triton_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        from .kernels import query_attention as _  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(device: torch.device, backend: str | None = None) -> str:
    backend = backend or os.environ.get("FVLM_ATTENTION_BACKEND") or None
    if backend is None:
        return "triton" if _triton_available(device) else "torch"
    if backend not in BACKENDS:
        raise ConfigError(f"unknown attention backend {backend!r}; use one of {BACKENDS}")
    return backend


def query_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    return_probs: bool = False,
    return_entropy: bool = False,
    backend: str | None = None,
) -> QueryAttentionOutput:
    """Dispatch one-query attention to the Triton kernel or the torch reference."""
    if resolve_backend(q.device, backend) == "triton":
        return query_attention_triton(
            q, k, v, scale=scale, return_probs=return_probs, return_entropy=return_entropy
        )
    return query_attention_torch(
        q, k, v, scale=scale, return_probs=return_probs, return_entropy=return_entropy
    )
