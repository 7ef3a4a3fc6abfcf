"""Fused one-query attention in Triton: out, and optionally probs and entropy, in one pass over K/V.

    q [F, H, d]   k, v [F, N, H*d] (the encoder's cache layout: any row strides, last dim contiguous)
    out [F, H, d] (q.dtype)   probs [F, H, N] (q.dtype)   entropy [F, H] (fp32, nats)

Design (memory-bound: the floor is reading K and V once; see NOTES.md):
- grid (F, cdiv(H, BLOCK_H)), BLOCK_H = next_pow2(H) / HSPLIT: with HSPLIT=1 one program handles
  all heads of a frame, so every key row is one contiguous, coalesced H*d run.
- each program sweeps N in [BLOCK_N, BLOCK_H, d] tiles of K and V (both loads issued together) and
  computes the scores with multiply + tl.sum over d (M=1: no tl.dot). Every key slot of the tile
  keeps its own online softmax in the log2 domain (fp32: max m, sum l, sum of 2^(u-m) v, and for the
  entropy t = sum 2^(u-m) (u-m)), so the loop has no cross-warp reductions; the BLOCK_N slots are
  merged once at the end, and entropy = ln2 (log2 l - t/l) needs no second look at the scores.
- probs need the final max and sum: the sweep stores the raw fp32 scores to a scratch [F, H, N]
  (4 bytes per score, written and read back by the same program, from L2) and a second, cheap sweep
  over that scratch writes the normalised probs. K and V are still read exactly once.
- backward: the same grid; each program recomputes p = 2^(u - lse) from the saved per-head log2-sum-
  exp and, in one sweep, writes its dK, dV tiles and accumulates dQ (no atomics: all keys of a frame
  belong to one program). It reads K, V once and writes dK, dV once.

Only `out` is differentiable; probs and entropy are returned detached (non-differentiable).
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # CPU interpreter: read when @triton.jit runs
if _INTERPRET and isinstance(tl.zeros, triton.runtime.JITFunction):  # tl's own @jit helpers
    raise RuntimeError("TRITON_INTERPRET=1 was set after triton was imported: set it before `import triton`")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_LOG2E = 1.4426950408889634
_BLOCK_P = 128  # keys per step of the probs sweep (over fp32 scratch, not K/V)

POISON_OUTPUTS = False  # debug/tests: outputs start as NaN, so an element a kernel skips shows up


def _new(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _configs() -> list[triton.Config]:
    if _INTERPRET:  # the interpreter runs a single config (multi-config autotune needs a GPU)
        return [triton.Config({"BLOCK_N": 16, "HSPLIT": 1}, num_warps=4)]
    # (BLOCK_N, HSPLIT, num_warps): HSPLIT=1 is one program per frame; 2 doubles the programs for small F
    shapes = [(4, 1, 4), (8, 1, 4), (8, 1, 8), (16, 1, 8), (32, 1, 8),
              (4, 2, 4), (8, 2, 4), (16, 2, 4), (16, 2, 8), (32, 2, 8)]
    return [triton.Config({"BLOCK_N": bn, "HSPLIT": hs}, num_warps=nw) for bn, hs, nw in shapes]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Drop configs whose head split exceeds the heads, or whose K (or V) tile exceeds ~64 fp32
    values per thread (register spills); keep the smallest tile if nothing survives."""
    args = {**named_args, **kwargs}
    h_pad, d = args["H_PAD"], args["D"]

    def tile(c: triton.Config) -> int:
        return c.kwargs["BLOCK_N"] * (h_pad // c.kwargs["HSPLIT"]) * d

    fits = [c for c in configs if c.kwargs["HSPLIT"] <= h_pad]
    good = [c for c in fits if tile(c) <= 64 * 32 * c.num_warps]
    return good or [min(fits, key=tile)]


_TUNING = dict(
    key=["N", "H", "D", "F_BUCKET", "RETURN_PROBS", "RETURN_ENTROPY"],
    prune_configs_by={"early_config_prune": _prune},
)


@triton.autotune(configs=_configs(), **_TUNING)
@triton.jit
def _fwd_kernel(
    q_ptr, k_ptr, v_ptr,  # q [F, H, D]; k, v [F, N, H*D] with row strides
    out_ptr, lse_ptr, scores_ptr, probs_ptr, ent_ptr,  # [F,H,D], [F,H], [F,H,N] fp32, [F,H,N], [F,H]
    stride_qf, stride_qh, stride_kf, stride_kn, stride_vf, stride_vn,
    N, H, F_BUCKET,  # F_BUCKET: autotune key only (bit length of the frame count)
    scale_log2,  # softmax scale * log2(e): scores u = q.k * scale_log2 are in log2 units
    D: tl.constexpr, H_PAD: tl.constexpr,
    RETURN_PROBS: tl.constexpr, RETURN_ENTROPY: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr, HSPLIT: tl.constexpr,
):
    BLOCK_H: tl.constexpr = H_PAD // HSPLIT
    f = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)  # [BH]
    j = tl.arange(0, D)  # [D]
    h_mask = h < H
    q = tl.load(q_ptr + f * stride_qf + h[:, None] * stride_qh + j[None, :], mask=h_mask[:, None], other=0.0)
    q = q.to(tl.float32) * scale_log2  # [BH, D]
    row = h[None, :, None] * D + j[None, None, :]  # [1, BH, D] offsets inside one key row
    k_base = k_ptr + f * stride_kf
    v_base = v_ptr + f * stride_vf
    head_row = f * H * N + h * N  # [BH] start of each head's row in [F, H, N]

    # Each of the BLOCK_N key slots keeps its own online softmax over keys n = slot (mod BLOCK_N), so
    # the loop is elementwise (no cross-warp reductions); the slots are merged once after it.
    m = tl.full([BLOCK_N, BLOCK_H], -1e30, tl.float32)  # running max; finite, so (m - m_new) * 0 = 0
    l = tl.zeros([BLOCK_N, BLOCK_H], tl.float32)  # running sum of 2^(u - m)
    t = tl.zeros([BLOCK_N, BLOCK_H], tl.float32)  # running sum of 2^(u - m) * (u - m) (entropy)
    acc = tl.zeros([BLOCK_N, BLOCK_H, D], tl.float32)  # running sum of 2^(u - m) * v
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)  # [BN]
        n_mask = n < N
        kv_mask = n_mask[:, None, None] & h_mask[None, :, None]
        k = tl.load(k_base + n[:, None, None] * stride_kn + row, mask=kv_mask, other=0.0)  # [BN, BH, D]
        v = tl.load(v_base + n[:, None, None] * stride_vn + row, mask=kv_mask, other=0.0)
        u = tl.sum(k.to(tl.float32) * q[None, :, :], axis=2)  # [BN, BH]
        u = tl.where(n_mask[:, None], u, float("-inf"))
        if RETURN_PROBS:
            tl.store(scores_ptr + head_row[None, :] + n[:, None], u, mask=n_mask[:, None] & h_mask[None, :])
        m_new = tl.maximum(m, u)
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(u - m_new)  # [BN, BH], 0 on masked keys
        if RETURN_ENTROPY:
            du = tl.where(n_mask[:, None], u - m_new, 0.0)  # avoids 0 * -inf on masked keys
            t = alpha * (t + (m - m_new) * l) + p * du
        l = l * alpha + p
        acc = acc * alpha[:, :, None] + p[:, :, None] * v.to(tl.float32)
        m = m_new

    # merge the slots: rescale each to the per-head max (empty slots have l = 0 and weight 0)
    m_head = tl.max(m, axis=0)  # [BH]
    w = tl.exp2(m - m_head[None, :])  # [BN, BH]
    l_head = tl.sum(l * w, axis=0)  # [BH]
    inv_l = 1.0 / l_head
    fh = f * H + h  # [BH]
    out = tl.sum(acc * w[:, :, None], axis=0) * inv_l[:, None]  # [BH, D]
    tl.store(out_ptr + fh[:, None] * D + j[None, :], out.to(out_ptr.dtype.element_ty), mask=h_mask[:, None])
    tl.store(lse_ptr + fh, m_head + tl.log2(l_head), mask=h_mask)
    if RETURN_ENTROPY:
        t_head = tl.sum(w * (t + (m - m_head[None, :]) * l), axis=0)  # [BH] sum p' (u - m_head)
        entropy = 0.6931471805599453 * (tl.log2(l_head) - t_head * inv_l)  # ln(2) * bits
        tl.store(ent_ptr + fh, entropy, mask=h_mask)
    if RETURN_PROBS:
        tl.debug_barrier()  # scores written by other threads of this program must be visible
        for p0 in range(0, N, BLOCK_P):
            n = p0 + tl.arange(0, BLOCK_P)  # [BP]
            offs = head_row[:, None] + n[None, :]  # [BH, BP]
            mask = h_mask[:, None] & (n < N)[None, :]
            u = tl.load(scores_ptr + offs, mask=mask, other=float("-inf"))
            p = tl.exp2(u - m_head[:, None]) * inv_l[:, None]
            tl.store(probs_ptr + offs, p.to(probs_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=_configs(), **{**_TUNING, "key": ["N", "H", "D", "F_BUCKET"]})
@triton.jit
def _bwd_kernel(
    q_ptr, k_ptr, v_ptr,  # q [F, H, D]; k, v [F, N, H*D] with row strides
    out_ptr, dout_ptr, lse_ptr,  # [F, H, D], [F, H, D], [F, H] fp32, contiguous
    dq_ptr, dk_ptr, dv_ptr,  # [F, H, D], [F, N, H*D], [F, N, H*D], contiguous
    stride_qf, stride_qh, stride_kf, stride_kn, stride_vf, stride_vn,
    N, H, F_BUCKET,
    scale, scale_log2,
    D: tl.constexpr, H_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, HSPLIT: tl.constexpr,
):
    BLOCK_H: tl.constexpr = H_PAD // HSPLIT
    f = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)  # [BH]
    j = tl.arange(0, D)  # [D]
    h_mask = h < H
    fh = f * H + h  # [BH]
    q = tl.load(q_ptr + f * stride_qf + h[:, None] * stride_qh + j[None, :], mask=h_mask[:, None], other=0.0)
    q = q.to(tl.float32)  # [BH, D]
    q_log2 = q * scale_log2  # as in the forward, so p matches it bit for bit
    o = tl.load(out_ptr + fh[:, None] * D + j[None, :], mask=h_mask[:, None], other=0.0).to(tl.float32)
    do = tl.load(dout_ptr + fh[:, None] * D + j[None, :], mask=h_mask[:, None], other=0.0).to(tl.float32)
    delta = tl.sum(o * do, axis=1)  # [BH] = sum_n p_n (dO . v_n)
    lse = tl.load(lse_ptr + fh, mask=h_mask, other=0.0)  # [BH], log2 domain
    row = h[None, :, None] * D + j[None, None, :]  # [1, BH, D]
    k_base = k_ptr + f * stride_kf
    v_base = v_ptr + f * stride_vf
    dkv_base = f * N * H * D + row  # [1, BH, D] in the contiguous dk/dv

    dq = tl.zeros([BLOCK_N, BLOCK_H, D], tl.float32)  # per key slot; summed after the loop
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)  # [BN]
        n_mask = n < N
        kv_mask = n_mask[:, None, None] & h_mask[None, :, None]
        k = tl.load(k_base + n[:, None, None] * stride_kn + row, mask=kv_mask, other=0.0).to(tl.float32)
        v = tl.load(v_base + n[:, None, None] * stride_vn + row, mask=kv_mask, other=0.0).to(tl.float32)
        u = tl.sum(k * q_log2[None, :, :], axis=2)  # [BN, BH]
        p = tl.where(n_mask[:, None], tl.exp2(u - lse[None, :]), 0.0)  # softmax probs
        dp = tl.sum(v * do[None, :, :], axis=2)  # [BN, BH] = dO . v_n
        ds = p * (dp - delta[None, :])  # [BN, BH] gradient of the (scaled) scores
        dq += ds[:, :, None] * k
        dkv = dkv_base + n[:, None, None] * (H * D)  # [BN, BH, D]
        tl.store(dv_ptr + dkv, (p[:, :, None] * do[None, :, :]).to(dv_ptr.dtype.element_ty), mask=kv_mask)
        dk = ds[:, :, None] * q[None, :, :] * scale
        tl.store(dk_ptr + dkv, dk.to(dk_ptr.dtype.element_ty), mask=kv_mask)
    dq = tl.sum(dq, axis=0) * scale  # [BH, D]
    tl.store(dq_ptr + fh[:, None] * D + j[None, :], dq.to(dq_ptr.dtype.element_ty), mask=h_mask[:, None])


def _launch_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple:
    F, H, D = q.shape
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1))
    return strides + (k.shape[1], H, F.bit_length())


def _grid(F: int, H: int):
    h_pad = triton.next_power_of_2(H)
    return lambda meta: (F, triton.cdiv(H, h_pad // meta["HSPLIT"]))


def _forward(q, k, v, scale, return_probs, return_entropy):
    F, H, D = q.shape
    N = k.shape[1]
    out = _new((F, H, D), q.dtype, q.device)
    lse = _new((F, H), torch.float32, q.device)
    probs = _new((F, H, N), q.dtype, q.device) if return_probs else None
    scores = _new((F, H, N), torch.float32, q.device) if return_probs else None
    entropy = _new((F, H), torch.float32, q.device) if return_entropy else None
    unused = out  # pointer placeholder for outputs that were not asked for (never touched)
    _fwd_kernel[_grid(F, H)](
        q, k, v, out, lse, unused if scores is None else scores,
        unused if probs is None else probs, unused if entropy is None else entropy,
        *_launch_args(q, k, v), scale * _LOG2E,
        D=D, H_PAD=triton.next_power_of_2(H),
        RETURN_PROBS=return_probs, RETURN_ENTROPY=return_entropy, BLOCK_P=_BLOCK_P,
    )
    return out, lse, probs, entropy


def _backward(q, k, v, out, lse, dout, scale):
    F, H, D = q.shape
    N = k.shape[1]
    dq = _new((F, H, D), q.dtype, q.device)
    dk = _new((F, N, H * D), k.dtype, k.device)
    dv = _new((F, N, H * D), v.dtype, v.device)
    _bwd_kernel[_grid(F, H)](
        q, k, v, out, dout.contiguous(), lse, dq, dk, dv,
        *_launch_args(q, k, v), scale, scale * _LOG2E,
        D=D, H_PAD=triton.next_power_of_2(H),
    )
    return dq, dk, dv


class _QueryAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, return_probs, return_entropy):
        out, lse, probs, entropy = _forward(q, k, v, scale, return_probs, return_entropy)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale
        ctx.mark_non_differentiable(*[x for x in (probs, entropy) if x is not None])
        ctx.set_materialize_grads(False)
        return out, probs, entropy

    @staticmethod
    def backward(ctx, dout, _dprobs, _dentropy):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, out, lse, dout, ctx.scale)
        return dq, dk, dv, None, None, None


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 3 or k.dim() != 3 or k.shape != v.shape:
        raise ValueError(
            f"fused_query_attention wants q [F, H, d] and k, v [F, N, H*d]; got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    F, H, d = q.shape
    if k.shape[0] != F or k.shape[2] != H * d or F == 0 or k.shape[1] == 0:
        raise ValueError(
            f"k, v must be [F, N, H*d] = [{F}, N >= 1, {H * d}] for q {tuple(q.shape)} (and F >= 1); "
            f"got {tuple(k.shape)}"
        )
    if d & (d - 1) or not 16 <= d <= 256:
        raise ValueError(
            f"head dim d={d} is not supported by the Triton kernel: use a power of two in [16, 256], "
            "or backend='torch'"
        )
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            f"q, k, v must share one dtype of {_DTYPES}; got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if not (q.device == k.device == v.device) or (q.device.type != "cuda" and not _INTERPRET):
        raise ValueError(
            f"q, k, v must be on one CUDA device (got {q.device}, {k.device}, {v.device}); "
            "move them to the GPU or use backend='torch'"
        )
    if q.stride(2) != 1 or k.stride(2) != 1 or v.stride(2) != 1:
        raise ValueError(
            "q, k, v need a contiguous last dim (stride 1); call .contiguous() on the offending tensor "
            "(other strides may be anything)"
        )


def fused_query_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    return_probs: bool = False,
    return_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Fused one-query attention; gradients flow to q, k, v through `out` only.

    q [F, H, d]; k, v [F, N, H*d] (views with any row strides are fine, last dim contiguous).
    Returns (out [F, H, d], probs [F, H, N] (q.dtype), entropy [F, H] (fp32, nats)); probs and
    entropy are None unless requested, and are non-differentiable. Raises ValueError on inputs the
    kernel cannot take (fvlm.attention.query_attention_triton maps it to fvlm's InputError).
    """
    _check(q, k, v)
    scale = q.shape[2] ** -0.5 if scale is None else float(scale)
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():  # launch on q's GPU
        out, probs, entropy = _QueryAttention.apply(q, k, v, scale, return_probs, return_entropy)
    return out, probs, entropy
