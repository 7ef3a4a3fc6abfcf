"""Checkpoints: atomic, loadable as models, resumable exactly.

    RUN/checkpoints/step_0000100/        a complete checkpoint (appears only by rename)
        config.json, model.safetensors,  fvlm.hub.save_pretrained: `fvlm generate --model` works
        tokenizer files
        object_head.safetensors          the training-only object head (loss.object_weight > 0;
                                         trainer/heads.py), never in model.safetensors
        optimizer.pt                     AdamW state (tensors only; read with weights_only=True)
        rng.pt                           every rank's torch CPU (and CUDA) RNG state
        trainer_state.json               step, samples, schedule step, grad-scaler state, every
                                         rank's data position, best metric so far, wall time
    RUN/checkpoints/.tmp-step_0000100/   being written; renamed when complete, removed at start
    RUN/checkpoints/best -> step_...     symlink to the best checkpoint on *validation*

Pruning keeps the last `keep_last` checkpoints and the best one. Only rank 0 writes.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from fvlm.errors import CheckpointError
from fvlm.hub import WEIGHTS_NAME, load_weights, read_weights, save_pretrained

STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.pt"
RNG_NAME = "rng.pt"
PREFIX = "step_"
TMP_PREFIX = ".tmp-"
HEAD_NAME = "object_head.safetensors"  # TrainModule.heads["object_head"], saved beside the model


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    samples: int = 0  # samples trained on, all ranks
    wall_time: float = 0.0  # seconds of training before this process (earlier runs)
    best_metric: float | None = None  # best validation metric so far (lower is better)
    best_step: int | None = None
    positions: list[dict] = field(default_factory=list)  # per rank: trainer.data position
    scaler: dict[str, Any] = field(default_factory=dict)  # GradScaler state (fp16 only)


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_name(step: int) -> str:
    return f"{PREFIX}{step:07d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are never listed)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and p.name.startswith(PREFIX)]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def latest(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def remove_partial(run_dir: Path) -> None:
    """Delete temporary directories left by a run killed while saving."""
    root = checkpoint_dir(run_dir)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p)


def save(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    rng: list[dict[str, torch.Tensor]],
    keep_last: int,
    heads: dict[str, torch.nn.Module] | None = None,
) -> Path:
    """Write checkpoint `state.step` atomically, update `best`, prune. Returns its directory.
    heads: the training-only modules by name, each saved as NAME.safetensors beside the model."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_name(state.step)
    tmp = root / f"{TMP_PREFIX}{final.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_pretrained(model, tmp)
    for name, head in (heads or {}).items():
        weights = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
        save_file(weights, str(tmp / f"{name}.safetensors"))
    torch.save(optimizer.state_dict(), tmp / OPTIMIZER_NAME)
    torch.save(rng, tmp / RNG_NAME)
    (tmp / STATE_NAME).write_text(json.dumps(asdict(state), indent=1))
    _fsync_dir(tmp)
    if final.exists():  # the same step saved again (e.g. a final save after a best save)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    if state.best_step is not None and (root / step_name(state.best_step)).is_dir():
        _point(root / "best", step_name(state.best_step))
    _prune(root, keep_last, state.best_step)
    return final


def _fsync_dir(path: Path) -> None:
    for f in [*path.iterdir(), path] if path.is_dir() else [path]:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _point(link: Path, target: str) -> None:
    """Atomically make `link` a symlink to `target` (a sibling name)."""
    tmp = link.with_name(f"{TMP_PREFIX}{link.name}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _prune(root: Path, keep_last: int, best_step: int | None) -> None:
    found = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and p.name.startswith(PREFIX)),
        key=lambda p: int(p.name[len(PREFIX) :]),
    )
    keep = {p.name for p in found[-keep_last:]}
    if best_step is not None:
        keep.add(step_name(best_step))
    for p in found:
        if p.name not in keep:
            shutil.rmtree(p)


def load_state(path: Path) -> TrainState:
    path = Path(path)
    if not (path / STATE_NAME).is_file():
        raise CheckpointError(f"{path} is not a trainer checkpoint (no {STATE_NAME})")
    return TrainState(**json.loads((path / STATE_NAME).read_text()))


def restore(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            heads: dict[str, torch.nn.Module] | None = None) -> tuple[TrainState, list]:
    """Load model, head and optimizer state from a checkpoint dir; returns its state and RNG states."""
    path = Path(path)
    state = load_state(path)
    load_weights(model, read_weights(path / WEIGHTS_NAME), source=str(path / WEIGHTS_NAME))
    heads = heads or {}
    has_head = "object_head" in heads
    if has_head != (path / HEAD_NAME).is_file():
        raise CheckpointError(
            f"{path} was written {'without' if has_head else 'with'} loss.object_weight > 0: "
            "resume it with the same loss.object_weight setting"
        )
    for name, head in heads.items():
        head.load_state_dict(read_weights(path / f"{name}.safetensors"))
    optimizer.load_state_dict(torch.load(path / OPTIMIZER_NAME, map_location="cpu", weights_only=True))
    rng = torch.load(path / RNG_NAME, map_location="cpu", weights_only=True)
    return state, rng
