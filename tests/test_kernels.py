"""Tests of the fused one-query attention kernel (fvlm/kernels/query_attention.py).

On CPU the kernels run in the Triton interpreter (fp32/fp16 only: bf16 is broken there); the bf16,
all-autotune-configs and speed checks need CUDA. Every case uses fresh random inputs (its own seed)
and a float64 torch reference; outputs start as NaN (POISON_OUTPUTS) so skipped elements fail.
Tolerances are max |error| relative to max |reference|: fp32 1e-5, fp16 1e-2, bf16 2e-2.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.fail("triton was imported before TRITON_INTERPRET=1 could be set: set it in the environment "
                    "(or in tests/conftest.py) when there is no GPU", pytrace=False)
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first `import triton`
triton = pytest.importorskip("triton")

from fvlm.attention import query_attention, query_attention_triton  # noqa: E402
from fvlm.errors import InputError  # noqa: E402
from fvlm.kernels import query_attention as qa  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}
ROOT = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


AUTOTUNE_CONFIGS = qa._fwd_kernel.configs  # the backward has the same list; a single config on CPU


@pytest.fixture(autouse=True)
def poison_and_one_tiling(monkeypatch):
    """Outputs start as NaN. On GPU every test runs one tiling (autotuning would compile ~10 configs
    per shape); test_every_autotune_config_gpu checks all of them on one shape."""
    monkeypatch.setattr(qa, "POISON_OUTPUTS", True)
    if torch.cuda.is_available():
        config = triton.Config({"BLOCK_N": 8, "HSPLIT": 1}, num_warps=8)
        monkeypatch.setattr(qa._fwd_kernel, "configs", [config])
        monkeypatch.setattr(qa._bwd_kernel, "configs", [config])


def make_inputs(seed, F, N, H, d, dtype, layout="qkv"):
    """q [F, H, d], k, v [F, N, H*d], dout [F, H, d]; layout "qkv": k, v are slices of one
    [F, N, 3*H*d] cache and q a slice of [F, H, 2d] (all strided); "mixed": k a slice of such a
    cache, v of a [F, N, 2*H*d] tensor (k and v strides differ); "contiguous": plain tensors."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, std=1.0):
        return (torch.randn(*shape, generator=g) * std).to(DEVICE, dtype)

    if layout == "qkv":
        qkv = randn(F, N, 3 * H * d)
        q, k, v = randn(F, H, 2 * d, std=2.0)[..., :d], qkv[..., H * d : 2 * H * d], qkv[..., 2 * H * d :]
    elif layout == "mixed":
        q = randn(F, H, d, std=2.0)
        k, v = randn(F, N, 3 * H * d)[..., H * d : 2 * H * d], randn(F, N, 2 * H * d)[..., : H * d]
    else:
        q, k, v = randn(F, H, d, std=2.0), randn(F, N, H * d), randn(F, N, H * d)
    return q, k, v, randn(F, H, d)


def reference(q, k, v, dout, scale=None):
    """float64 out, probs, entropy and (dq, dk, dv)."""
    F, H, d = q.shape
    N = k.shape[1]
    scale = d**-0.5 if scale is None else scale
    q, k, v = (x.detach().double().requires_grad_() for x in (q, k, v))
    logp = (torch.einsum("fhd,fnhd->fhn", q, k.reshape(F, N, H, d)) * scale).log_softmax(-1)  # [F, H, N]
    probs = logp.exp()
    out = torch.einsum("fhn,fnhd->fhd", probs, v.reshape(F, N, H, d))
    entropy = -(probs * logp).sum(-1)
    grads = torch.autograd.grad(out, (q, k, v), dout.double())
    return out.detach(), probs.detach(), entropy.detach(), grads


def assert_close(actual, expected, tol, what):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values (unwritten outputs are NaN)"
    err = (actual.double() - expected).abs().max().item()
    bound = tol * expected.abs().max().item()
    assert err <= bound, f"{what}: max error {err:.3g} > {bound:.3g}"


def check(q, k, v, dout, *, scale=None, probs=True, entropy=True):
    for x in (q, k, v):
        x.requires_grad_()
    res = query_attention_triton(q, k, v, scale=scale, return_probs=probs, return_entropy=entropy)
    dq, dk, dv = torch.autograd.grad(res.out, (q, k, v), dout)
    out_ref, probs_ref, ent_ref, grads_ref = reference(q, k, v, dout, scale)
    tol = TOL[q.dtype]
    assert res.out.dtype == q.dtype
    assert_close(res.out, out_ref, tol, "out")
    if probs:
        assert res.probs.dtype == q.dtype and not res.probs.requires_grad
        assert_close(res.probs, probs_ref, tol, "probs")
    else:
        assert res.probs is None
    if entropy:
        assert res.entropy.dtype == torch.float32 and not res.entropy.requires_grad
        assert_close(res.entropy, ent_ref, tol, "entropy")
    else:
        assert res.entropy is None
    for name, grad, grad_ref, x in zip(("dq", "dk", "dv"), (dq, dk, dv), grads_ref, (q, k, v)):
        assert grad.dtype == x.dtype
        assert_close(grad, grad_ref, tol, name)


CASES = [  # seed, F, N, H, d, dtype, layout
    (1, 1, 1, 1, 32, torch.float32, "contiguous"),
    (2, 3, 7, 6, 64, torch.float32, "qkv"),
    (3, 2, 257, 6, 64, torch.float16, "qkv"),
    (4, 1, 300, 12, 32, torch.float32, "qkv"),
    (5, 8, 20, 16, 64, torch.float16, "contiguous"),
    (8, 3, 50, 6, 64, torch.float32, "mixed"),
    (9, 4, 129, 12, 64, torch.float16, "mixed"),
    (6, 1, 33, 16, 128, torch.float32, "qkv"),
    (7, 2, 5, 1, 128, torch.float16, "qkv"),
]


@pytest.mark.parametrize("seed,F,N,H,d,dtype,layout", CASES)
def test_matches_reference(seed, F, N, H, d, dtype, layout):
    check(*make_inputs(seed, F, N, H, d, dtype, layout))


@pytest.mark.parametrize("probs,entropy", [(False, False), (True, False), (False, True)])
def test_optional_outputs(probs, entropy):
    check(*make_inputs(10 + 2 * probs + entropy, 3, 19, 6, 32, torch.float32), probs=probs, entropy=entropy)


def test_custom_scale_and_peaked_softmax():
    q, k, v, dout = make_inputs(20, 2, 40, 6, 32, torch.float32)
    check(q, k, v, dout, scale=1.7)  # scores of order 10: near one-hot probs, entropy near 0


@pytest.mark.parametrize(
    "block_n,hsplit,F,N,H",
    [(4, 2, 2, 7, 6), (1, 1, 1, 3, 6), (32, 4, 1, 300, 12), (8, 8, 2, 9, 6)],
)
def test_other_tilings(monkeypatch, block_n, hsplit, F, N, H):
    """Key blocks that do not divide N, one key per block, several programs per frame, padded heads."""
    config = triton.Config({"BLOCK_N": block_n, "HSPLIT": hsplit}, num_warps=4)
    monkeypatch.setattr(qa._fwd_kernel, "configs", [config])
    monkeypatch.setattr(qa._bwd_kernel, "configs", [config])
    check(*make_inputs(30 + block_n + hsplit, F, N, H, 32, torch.float32))


def test_gradient_reaches_the_cache_tensor():
    F, N, H, d = 2, 11, 6, 32
    qkv = torch.randn(F, N, 3 * H * d, generator=torch.Generator().manual_seed(40)).to(DEVICE)
    qkv.requires_grad_()
    q, k, v = qkv[:, 0, : H * d].reshape(F, H, d), qkv[..., H * d : 2 * H * d], qkv[..., 2 * H * d :]
    dout = torch.randn(F, H, d, generator=torch.Generator().manual_seed(41)).to(DEVICE)
    query_attention_triton(q, k, v).out.backward(dout)
    _, _, _, (dq, dk, dv) = reference(q, k, v, dout)
    expected = torch.zeros(F, N, 3 * H * d, dtype=torch.float64, device=DEVICE)
    expected[:, 0, : H * d] = dq.reshape(F, H * d)
    expected[..., H * d : 2 * H * d] = dk
    expected[..., 2 * H * d :] = dv
    assert_close(qkv.grad, expected, 1e-5, "qkv.grad")


def test_dispatch_matches_torch_backend():
    q, k, v, _ = make_inputs(50, 3, 13, 6, 64, torch.float32)
    kwargs = dict(return_probs=True, return_entropy=True)
    got = query_attention(q, k, v, backend="triton", **kwargs)
    want = query_attention(q, k, v, backend="torch", **kwargs)
    for name, a, b in zip(("out", "probs", "entropy"), got, want):
        assert_close(a, b.double(), 1e-5, name)


def test_bad_inputs_raise_input_error():
    q, k, v, _ = make_inputs(60, 2, 5, 6, 32, torch.float32, "contiguous")
    with pytest.raises(InputError, match=r"\[F, N, H\*d\]"):
        query_attention_triton(q, k[:, :, :-32], v[:, :, :-32])
    with pytest.raises(InputError, match="one dtype"):
        query_attention_triton(q, k.half(), v.half())
    with pytest.raises(InputError, match="contiguous last dim"):
        kt = k.transpose(1, 2).contiguous().transpose(1, 2)  # same values, last-dim stride N
        query_attention_triton(q, kt, v)
    with pytest.raises(InputError, match="power of two"):
        q48, k48, v48, _ = make_inputs(61, 2, 5, 2, 48, torch.float32, "contiguous")
        query_attention_triton(q48, k48, v48)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU, run the real benchmark")
def test_benchmark_smoke():
    """`python -m benchmarks.kernels --smoke` runs and ends with one JSON line of results."""
    cmd = [sys.executable, "-m", "benchmarks.kernels", "--smoke"]  # -m: the repo root is on sys.path
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    methods = {row["method"] for row in result["results"]}
    assert {"triton", "triton+probs", "sdpa", "eager+probs", "eager_contiguous+probs"} <= methods
    assert all(row["us"] > 0 for row in result["results"])


@needs_cuda
@pytest.mark.parametrize(
    "F,N,H,d", [(64, 257, 6, 64), (16, 257, 12, 64), (16, 257, 16, 64), (5, 300, 6, 128)]
)
def test_bf16_matches_reference_gpu(F, N, H, d):
    check(*make_inputs(70 + H + d, F, N, H, d, torch.bfloat16))


@needs_cuda
def test_every_autotune_config_gpu(monkeypatch):
    """Compile and check every GPU autotune config on one shape (the other tests run one tiling)."""
    assert len(AUTOTUNE_CONFIGS) > 1
    for i, config in enumerate(AUTOTUNE_CONFIGS):
        monkeypatch.setattr(qa._fwd_kernel, "configs", [config])
        monkeypatch.setattr(qa._bwd_kernel, "configs", [config])
        check(*make_inputs(80 + i, 7, 257, 6, 64, torch.bfloat16))


@needs_cuda
def test_faster_than_eager_gpu(monkeypatch):
    from fvlm.attention import query_attention_torch

    monkeypatch.setattr(qa._fwd_kernel, "configs", AUTOTUNE_CONFIGS)  # autotuned, as in real use
    q, k, v, _ = make_inputs(90, 512, 257, 6, 64, torch.bfloat16)
    kwargs = dict(return_probs=True, return_entropy=True)
    fused = triton.testing.do_bench(lambda: query_attention_triton(q, k, v, **kwargs))
    eager = triton.testing.do_bench(lambda: query_attention_torch(q, k, v, **kwargs))
    assert fused < eager, f"triton {fused * 1e3:.0f} us vs eager {eager * 1e3:.0f} us"
