"""coarse_fine on the inference engine: the patch pass all at once or in chunks of frames.

    python -m benchmarks.frame_chunk [--device cuda|cpu] [--frames 64] [--chunks 0,16,8] [--out DIR]

coarse_only and coarse_fine need every frame's DINO K/V at once (12 layers x 64 frames: ~290 MiB
in bf16 for DINOv2-S at 224 px). The engine encodes the frames in passes of `frame_chunk` frames and
copies each pass's K/V into buffers for all frames, so only one pass's pixels and activations are
alive at a time. Fewer frames per pass: less memory, more (smaller) passes. For each chunk size
(0: all frames in one pass), in the same run, at full size (fVLM-135M-shaped, random weights,
batch 1): time to first token of a coarse_fine prefill (median), its transient memory (peak
during the call minus the level before it: CUDA allocator, or CPU RSS) and the K/V floor, and the
largest logit difference against one pass. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.common import machine, markdown_table, memory_mib, setup, time_ms, write_outputs
from benchmarks.e2e import SHAPES, build_fvlm, fvlm_batch
from fvlm.engine import Engine
from fvlm.progress import say

MiB = 1 << 20


def run(device: str, frames: int, chunks: list[int], repeat: int) -> dict:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    s = SHAPES["full"]
    model = build_fvlm(s, "foveated", device, dtype)
    batch = fvlm_batch(s, frames, device, dtype, torch.Generator().manual_seed(0))
    d = s.dino
    kv_floor = d["num_hidden_layers"] * 2 * frames * ((d["image_size"] // d["patch_size"]) ** 2 + 1) \
        * d["hidden_size"] * torch.finfo(dtype).bits // 8 / MiB
    rows, first = [], None
    with torch.inference_mode():
        for chunk in chunks:
            say(f"frame_chunk: {frames} frames, chunk {chunk or 'all'} ...")
            per_pass = chunk or frames  # 0: all frames in one pass
            engine = Engine(model, frame_chunk=per_pass)

            def prefill(engine=engine):
                pre = engine.prefill(batch, "coarse_fine")
                engine.release()  # the slots do not outlive the call: transient = the call's own
                return pre.logits

            logits = prefill().float()  # also warms up (graph capture)
            first = logits if first is None else first
            ms = time_ms(prefill, device, warmup=1, repeat=repeat)
            rows.append({"frame_chunk": per_pass, "passes": -(-frames // per_pass),
                         "ttft_ms": round(ms, 2), **memory_mib(prefill, device),
                         "max_logit_diff": float((logits - first).abs().max())})
    base = rows[0]
    for row in rows:
        row["ttft_ratio"] = round(row["ttft_ms"] / base["ttft_ms"], 3)
        row["transient_ratio"] = round(row["transient_MiB"] / base["transient_MiB"], 3)
    return {"benchmark": "frame_chunk", "label": s.label, "machine": machine(device),
            "dtype": str(dtype).removeprefix("torch."), "frames": frames, "kv_floor_MiB": round(kv_floor, 1),
            "rows": rows}


def table(result: dict) -> str:
    m = result["machine"]
    head = (f"# coarse_fine prefill on the engine, patch pass in chunks ({m['device']}, {result['dtype']}, "
            f"{m['date']})\n\n{result['frames']} frames, batch 1, fVLM-135M-shaped, random weights. The K/V of "
            f"every frame alone: {result['kv_floor_MiB']} MiB.\n\n")
    rows = [[r["frame_chunk"], r["passes"], r["ttft_ms"], r["ttft_ratio"], r["transient_MiB"], r["transient_ratio"],
             f"{r['max_logit_diff']:.2g}"] for r in result["rows"]]
    return head + markdown_table(["frames per pass", "passes", "TTFT ms", "ratio", "transient MiB", "ratio",
                                  "logit diff"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--chunks", default="0,16,8", help="frames per pass, comma-separated (0: all at once)")
    parser.add_argument("--repeat", type=int, default=None, help="timed prefills per chunk size (default 10 CUDA, 2 CPU)")
    parser.add_argument("--out", type=Path, help="write frame_chunk.md and frame_chunk.json into this folder")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu)")
    chunks = [int(c) for c in args.chunks.split(",")]
    if any(c < 0 for c in chunks) or args.frames < 1:
        parser.error("--frames must be >= 1 and --chunks >= 0")
    setup(args.device)
    result = run(args.device, args.frames, chunks, args.repeat or (10 if args.device == "cuda" else 2))
    text = table(result)
    print(text)
    write_outputs(args.out, "frame_chunk", result, text)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
