"""Data loading alone: samples/s of the trainer's input pipeline, with no model step.

    python -m benchmarks.loader SHARDS [--model DIR] [--image-size S] [--batch 8] [--workers 0,2,4]
                                   [--batches 20] [--out DIR]

SHARDS: webdataset shards as the trainer reads them (a glob or brace pattern, e.g. the output of
`fvlm make-shapes`). Each shard sample goes through the trainer's decoder (JPEG frames -> resized
pixel tensors, chat template, tokenization; trainer.data.Decoder) and batcher, in a torch
DataLoader with the given worker counts, exactly as in training but in one unshuffled pass
(EvalStream), for `--batches` batches after the first (which includes starting the workers).
The model directory gives the image size, frame sampling and tokenizer (default: the shipped model;
pass the trained model's directory for its sizes). Training is input-bound when the loader's
samples/s is below `benchmarks.train_step`'s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from fvlm.progress import Progress, say

from .common import machine, markdown_table, write_outputs


def measure(shards: list[str], decoder, batch: int, pad_id: int, workers: int, batches: int) -> dict:
    from trainer.data import EvalStream, loader

    stream = EvalStream(shards, decoder, batch, pad_id, rank=0, world=1, workers=workers,
                        max_samples=batch * (batches + 1) * max(1, workers))
    it = iter(loader(stream, workers, prefetch=2, pin=False))
    start = time.perf_counter()
    first = next(it)
    first_s = time.perf_counter() - start
    samples, start = 0, time.perf_counter()
    with Progress(batches, f"loader: {workers} workers", unit="batches") as bar:
        for tb in it:
            samples += tb.size
            bar.update(1)
            if bar.done == batches:
                break
    seconds = time.perf_counter() - start
    return {"workers": workers, "batch": batch, "frames": int(first.batch.pixel_values.shape[1]),
            "first_batch_s": round(first_s, 3), "batches": bar.done, "samples": samples,
            "samples_s": round(samples / seconds, 1) if samples else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shards", help="webdataset shards: a glob or brace pattern")
    parser.add_argument("--model", default=None, help="fvlm model directory (default: the shipped model)")
    parser.add_argument("--batch", type=int, default=8, help="clips per batch")
    parser.add_argument("--workers", default="0,2", help="comma-separated DataLoader worker counts")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per worker count")
    parser.add_argument("--image-size", type=int, default=None,
                        help="resize frames to this instead of the model's size (224: the 135M-shaped model)")
    parser.add_argument("--out", type=Path, help="write loader.md and loader.json into this folder")
    args = parser.parse_args(argv)

    from fvlm.hub import load
    from trainer.data import Decoder, expand_shards

    shards = expand_shards(args.shards, "shards")
    model = load(args.model, device="cpu")
    config = dataclasses.replace(model.config, image_size=args.image_size or model.config.image_size)
    decoder = Decoder(config, model.tokenizer, loss="answer", dpo=False)
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    rows = []
    for workers in (int(w) for w in args.workers.split(",")):
        say(f"loader: {len(shards)} shards, {workers} workers, batches of {args.batch} ...")
        rows.append(measure(shards, decoder, args.batch, pad_id, workers, args.batches))
        print(json.dumps(rows[-1]), flush=True)
    result = {"benchmark": "loader", "machine": machine("cpu"), "shards": len(shards),
              "image_size": config.image_size, "rows": rows}
    text = (f"# Data loading alone ({len(shards)} shards, {config.image_size} px)\n\n"
            + markdown_table(["workers", "batch", "frames", "first batch s", "samples/s"],
                             [[r["workers"], r["batch"], r["frames"], r["first_batch_s"], r["samples_s"]]
                              for r in rows]))
    print(text)
    write_outputs(args.out, "loader", result, text)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
