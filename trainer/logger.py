"""Run logging on the main rank: a CSV per run, wandb (optional), the stdout line, run_summary.json.

- RUN/metrics.csv: one row per event ("train" every log.every_steps, "eval"), fixed columns,
  header written once. On resume, rows after the checkpoint's step are dropped first, so the file
  reads as one uninterrupted run.
- wandb: imported lazily; `log.wandb.enabled: false`, `--no-wandb`, WANDB_MODE=disabled or
  wandb not installed all just skip it; WANDB_MODE=offline / log.wandb.mode: offline work without
  a network. The wandb run id is kept in RUN/wandb_id so a resumed run continues the same run.
- RUN/run_summary.json: git hash, config path, final and best metrics, steps, samples, wall time.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .config import Config, to_dict

COLUMNS = [
    "event",
    "step",
    "samples",
    "epoch",
    "wall_time",
    "loss",
    "loss_fine",
    "loss_coarse",
    "loss_ratio",
    "grad_norm",
    "lr_connector",
    "lr_dino",
    "lr_llm",
    "samples_per_s",
    "gpu_mem_gb",
    "skipped_samples",
    "text_batches",
    "loss_objects",
    "object_shape_acc",
    "object_color_acc",
    "object_position_acc",
    "loss_gaze",
    "gaze_mass",
    "loss_token",
    "token_shape_acc",
    "token_color_acc",
    "token_position_acc",
    "loss_look",
    "look_mass",
    "dpo_reward_acc",
    "dpo_margin",
    "dpo_chosen_reward",
    "dpo_rejected_reward",
    "val_loss",
    "val_loss_fine",
    "val_loss_coarse",
    "val_loss_ratio",
    "val_entropy_fine",
    "val_entropy_coarse",
    "val_dpo_loss",
    "val_reward_acc",
    "val_reward_margin",
    "val_object_shape_acc",
    "val_object_color_acc",
    "val_samples",
]
CSV_NAME = "metrics.csv"


class RunLogger:
    def __init__(self, cfg: Config, run_dir: Path, resume_step: int | None, use_wandb: bool):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.csv_path = self.run_dir / CSV_NAME
        self._prepare_csv(resume_step)
        self.wandb = self._init_wandb() if use_wandb and cfg.log.wandb.enabled else None

    # ---- CSV ------------------------------------------------------------------------------------
    def _prepare_csv(self, resume_step: int | None) -> None:
        rows: list[dict[str, str]] = []
        if resume_step is not None and self.csv_path.is_file():
            with open(self.csv_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        tmp = self.csv_path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.csv_path)

    def log(self, event: str, step: int, metrics: dict[str, Any]) -> None:
        unknown = set(metrics) - set(COLUMNS)
        if unknown:
            raise KeyError(f"metrics without a CSV column: {sorted(unknown)}")
        row = {"event": event, "step": step, **{k: _fmt(v) for k, v in metrics.items()}}
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writerow(row)
        if self.wandb is not None:
            self.wandb.log({f"{event}/{k}": v for k, v in metrics.items() if v is not None}, step=step)

    # ---- wandb ----------------------------------------------------------------------------------
    def _init_wandb(self):
        w = self.cfg.log.wandb
        mode = w.mode or os.environ.get("WANDB_MODE", "online")
        if mode == "disabled":
            return None
        try:
            import wandb
        except ImportError:
            print("[log] wandb is not installed: logging to CSV only", file=sys.stderr)
            return None
        id_file = self.run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else wandb.util.generate_id()
        id_file.write_text(run_id)
        return wandb.init(
            project=w.project,
            name=w.name or self.cfg.run.name,
            id=run_id,
            resume="allow",
            config=to_dict(self.cfg),
            dir=str(self.run_dir),
            mode=mode,
        )

    # ---- end of run -----------------------------------------------------------------------------
    def summary(
        self,
        config_path: str,
        final: dict[str, Any],
        best: dict[str, Any],
        steps: int,
        samples: int,
        wall_time: float,
    ) -> Path:
        data = {
            "run": self.cfg.run.name,
            "git_hash": git_hash(),
            "config_path": str(config_path),
            "final": final,
            "best": best,
            "steps": steps,
            "samples": samples,
            "wall_time_s": round(wall_time, 2),
            "csv": str(self.csv_path),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        path = self.run_dir / "run_summary.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
        return path

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def line(step: int, total: int, m: dict[str, Any]) -> str:
    """The stdout line of a train log event."""
    parts = [f"step {step}/{total}", f"loss {m['loss']:.4f}"]
    if m.get("loss_coarse") is not None:
        parts.append(f"fine {m['loss_fine']:.4f} coarse {m['loss_coarse']:.4f} ratio {m['loss_ratio']:.3f}")
    if m.get("loss_objects") is not None:
        where = f" where {m['object_position_acc']:.2f}" if m.get("object_position_acc") is not None else ""
        parts.append(f"objects {m['loss_objects']:.3f} (shape {m['object_shape_acc']:.2f} "
                     f"colour {m['object_color_acc']:.2f}{where})")
    if m.get("loss_gaze") is not None:
        parts.append(f"gaze {m['loss_gaze']:.3f} (mass {m['gaze_mass']:.2f})")
    if m.get("loss_token") is not None:
        where = f" where {m['token_position_acc']:.2f}" if m.get("token_position_acc") is not None else ""
        parts.append(f"token {m['loss_token']:.3f} (shape {m['token_shape_acc']:.2f} "
                     f"colour {m['token_color_acc']:.2f}{where})")
    if m.get("loss_look") is not None:
        parts.append(f"look {m['loss_look']:.3f} (mass {m['look_mass']:.2f})")
    if m.get("dpo_reward_acc") is not None:
        parts.append(f"reward acc {m['dpo_reward_acc']:.2f} margin {m['dpo_margin']:.3f}")
    lrs = " ".join(
        f"{g} {m[f'lr_{g}']:.2e}" for g in ("connector", "dino", "llm") if m.get(f"lr_{g}") is not None
    )
    parts += [f"lr {lrs}", f"gnorm {m['grad_norm']:.3f}", f"{m['samples_per_s']:.1f} samples/s"]
    if m.get("gpu_mem_gb"):
        parts.append(f"{m['gpu_mem_gb']:.1f} GB")
    if m.get("skipped_samples"):
        parts.append(f"skipped {m['skipped_samples']}")
    return " | ".join(parts)


def _fmt(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    return v


def git_hash() -> str | None:
    """The commit of the trainer's checkout (None outside git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            check=False,
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
