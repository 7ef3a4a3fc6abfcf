"""The iso-FLOP scaling grid: 3 LLM sizes x 4 FLOP budgets x {foveated, B1} = 24 training runs.

    python -m trainer.scaling_grid --template trainer/configs/scaling_template.yaml \\
        [--out runs/scaling] [--dry-run] [--filter 360M] [--nproc 8] [--set data.train_shards=...]

Run ids are SIZE-C#-F|B (e.g. 135M-C2-B). Each run is `python -m trainer.run` (or `torchrun
--nproc_per_node N -m trainer.run`) on the template with `--set` overrides: the LLM, the
architecture, flops.budget (the trainer turns it into samples = C / (3 x forward FLOPs per
sample)), and per-size batch settings. A run whose RUN/run_summary.json exists is skipped.
Every finished or skipped run goes into OUT/scaling_results.csv with its return code.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fvlm.errors import FVLMError

from .config import load_config
from .flops import sample_flops, samples_for_budget

SIZES = {
    "135M": ("HuggingFaceTB/SmolLM2-135M-Instruct", []),
    "360M": ("HuggingFaceTB/SmolLM2-360M-Instruct", ["data.batch_size=4", "train.grad_accum=8"]),
    "1.7B": (
        "HuggingFaceTB/SmolLM2-1.7B-Instruct",
        ["data.batch_size=2", "train.grad_accum=16", "model.gradient_checkpointing=true"],
    ),
}
BUDGETS = {"C1": 1.6e16, "C2": 5.6e16, "C3": 1.6e17, "C4": 3.1e17}
ARCHS = {
    "F": ["model.fvlm.architecture=foveated"],
    "B": ["model.fvlm.architecture=multi_token", "model.fvlm.tokens_per_frame=16"],
}
RESULT_COLUMNS = [
    "run_id",
    "size",
    "budget",
    "arch",
    "flop_budget",
    "flops_per_sample",
    "total_samples",
    "status",
    "returncode",
    "wall_time_s",
    "final_train_loss",
    "best_val_loss",
    "best_val_step",
]


@dataclass
class GridRun:
    run_id: str
    size: str
    budget: str
    arch: str
    overrides: list[str]
    flops_per_sample: float
    samples: int


def grid(template: Path, out: Path, extra: list[str]) -> list[GridRun]:
    runs = []
    for size, (llm, size_sets) in SIZES.items():
        for budget, flops in BUDGETS.items():
            for arch, arch_sets in ARCHS.items():
                run_id = f"{size}-{budget}-{arch}"
                sets = [
                    *extra,
                    f"model.llm={llm}",
                    "model.tokenizer=null",
                    *size_sets,
                    *arch_sets,
                    "train.total_samples=null",
                    f"flops.budget={flops}",
                    f"run.name={run_id}",
                    f"run.out_dir={out / run_id}",
                ]
                cfg = load_config(template, sets)
                fwd = sample_flops(cfg)["total"]
                runs.append(GridRun(run_id, size, budget, arch, sets, fwd, samples_for_budget(flops, fwd)))
    return runs


def command(template: Path, run: GridRun, nproc: int) -> list[str]:
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
        if nproc > 1
        else [sys.executable]
    )
    return [
        *launcher,
        "-m",
        "trainer.run",
        "--config",
        str(template),
        *(x for s in run.overrides for x in ("--set", s)),
    ]


def result_row(run: GridRun, out: Path, status: str, returncode: int | None, wall: float | None) -> dict:
    row = {
        "run_id": run.run_id,
        "size": run.size,
        "budget": run.budget,
        "arch": run.arch,
        "flop_budget": BUDGETS[run.budget],
        "flops_per_sample": f"{run.flops_per_sample:.4e}",
        "total_samples": run.samples,
        "status": status,
        "returncode": "" if returncode is None else returncode,
        "wall_time_s": "" if wall is None else round(wall, 1),
    }
    summary = out / run.run_id / "run_summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        row.update(
            final_train_loss=s["final"].get("loss"),
            best_val_loss=s["best"].get("value"),
            best_val_step=s["best"].get("step"),
        )
    return row


def write_results(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trainer.scaling_grid",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    p.add_argument(
        "--template", type=Path, default=Path(__file__).parent / "configs" / "scaling_template.yaml"
    )
    p.add_argument("--out", type=Path, default=Path("runs/scaling"))
    p.add_argument(
        "--dry-run", action="store_true", help="print the runs and their sample counts, run nothing"
    )
    p.add_argument("--filter", default="", help="only run ids containing this substring")
    p.add_argument("--nproc", type=int, default=1, help="processes per run (torchrun) (default 1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    a = p.parse_args(argv)
    try:
        runs = [r for r in grid(a.template, a.out, a.set) if a.filter in r.run_id]
    except FVLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'run':12s} {'LLM':>5s} {'arch':>11s} {'budget':>8s} {'FLOPs/sample':>13s} {'samples':>10s}")
    for r in runs:
        arch = "foveated" if r.arch == "F" else "multi-token"
        print(
            f"{r.run_id:12s} {r.size:>5s} {arch:>11s} {BUDGETS[r.budget]:8.1e} {r.flops_per_sample:13.3e} "
            f"{r.samples:10d}"
        )
    if a.dry_run:
        return 0
    a.out.mkdir(parents=True, exist_ok=True)
    results_path = a.out / "scaling_results.csv"
    rows = []
    failed = 0
    for r in runs:
        if (a.out / r.run_id / "run_summary.json").is_file():
            print(f"[grid] {r.run_id}: done before, skipped", flush=True)
            rows.append(result_row(r, a.out, "skipped (done)", None, None))
        else:
            print(f"[grid] {r.run_id}: {r.samples} samples", flush=True)
            t0 = time.time()
            rc = subprocess.run(command(a.template, r, a.nproc), check=False).returncode
            failed += rc != 0
            rows.append(result_row(r, a.out, "ok" if rc == 0 else "failed", rc, time.time() - t0))
        write_results(results_path, rows)
    print(f"[grid] {len(runs)} runs, {failed} failed; results in {results_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
