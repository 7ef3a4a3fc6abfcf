"""Training throughput: samples/s of the fVLM-135M-shaped model (8-frame clips), B1 beside it.

    python -m benchmarks.train_step [--device cuda|cpu] [--batch 8] [--frames 8] [--text 128]
                                    [--modes coarse_fine,b1] [--compile] [--out DIR] [--smoke]

One step, as trainer/ runs it: forward in the given mode (coarse_fine: coarse pass, fine pass, text
loss; "b1": the MultiTokenVLM baseline, 16 tokens/frame), backward, grad-norm clip at 1.0, AdamW
(fused on CUDA), zero_grad. Models from configs with random weights: DINOv2-S/14 at 224 px +
SmolLM2-135M (CPU: the stand-ins of benchmarks.e2e, labelled so). A fixed synthetic batch of B clips
x T frames of random pixels and ~`text` tokens (a 32-token prompt, the rest an answer whose tokens
are the loss targets). CUDA: fp32 weights under bf16 autocast; CPU: fp32. --compile applies
trainer's torch.compile (the LLM decoder; DINO for B1). Median of timed steps after warm-up;
samples/s = B / step time; peak memory of a step. Prints a table and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import torch

from fvlm.batch import Batch
from fvlm.progress import say

from .common import machine, markdown_table, memory_mib, setup, time_ms, write_outputs
from .e2e import SHAPES, build_fvlm

TARGET_SAMPLES_S = 100  # the training-throughput target: 135M config, 8-frame clips, H100
PROMPT = 32


def train_batch(T: int, B: int, text: int, S: int, device: str, g: torch.Generator) -> Batch:
    """B clips of T frames; a PROMPT-token prefix and an answer of text - PROMPT target tokens."""
    P, A = min(PROMPT, text - 1), max(1, text - PROMPT)
    ids = lambda n: torch.randint(100, 49000, (B, n), generator=g)
    ones = lambda n: torch.ones((B, n), dtype=torch.bool)
    return Batch(
        pixel_values=torch.randn((B, T, 3, S, S), generator=g), frame_mask=ones(T),
        prefix_ids=ids(P), prefix_mask=ones(P), prefix_targets=~ones(P),
        suffix_ids=ids(A), suffix_mask=ones(A), suffix_targets=ones(A),
    ).to(device)


def measure(name: str, shapes: str, batch: Batch, device: str, compile_: bool, steps: int) -> dict:
    s = SHAPES[shapes]
    cuda = device == "cuda"
    model = build_fvlm(s, "multi_token" if name == "b1" else "foveated", device, torch.float32).train()
    if compile_:
        model.llm.get_decoder().compile(dynamic=True)
        if name == "b1":
            model.vision_model.compile(dynamic=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01, fused=cuda or None)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    mode = "coarse_fine" if name == "b1" else name  # (B1 ignores the mode)

    def step() -> None:
        with autocast():
            loss = model(batch, mode=mode).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    ms = time_ms(step, device, warmup=3 if cuda else 1, repeat=steps)
    B = batch.batch_size
    row = {"model": "B1 (16 tokens/frame)" if name == "b1" else f"fVLM {name}", "batch": B,
           "frames": batch.frame_mask.shape[1], "text_tokens": batch.prefix_ids.shape[1] + batch.suffix_ids.shape[1],
           "step_ms": round(ms, 2), "samples_s": round(B / ms * 1e3, 1), **memory_mib(step, device)}
    return row


def table(result: dict) -> str:
    m = result["machine"]
    lines = [f"# training step on {m['device']}", "",
             (f"{result['label']}. {result['precision']}; AdamW + grad clip; {m['date']}, torch {m['torch']}, "
              f"transformers {m['transformers']}, compile {result['compile']}, {m['cpu_count']} CPUs "
              f"(load {m['load_avg_1min']}). Target (H100, full size, coarse_fine): >= {TARGET_SAMPLES_S} "
              "samples/s."), ""]
    header = ["model", "batch", "frames", "text tokens", "step ms", "samples/s", "peak MiB", "transient MiB"]
    lines.append(markdown_table(header, [[r["model"], r["batch"], r["frames"], r["text_tokens"], r["step_ms"],
                                          r["samples_s"], r["peak_MiB"], r["transient_MiB"]] for r in result["rows"]]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="clips per step (default 8; smoke 2)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--text", type=int, default=128, help="text tokens per sample")
    parser.add_argument("--modes", default="coarse_fine,b1",
                        help="comma-separated: coarse_fine, coarse_only, autoregressive (fVLM), b1")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 10 CUDA, 3 CPU)")
    parser.add_argument("--compile", action="store_true", help="trainer's torch.compile of the LLM (and B1's DINO)")
    parser.add_argument("--full", action="store_true", help="full-size models on CPU too (slow)")
    parser.add_argument("--smoke", action="store_true", help="tiny stand-ins: checks that it runs")
    parser.add_argument("--out", type=Path, help="write train_step.md and .json into this folder")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu for the stand-ins)")
    cuda = args.device == "cuda"
    shapes = "smoke" if args.smoke else "full" if cuda or args.full else "cpu"
    B = args.batch or (2 if args.smoke else 8)
    frames = 2 if args.smoke else args.frames
    text = 16 if args.smoke else args.text
    steps = args.steps or (10 if cuda else 3)
    setup(args.device)
    g = torch.Generator().manual_seed(0)
    batch = train_batch(frames, B, text, SHAPES[shapes].dino["image_size"], args.device, g)
    rows = []
    modes = args.modes.split(",")
    for i, name in enumerate(modes):
        say(f"train_step: {name} ({i + 1}/{len(modes)}), {shapes} shapes, {B} clips x {frames} frames, "
            f"{steps} timed steps{' (torch.compile first)' if args.compile else ''} ...")
        rows.append(measure(name, shapes, batch, args.device, args.compile, steps))
        if cuda:
            torch.cuda.empty_cache()  # (the model and optimizer of the last row are gone)
        print(json.dumps(rows[-1]), flush=True)
    result = {"benchmark": "train_step", "shapes": shapes, "label": SHAPES[shapes].label,
              "standins": shapes != "full", "machine": machine(args.device),
              "precision": "bf16 autocast, fp32 weights" if cuda else "fp32", "compile": args.compile,
              "rows": rows, "target_samples_s": TARGET_SAMPLES_S}
    text_out = table(result)
    print(text_out)
    write_outputs(args.out, "train_step", result, text_out)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
