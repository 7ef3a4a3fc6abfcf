"""One LLM token on the inference engine: stacked q/k/v and gate/up projections against separate ones.

    python -m benchmarks.llm_token [--device cuda|cpu] [--out DIR]

The autoregressive frame step and every decoded token end in one LLM token (SmolLM2-135M-shaped
here: 30 layers, d 576, random weights, batch 1). At that size the token is bound by how many small
kernels it runs, not by arithmetic, so the engine stacks the projections that read the same input
(fvlm.engine.Fused: q/k/v, gate/up). For each variant, in the same run:
- operators per token: the outermost aten operators of one eager token that do work (views
  excluded), counted with torch.profiler on the host side, and the matrix products among them;
  about one GPU kernel each, and the same on any device,
- ms per token: the median of repeated tokens appended to a 256-token cache (CUDA: each token one
  CUDA graph replay, the way the engine runs it; CPU: eager),
- the largest logit difference against the unfused engine (the two must agree to rounding).
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import machine, markdown_table, setup, time_ms, write_outputs
from benchmarks.e2e import SHAPES, build_fvlm
from fvlm.engine import Engine
from fvlm.progress import say

GEMMS = {"aten::linear", "aten::matmul", "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
VIEWS = {f"aten::{n}" for n in ("view", "reshape", "_unsafe_view", "_reshape_alias", "as_strided", "alias", "t",
                                "transpose", "permute", "select", "slice", "narrow", "split", "split_with_sizes",
                                "chunk", "unbind", "unsqueeze", "squeeze", "expand", "flatten", "unflatten",
                                "detach", "lift_fresh")}  # metadata only: no kernel
CONTEXT = 256  # tokens already in the cache
VARIANTS = {"separate projections": False, "stacked q/k/v and gate/up": True}


def count_ops(fn) -> tuple[int, int]:
    """(operators, matrix products among them) that one fn() call runs: the outermost aten calls
    (an operator's own sub-calls are its implementation), less those that only make a view."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    calls = [e.name for e in prof.events() if e.name.startswith("aten::")
             and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    work = [name for name in calls if name not in VIEWS]
    return len(work), sum(name in GEMMS for name in work)


def measure(model, device: str, fuse: bool, repeat: int) -> tuple[dict, torch.Tensor]:
    """One variant's row, and the logits of its first token (for the agreement check)."""
    d = model.llm.config.hidden_size
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(1, CONTEXT, d, generator=g).to(device, model.dtype)  # the cache's contents
    token = torch.randn(1, 1, d, generator=g).to(device, model.dtype)
    lm = model.llm.get_output_embeddings()
    eager = Engine(model, graphs=False, fuse=fuse)
    stacked = sum(t.numel() * t.element_size() for f in eager.fused or [] for t in f if t is not None)
    cache = eager.acquire(1, CONTEXT + 64)
    cache.append(x)
    logits = lm(cache.append(token)[:, -1]).float()
    ops, gemms = count_ops(lambda: cache.append(token))
    engine = Engine(model, fuse=fuse)  # graphs on CUDA
    cache = engine.acquire(1, CONTEXT + repeat + 64)
    cache.append(x)
    ms = time_ms(lambda: cache.append(token), device, warmup=3, repeat=repeat)
    row = {"variant": "fused" if fuse else "unfused", "ops_per_token": ops, "gemms_per_token": gemms,
           "ms_per_token": round(ms, 4), "stacked_copy_MiB": round(stacked / 2**20, 1)}
    return row, logits


def run(device: str, repeat: int) -> dict:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = build_fvlm(SHAPES["full"], "foveated", device, dtype)
    rows, logits = [], {}
    with torch.inference_mode():
        for name, fuse in VARIANTS.items():
            say(f"llm_token: {name} ...")
            row, logits[fuse] = measure(model, device, fuse, repeat)
            rows.append({"name": name, **row})
    base = rows[0]
    for row in rows:
        row["ms_ratio"] = round(row["ms_per_token"] / base["ms_per_token"], 3)
        row["ops_ratio"] = round(row["ops_per_token"] / base["ops_per_token"], 3)
    diff = float((logits[True] - logits[False]).abs().max())
    return {"benchmark": "llm_token", "label": SHAPES["full"].label, "machine": machine(device),
            "dtype": str(dtype).removeprefix("torch."), "context": CONTEXT, "rows": rows,
            "max_logit_diff_fused_vs_unfused": diff, "logit_scale": float(logits[False].abs().max())}


def table(result: dict) -> str:
    m = result["machine"]
    head = (f"# One LLM token on the engine ({m['device']}, {result['dtype']}, {m['date']})\n\n"
            f"SmolLM2-135M-shaped LLM, random weights, batch 1, {result['context']} tokens in the cache. "
            "Operators: the outermost aten operators of one eager token, views excluded (about one GPU "
            "kernel each).\n\n")
    rows = [[r["name"], r["ops_per_token"], r["gemms_per_token"], r["ops_ratio"], r["ms_per_token"], r["ms_ratio"],
             r["stacked_copy_MiB"]] for r in result["rows"]]
    foot = (f"\nLargest logit difference, stacked vs separate: {result['max_logit_diff_fused_vs_unfused']:.3g} "
            f"(logits up to {result['logit_scale']:.3g}).\n")
    return head + markdown_table(["projections", "operators", "of them GEMMs", "ratio", "ms / token", "ratio",
                                  "stacked weights MiB"],
                                 rows) + foot


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeat", type=int, default=None, help="tokens timed per variant (default 200 CUDA, 30 CPU)")
    parser.add_argument("--out", type=Path, help="write llm_token.md and llm_token.json into this folder")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu)")
    setup(args.device)
    result = run(args.device, args.repeat or (200 if args.device == "cuda" else 30))
    text = table(result)
    print(text)
    write_outputs(args.out, "llm_token", result, text)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
