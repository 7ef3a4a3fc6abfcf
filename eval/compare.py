"""fvlm (all three modes) and SmolVLM2 through lmms-eval on the same tasks, in one table.

    python -m eval.compare --tasks shapesqa --smolvlm HuggingFaceTB/SmolVLM2-256M-Video-Instruct
    python -m eval.compare --fvlm DIR --tasks mvbench,videomme --video_root /data/videos --out results/

Both models run through `lmms_eval.evaluator.simple_evaluate` in this process, one task at a time
after one unmeasured warm-up sample,
with the same frames rule (1 fps, <= 64, spread over the video; decoded by fvlm's decoder) and the
same tasks, so the columns are comparable:
    acc            lmms-eval's aggregate, as the task reports it (its own scale; "-" for a group)
    acc all %      percent correct over all items: errors and empty answers count as wrong
    errors         samples the model could not answer (e.g. an undecodable video)
    tok/frame      visual tokens per frame (fvlm: 1; SmolVLM2-256M: 64)
    tok/sample     visual tokens per sample, mean (frames x tok/frame)
    TTFT ms        inputs decoded -> first generated token, mean (per batch; generation tasks only)
    s/sample       wall time per sample (doc), video decoding included
    weights MB     parameter memory
    peak MB        peak memory of the run above its start: CUDA max_memory_allocated, or on CPU the
                   peak RSS (VmHWM) above the RSS before the run; i.e. transient memory, not weights
Writes compare.json and compare.md to --out. The ShapesQA tasks run offline; for MVBench, Video-MME
and MLVU see eval/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

from fvlm.config import MODES

from .report import pooled, reports
from .video_root import apply_video_root

SMOLVLM_DEFAULT = "HuggingFaceTB/SmolVLM2-256M-Video-Instruct"


@dataclass
class Row:
    model: str
    task: str
    n: int
    acc: float | None
    acc_all: float
    errors: int
    tokens_per_frame: int
    tokens_per_sample: float
    ttft_ms: float
    s_per_sample: float
    weights_mb: float
    peak_mb: float


def weights_mb(module) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20


def warm_up(lm, task: str, task_manager) -> None:
    """One unmeasured sample first, so one-time costs (lazy imports, dataset loading, allocator
    growth) stay out of the timings and the memory peak."""
    from lmms_eval import evaluator

    evaluator.simple_evaluate(model=lm, tasks=[task], task_manager=task_manager, limit=1,
                              log_samples=False, bootstrap_iters=0, verbosity="WARNING")


def evaluate(lm, name: str, task: str, task_manager, limit: int | None) -> Row:
    """One model on one task (or group): lmms-eval's numbers, our all-items accuracy, the costs."""
    from lmms_eval import evaluator

    from .errors import ErrorLog
    from .stats import PeakMemory, RunStats

    lm.stats, lm.errors = RunStats(), ErrorLog(lm.name)
    with PeakMemory(lm.device) as memory:
        res = evaluator.simple_evaluate(model=lm, tasks=[task], task_manager=task_manager, limit=limit,
                                        log_samples=True, bootstrap_iters=0, verbosity="WARNING")
    rows = [r for r in reports(res, res["samples"]) if not r.task.endswith("(pooled)")]
    total = rows[0] if len(rows) == 1 and rows[0].task == task else pooled(task, rows)
    stats = list(lm.stats.tasks.values())
    first = [t for s in stats for t in s.first_token_s]
    tokens = [t for s in stats for t in s.visual_tokens]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
    return Row(
        model=name, task=task, n=total.n, acc=total.lmms_value, acc_all=total.accuracy,
        errors=len(lm.errors.errors), tokens_per_frame=lm.visual_tokens_per_frame,
        tokens_per_sample=mean(tokens), ttft_ms=1000 * mean(first),
        s_per_sample=sum(s.seconds for s in stats) / total.n if total.n else float("nan"),
        weights_mb=weights_mb(lm.model), peak_mb=memory.peak_mb,
    )


def _fmt(x, digits: int) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def markdown(rows: list[Row]) -> str:
    head = ["model", "task", "n", "acc", "acc all %", "errors", "tok/frame", "tok/sample", "TTFT ms",
            "s/sample", "weights MB", "peak MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for r in rows:
        cells = [r.model, r.task, r.n, _fmt(r.acc, 4), _fmt(r.acc_all, 1), r.errors, r.tokens_per_frame,
                 _fmt(r.tokens_per_sample, 1), _fmt(r.ttft_ms, 1), _fmt(r.s_per_sample, 3),
                 _fmt(r.weights_mb, 1), _fmt(r.peak_mb, 1)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    """Every (model, task) pair; returns {"rows", "meta"} and writes compare.json / compare.md."""
    import torch
    from lmms_eval.tasks import TaskManager

    import fvlm

    from .lmms_model import FVLM
    from .stats import PeakMemory
    from .tasks import TASKS_DIR

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - set(MODES):
        raise SystemExit(f"--modes {args.modes!r}: choose from {', '.join(MODES)}")
    task_manager = TaskManager("WARNING", include_path=[str(TASKS_DIR), *args.include_path])
    common = {"device": args.device, "dtype": args.dtype, "batch_size": args.batch_size}
    smol_rows = []
    if args.smolvlm != "none":  # first, so that missing weights fail fast
        from .smolvlm import SmolVLM2

        try:
            smol = SmolVLM2(pretrained=args.smolvlm, max_frames=args.max_frames, **common)
        except OSError as e:  # weights neither in the local HF cache nor a directory
            raise SystemExit(f"cannot load SmolVLM2 from {args.smolvlm!r}: {e}\nDownload the weights (eval/README.md), "
                             "pass a local directory, or --smolvlm none") from e
        warm_up(smol, tasks[0], task_manager)
        smol_rows = [evaluate(smol, "smolvlm2", task, task_manager, args.limit) for task in tasks]
        del smol  # free it before fvlm runs
    rows = []
    model = fvlm.load(args.fvlm)
    for mode in modes:
        lm = FVLM(model=model, mode=mode, max_frames=args.max_frames, **common)
        warm_up(lm, tasks[0], task_manager)
        rows += [evaluate(lm, f"fvlm {mode}", task, task_manager, args.limit) for task in tasks]
    device = lm.device
    rows += smol_rows
    meta = {"tasks": tasks, "limit": args.limit, "fvlm": args.fvlm or "shipped default (fvlm.load())",
            "smolvlm": args.smolvlm, "max_frames": args.max_frames, "batch_size": args.batch_size,
            "device": str(device), "dtype": args.dtype, "memory": PeakMemory(device).method,
            "torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor()}
    table = markdown(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2))
    (args.out / "compare.md").write_text(table + "\n\n" + "\n".join(f"- {k}: {v}" for k, v in meta.items()) + "\n")
    print(table)
    return {"rows": rows, "meta": meta}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.compare", description=__doc__.split("\n")[0],
                                epilog=__doc__.split("\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="shapesqa", help="comma-separated lmms-eval tasks or groups (default shapesqa)")
    p.add_argument("--fvlm", default=None, help="a saved fvlm directory (default: the shipped model)")
    p.add_argument("--modes", default=",".join(MODES), help="fvlm modes to run (default all three)")
    p.add_argument("--smolvlm", default=SMOLVLM_DEFAULT,
                   help=f"SmolVLM2 hub id (weights in the local HF cache) or directory, or 'none' (default {SMOLVLM_DEFAULT})")
    p.add_argument("--limit", type=int, default=None, help="samples per task (default all)")
    p.add_argument("--max_frames", type=int, default=None, help="frame cap for both models (default: each model's, 64)")
    p.add_argument("--batch_size", type=int, default=1, help="requests per forward pass (default 1: per-sample TTFT)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--include_path", action="append", default=[], help="extra lmms-eval task directory (repeatable)")
    p.add_argument("--video_root", default=None, help="benchmark videos laid out as under $HF_HOME (eval/README.md)")
    p.add_argument("--out", type=Path, default=Path("compare-results"), help="where to write compare.json/.md")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.video_root:
        apply_video_root(args.video_root)
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
