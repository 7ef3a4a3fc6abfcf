"""Benchmark one-query attention: the Triton kernel against SDPA and eager torch.

    python -m benchmarks.kernels [--out DIR]   # CUDA: F in {1, 8, 64, 512, 4096}, H=6, N=257, d=64, bf16
    python -m benchmarks.kernels --smoke       # tiny shapes; on CPU through the Triton interpreter

Times are medians of triton.testing.do_bench (CPU smoke: of 3 perf_counter runs), rotating among
enough input sets that repeated calls cannot be served from L2. Bandwidth counts the bytes a perfect
kernel must move: forward reads q, k, v and writes out (+ probs); backward also reads out, dout and
writes dq, dk, dv. It is reported as a fraction of the device-to-device copy bandwidth measured in
the same run (bytes read + written by a large Tensor.copy_). The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as Fn

from fvlm.progress import Progress

SHAPE = dict(H=6, N=257, d=64)  # DINOv2-S at 224 px
SMOKE_SHAPE = dict(H=2, N=7, d=16)


class Inputs(NamedTuple):
    q: torch.Tensor  # [F, H, d]
    k: torch.Tensor  # [F, N, H*d] slice of the qkv cache
    v: torch.Tensor  # [F, N, H*d] slice of the qkv cache
    kc: torch.Tensor  # [F, H, N, d] contiguous copy of k
    vc: torch.Tensor  # [F, H, N, d] contiguous copy of v
    dout: torch.Tensor  # [F, H, d]


def make_inputs(F: int, H: int, N: int, d: int, dtype: torch.dtype, device: str) -> Inputs:
    qkv = torch.randn(F, N, 3 * H * d, device=device, dtype=dtype).requires_grad_()
    k, v = qkv[..., H * d : 2 * H * d], qkv[..., 2 * H * d :]
    kc, vc = (x.detach().view(F, N, H, d).transpose(1, 2).contiguous().requires_grad_() for x in (k, v))
    q = torch.randn(F, H, d, device=device, dtype=dtype, requires_grad=True)
    return Inputs(q, k, v, kc, vc, torch.randn(F, H, d, device=device, dtype=dtype))


def methods() -> dict[str, tuple[Callable[[Inputs], torch.Tensor], bool, bool]]:
    """name -> (forward returning out, writes probs, uses the contiguous [F, H, N, d] copies)."""
    from fvlm.attention import query_attention_torch, query_attention_triton

    def sdpa(x: Inputs) -> torch.Tensor:
        F, H, d = x.q.shape
        kh, vh = (t.view(F, -1, H, d).transpose(1, 2) for t in (x.k, x.v))  # [F, H, N, d] strided views
        return Fn.scaled_dot_product_attention(x.q[:, :, None, :], kh, vh)[:, :, 0]

    def eager_contiguous(x: Inputs) -> torch.Tensor:
        d = x.q.shape[2]
        probs = (x.q[:, :, None, :] @ x.kc.transpose(-1, -2) * d**-0.5).softmax(-1)  # [F, H, 1, N]
        return (probs @ x.vc)[:, :, 0]  # [F, H, d]

    return {
        "triton": (lambda x: query_attention_triton(x.q, x.k, x.v).out, False, False),
        "triton+probs": (lambda x: query_attention_triton(x.q, x.k, x.v, return_probs=True).out, True, False),
        "sdpa": (sdpa, False, False),
        "eager+probs": (lambda x: query_attention_torch(x.q, x.k, x.v, return_probs=True).out, True, False),
        "eager_contiguous+probs": (eager_contiguous, True, True),
    }


def bench_us(fn: Callable[[], object], cuda: bool) -> float:
    if cuda:
        import triton.testing

        return triton.testing.do_bench(fn, return_mode="median") * 1e3
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def copy_bandwidth(device: str, cuda: bool) -> float:
    """Bytes read + written per second by a large device-to-device Tensor.copy_."""
    n = 2**30 if cuda else 2**24
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * n / (bench_us(lambda: dst.copy_(src), cuda) * 1e-6)


def run(frames: list[int], H: int, N: int, d: int, dtype: torch.dtype, device: str) -> dict:
    import triton

    cuda = device == "cuda"
    copy_bw = copy_bandwidth(device, cuda)
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20) if cuda else 1 << 20
    elt = torch.finfo(dtype).bits // 8
    rows = []
    bar = Progress(len(frames) * len(methods()), "kernels: query attention", unit="timings")
    for F in frames:
        qhd, kv = F * H * d, F * N * H * d  # elements of q (= out, dout, dq) and of k (= v, dk, dv)
        set_bytes = (F * N * 3 * H * d + 2 * kv + 3 * qhd) * elt
        n_sets = min(256, max(2, math.ceil(3 * l2 / set_bytes)))  # together well over the L2 size
        sets = [make_inputs(F, H, N, d, dtype, device) for _ in range(n_sets)]
        for name, (forward, probs, contiguous) in methods().items():
            bar.write(f"kernels: F={F} frames, {name}, fwd and fwd+bwd ...")
            fwd_bytes = (2 * qhd + 2 * kv + (F * H * N if probs else 0)) * elt
            bwd_bytes = (5 * qhd + 4 * kv) * elt  # read q, out, dout, k, v; write dq, dk, dv
            cycle = itertools.cycle(sets)

            def fwd() -> None:
                with torch.no_grad():
                    forward(next(cycle))

            def fwd_bwd() -> None:
                x = next(cycle)
                wrt = (x.q, x.kc, x.vc) if contiguous else (x.q, x.k, x.v)
                torch.autograd.grad(forward(x), wrt, x.dout)

            for pass_, fn, nbytes in (("fwd", fwd, fwd_bytes), ("fwd+bwd", fwd_bwd, fwd_bytes + bwd_bytes)):
                us = bench_us(fn, cuda)
                gbps = nbytes / us * 1e-3
                rows.append({"F": F, "method": name, "pass": pass_, "us": round(us, 2), "bytes": nbytes,
                             "GBps": round(gbps, 1), "frac_copy_bw": round(gbps * 1e9 / copy_bw, 3)})
            bar.update(1)
        del sets
    bar.close()
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    return {
        "device": torch.cuda.get_device_name() if cuda else f"cpu (Triton interpreter: {interpreted})",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "shape": {"H": H, "N": N, "d": d, "dtype": str(dtype).removeprefix("torch.")},
        "copy_GBps": round(copy_bw / 1e9, 1),
        "results": rows,
    }


def table(result: dict) -> str:
    shape = result["shape"]
    lines = [
        f"# one-query attention on {result['device']}",
        "",
        f"torch {result['torch']}, triton {result['triton']}, {result['date']}. "
        f"H={shape['H']} N={shape['N']} d={shape['d']} {shape['dtype']}; "
        f"measured copy bandwidth {result['copy_GBps']} GB/s (read + write).",
        "",
        "| F | pass | method | us | GB/s | fraction of copy bw |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for r in result["results"]:
        lines.append(f"| {r['F']} | {r['pass']} | {r['method']} | {r['us']:.1f} | {r['GBps']:.0f} "
                     f"| {r['frac_copy_bw']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes; on CPU via the Triton interpreter")
    parser.add_argument("--out", type=Path, help="also write query_attention.md and .json into this folder")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("benchmarks.kernels needs a CUDA GPU (--smoke: tiny shapes on CPU via the Triton interpreter)")
        return
    if not cuda:
        os.environ["TRITON_INTERPRET"] = "1"  # must precede the first `import triton`
    frames = [1, 2] if args.smoke else [1, 8, 64, 512, 4096]
    shape = SMOKE_SHAPE if args.smoke else SHAPE
    dtype = torch.bfloat16 if cuda else torch.float32  # the interpreter cannot do bf16
    result = run(frames, **shape, dtype=dtype, device="cuda" if cuda else "cpu")
    text = table(result)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "query_attention.md").write_text(text)
        (args.out / "query_attention.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
