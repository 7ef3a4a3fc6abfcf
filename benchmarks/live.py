"""Live video: per-frame push latency, ask latency and memory against the frames seen, and the sustained
frame rate over a session 10x longer than its window.

    python -m benchmarks.live [--device cpu|cuda] [--model shipped|135m] [--frames 1,16,64] [--threads N]
                              [--out DIR] [--smoke]

One session (model.live) is pushed camera-sized frames (480x640 random pixels, preprocessed like every
input) until it has seen 10 x max_frames, so its window slides (re-prefilled from the kept tokens) many
times. At each checkpoint n (frames seen; 10 x max_frames is always one) it records the push latency
(median of the pushes up to n, at most 8), an ask() (greedy, `--ask-tokens` new tokens at most; the
session goes on after it), the KV-cache length and the memory held (CPU: process RSS; CUDA: allocated).
Sustained frame rate: frames / total push time over the whole run, slides included; p50/p99/max push
latency show the slide spikes. Models: `shipped` is the trained model in the package (CPU target:
>= 25 frames/s on 2 cores); `135m` is the fVLM-135M-shaped model with random weights (DINOv2-S/14 at
224 px + SmolLM2-135M; H100 target: >= 200 frames/s) and a stand-in tokenizer. Prints a table and ends
with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from .common import allocated_mib, machine, markdown_table, setup, sync, write_outputs
from .e2e import SHAPES, build_fvlm

TARGET_FPS = {"shipped": 25.0, "135m": 200.0}  # shipped: 2-core CPU; 135m: one H100
PROMPT = "What color is the triangle?"
ANCHORS = ("VideoLLM-online: 7B LLM, ~10 tokens/frame, > 10 frames/s on an A100; "
           "ViCoStream: Qwen2.5-VL-3B, 134 frames/s ingestion on an A100")


def build(name: str, device: str, dtype: torch.dtype):
    """The model to benchmark (eval mode, on device) and a one-line description."""
    from fvlm.tiny import tiny_model, tiny_tokenizer

    if name == "shipped":
        import fvlm

        model = fvlm.load(device=device).to(dtype)
        desc = "the shipped ShapesQA model"
    elif name == "135m":
        model = build_fvlm(SHAPES["full"], "foveated", device, dtype)
        model.tokenizer = tiny_tokenizer()  # any ids below the vocab size do for timing
        desc = "fVLM-135M-shaped (DINOv2-S/14 @224px + SmolLM2-135M), random weights"
    else:  # smoke
        model = tiny_model(seed=0, max_frames=4).to(device, dtype)
        desc = "tiny random model (smoke: numbers mean nothing)"
    params = sum(p.numel() for p in model.parameters())
    return model.eval(), f"{desc}, {params / 1e6:.1f}M parameters"


def run(model, device: str, checkpoints: list[int], ask_tokens: int, seed: int = 0) -> dict:
    W = model.config.max_frames
    total = 10 * W
    checkpoints = sorted({n for n in checkpoints if n <= total} | {total})
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (8, 480, 640, 3), dtype=np.uint8)  # cycled: camera-sized frames

    warm = model.live(PROMPT)  # warm-up: allocator, kernels, first slide
    for i in range(W + 2):
        warm.push(frames[i % 8])
    warm.ask(max_new_tokens=2)
    warm.close()

    session = model.live(PROMPT)
    times: list[float] = []
    rows = []
    for n in range(1, total + 1):
        sync(device)
        t0 = time.perf_counter()
        session.push(frames[n % 8])
        sync(device)
        times.append(time.perf_counter() - t0)
        if n in checkpoints:
            sync(device)
            t0 = time.perf_counter()
            answer = session.ask(max_new_tokens=ask_tokens)
            sync(device)
            ask_ms = (time.perf_counter() - t0) * 1e3
            rows.append({"frames_seen": n, "window": session.window, "context_tokens": session.context_tokens,
                         "push_ms": round(statistics.median(times[-8:]) * 1e3, 2), "ask_ms": round(ask_ms, 1),
                         "ask_tokens": len(model.tokenizer(answer, add_special_tokens=False)["input_ids"]),
                         "memory_MiB": round(allocated_mib(device), 1)})
            print(json.dumps(rows[-1]), flush=True)
    ms = np.array(times) * 1e3
    keep = session.config.keep_frames
    return {"max_frames": W, "keep_frames": keep, "pushes": total, "rows": rows,
            "sustained_fps": round(total / ms.sum() * 1e3, 1), "push_ms_p50": round(float(np.median(ms)), 2),
            "push_ms_p99": round(float(np.percentile(ms, 99)), 2), "push_ms_max": round(float(ms.max()), 2),
            "slides": math.ceil((total - W) / (W - keep))}  # one per W - keep pushes once full


def table(result: dict) -> str:
    m, r = result["machine"], result["run"]
    target = result["target_fps"]
    lines = [f"# live video on {m['device']}", "",
             (f"{result['model']}; {result['precision']}; one visual token per frame; window max_frames="
              f"{r['max_frames']}, keep_frames={r['keep_frames']}; {r['pushes']} pushes of 480x640 frames "
              f"({r['slides']} slides); {m['date']}, torch {m['torch']}, {m['cpu_count']} CPUs "
              f"(load {m['load_avg_1min']}, {m['torch_threads']} torch threads)."), "",
            markdown_table(["frames seen", "window", "context tokens", "push ms (p50)", "ask ms", "ask tokens",
                            "memory MiB"],
                           [[x["frames_seen"], x["window"], x["context_tokens"], x["push_ms"], x["ask_ms"],
                             x["ask_tokens"], x["memory_MiB"]] for x in r["rows"]]),
            (f"Sustained: **{r['sustained_fps']} frames/s** over {r['pushes']} pushes, slides included (push p50 "
             f"{r['push_ms_p50']} ms, p99 {r['push_ms_p99']} ms, max {r['push_ms_max']} ms)"
             + ("" if target is None else f"; target >= {target:g} frames/s") + "."),
            "", f"Anchors (other systems, not measured here): {ANCHORS}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", choices=["shipped", "135m"], default=None,
                        help="default: shipped on CPU, 135m on CUDA")
    parser.add_argument("--frames", default="1,16,64", help="checkpoints (frames seen); 10 x max_frames is added")
    parser.add_argument("--ask-tokens", type=int, default=8, help="new tokens per ask at most (default 8)")
    parser.add_argument("--bf16", action="store_true", help="bf16 weights (CUDA)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 is fastest for small models on a busy CPU)")
    parser.add_argument("--smoke", action="store_true", help="a tiny random model: checks that it runs")
    parser.add_argument("--out", type=Path, help="write live.md and live.json into this folder")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    name = "smoke" if args.smoke else args.model or ("135m" if args.device == "cuda" else "shipped")
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    setup(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, desc = build(name, args.device, dtype)
    with torch.inference_mode():
        r = run(model, args.device, [int(x) for x in args.frames.split(",")], args.ask_tokens)
    result = {"benchmark": "live", "model": desc, "model_name": name, "device": args.device,
              "precision": "bf16" if args.bf16 else "fp32", "tokens_per_frame": model.visual_tokens_per_frame,
              "machine": machine(args.device), "run": r, "target_fps": TARGET_FPS.get(name), "anchors": ANCHORS}
    text = table(result)
    print(text)
    write_outputs(args.out, "live", result, text)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
