"""Peak memory per rank of trainer runs: train.parallel ddp against fsdp, same model, same data.

    python -m benchmarks.train_memory [--nproc 2] [--steps 3] [--shapes full|smoke] [--out DIR]

Runs `torchrun --nproc_per_node=N -m trainer.run` once per parallelism on a synthetic image
dataset (written with trainer.make_shards: 224 px images, each replicated into 4 frames) with a
random-init model of the given shapes (full: DINOv2-S/14 + SmolLM2-135M with its 49152-token
vocabulary; the tokenizer is trained on the data). Each rank reports its peak resident memory
(CPU, ru_maxrss: the whole process lifetime, model construction included; large blocks are
mmapped so freed tensors leave RSS) or, on CUDA, the peak allocated by torch, and the bytes of the
weights and AdamW state it holds after training (its shards under fsdp; gradients, freed after
each step, add the weights' size again during a step). Prints a table and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from .common import machine, markdown_table, setup, write_outputs
from .e2e import FVLM_VOCAB, SHAPES

MODES = ("ddp", "fsdp")
LABELS = {"full": "fVLM-135M-shaped (DINOv2-S/14 at 224 px + SmolLM2-135M, 49152-token vocabulary)",
          "smoke": "smoke stand-ins (tiny; checks that the benchmark runs, numbers mean nothing)"}


def dataset(root: Path, samples: int, size: int) -> Path:
    """`samples` random-noise images with a one-line question and answer, as trainer shards."""
    import cv2

    from trainer.make_shards import make_shards

    rng = np.random.default_rng(0)
    rows = []
    for i in range(samples):
        cv2.imwrite(str(root / f"{i}.png"), rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        rows.append({"image": f"{i}.png", "user": "What is in the picture?",
                     "assistant": f"Noise number {i}.", "source": "bench"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    make_shards(root / "manifest.jsonl", root / "shards", per_shard=max(1, samples // 4), progress=False)
    return root / "shards"


def config(shards: Path, out: Path, shapes: str, parallel: str, steps: int, nproc: int) -> dict:
    s = SHAPES[shapes]
    dino = {"model_type": "dinov2", "mlp_ratio": 4, "layerscale_value": 1.0, **s.dino}
    llm = {"model_type": "llama", "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2,
           "pad_token_id": 2, "vocab_size": FVLM_VOCAB if shapes == "full" else 512, **s.llm}
    return {
        "stage": 2,
        "run": {"name": f"mem-{parallel}", "out_dir": str(out), "seed": 0},
        "model": {"vision": dino, "llm": llm, "tokenizer": {"train_on": f"{shards}/*.tar", "vocab_size": 512},
                  "fvlm": {"image_size": s.dino["image_size"], "query_dim": s.query_dim, "image_frames": 4}},
        "data": {"train_shards": f"{shards}/*.tar", "batch_size": 1, "shuffle_buffer": 1, "num_workers": 0},
        "optim": {"lr": {"connector": 1e-4, "dino": 1e-5, "llm": 1e-5}, "warmup_ratio": 0.0},
        "train": {"total_samples": steps * nproc, "parallel": parallel},
        "checkpoint": {"every_steps": 10**6, "keep_last": 1},
        "log": {"every_steps": 1, "wandb": {"enabled": False}},
    }


def worker(argv: list[str]) -> int:
    """One rank (under torchrun): train, then write this rank's memory next to the config: the peak
    and the bytes of the weights and AdamW state this rank holds after training (its shards)."""
    from torch.distributed.tensor import DTensor

    from trainer import dist as D
    from trainer.config import load_config
    from trainer.run import Trainer, parse_args

    setup("cuda" if torch.cuda.is_available() else "cpu")
    args = parse_args(["--config", argv[0], "--no-wandb"])
    dist = D.init()
    trainer = Trainer(load_config(args.config, []), args, dist)
    rc = trainer.run()
    local = lambda t: t.to_local() if isinstance(t, DTensor) else t
    held = sum(local(p).numel() * p.element_size() for p in trainer.module.parameters())
    held += sum(local(v).numel() * v.element_size() for st in trainer.optimizer.state.values()
                for v in st.values() if torch.is_tensor(v))
    D.close(dist)
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    Path(argv[1], f"rank{dist.rank}.json").write_text(json.dumps(
        {"rank": dist.rank, "peak_MiB": peak / 2**20, "state_MiB": held / 2**20}))
    return rc


def run(args: argparse.Namespace) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(prefix="fvlm-train-memory-") as tmp:
        tmp = Path(tmp)
        size = SHAPES[args.shapes].dino["image_size"]
        shards = dataset(tmp, samples=4 * args.nproc * args.steps, size=size)
        for parallel in MODES:
            cfg = tmp / f"{parallel}.yaml"
            cfg.write_text(yaml.safe_dump(config(shards, tmp / parallel, args.shapes, parallel, args.steps,
                                                 args.nproc)))
            report = tmp / f"{parallel}-ranks"
            report.mkdir()
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={args.nproc}", "-m", "benchmarks.train_memory", "--worker", str(cfg),
                   str(report)]
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                   "WANDB_MODE": "disabled"}
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"{parallel} run failed:\n{proc.stderr[-4000:]}")
            ranks = [json.loads(p.read_text()) for p in sorted(report.iterdir())]
            rows.append({"parallel": parallel, "ranks": args.nproc,
                         "peak_MiB_per_rank": [round(r["peak_MiB"]) for r in ranks],
                         "state_MiB_per_rank": [round(r["state_MiB"]) for r in ranks]})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {"shapes": LABELS[args.shapes], "steps": args.steps, "rows": rows, "machine": machine(device)}


def table(result: dict) -> str:
    m = result["machine"]
    what = "peak allocated by torch" if "cuda" in m else "peak RSS (ru_maxrss, model construction included)"
    head = [f"# training memory per rank: ddp vs fsdp on {m['device']}", "",
            (f"{result['shapes']}; batch 1 x 4 frames per rank, {result['steps']} steps, AdamW; {what}; "
             f"{m['date']}, torch {m['torch']}, {m['cpu_count']} CPUs."), ""]
    per_rank = lambda xs: ", ".join(str(x) for x in xs)
    rows = [[r["parallel"], r["ranks"], per_rank(r["state_MiB_per_rank"]), per_rank(r["peak_MiB_per_rank"])]
            for r in result["rows"]]
    header = ["parallel", "ranks", "weights + AdamW held, MiB per rank", "peak MiB per rank"]
    return "\n".join(head) + markdown_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return worker(argv[1:])
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_memory", description=__doc__.split("\n")[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--shapes", choices=["full", "smoke"], default="full")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    result = run(args)
    text = table(result)
    print(text)
    print(json.dumps(result))
    write_outputs(args.out, "train_memory", result, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
