"""Checkpoints: atomic, loadable as models, resumable exactly.

    RUN/checkpoints/step_0000100/        a complete checkpoint (appears only by rename)
        config.json, model.safetensors,  fvlm.hub.save_pretrained: `fvlm generate --model` works
        tokenizer files
        object_head.safetensors          the training-only object head (loss.object_weight > 0;
                                         trainer/heads.py), never in model.safetensors
        optimizer.pt                     AdamW state (tensors only; read with weights_only=True)
        shards/                          instead of optimizer.pt with train.parallel fsdp: model, head
                                         and AdamW state, one file per rank (torch.distributed.checkpoint;
                                         trainer/fsdp.py); model.safetensors is then the gathered model
        rng.pt                           every rank's torch CPU (and CUDA) RNG state
        trainer_state.json               step, samples, schedule step, grad-scaler state, every
                                         rank's data position, best metric so far, wall time
    RUN/checkpoints/.tmp-step_0000100/   being written; renamed when complete, removed at start
    RUN/checkpoints/best -> step_...     symlink to the best checkpoint on *validation*

Pruning keeps the last `keep_last` checkpoints and the best one. Only rank 0 writes, except
shards/, which every rank writes into the staging directory (`staging_dir`) before rank 0's `save`.
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
SHARDS_NAME = "shards"


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


def staging_dir(run_dir: Path, step: int, fresh: bool = True) -> Path:
    """Where checkpoint `step` is written before it appears by rename; fresh: emptied first."""
    tmp = checkpoint_dir(run_dir) / f"{TMP_PREFIX}{step_name(step)}"
    if fresh:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    return tmp


def save(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: TrainState,
    rng: list[dict[str, torch.Tensor]],
    keep_last: int,
    heads: dict[str, torch.nn.Module] | None = None,
    weights: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write checkpoint `state.step` atomically, update `best`, prune. Returns its directory.
    heads: the training-only modules by name, each saved as NAME.safetensors beside the model.
    FSDP: optimizer None (its state is already in the staging dir's shards/) and weights the
    gathered state dicts by name ("model" and each head's name) instead of the modules' own."""
    root = checkpoint_dir(run_dir)
    final = root / step_name(state.step)
    tmp = staging_dir(run_dir, state.step, fresh=optimizer is not None)
    weights = weights or {}
    save_pretrained(model, tmp, weights.get("model"))
    for name, head in (heads or {}).items():
        sd = weights.get(name) or head.state_dict()
        save_file({k: v.detach().contiguous() for k, v in sd.items()}, str(tmp / f"{name}.safetensors"))
    if optimizer is not None:
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
        if f.is_dir() and f != path:
            _fsync_dir(f)
            continue
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


def check_parallel(path: Path, sharded: bool) -> None:
    """A checkpoint resumes with the parallelism that wrote it (shards/ only with fsdp)."""
    if (Path(path) / SHARDS_NAME).is_dir() != sharded:
        written, this = ("fsdp", "ddp") if not sharded else ("ddp", "fsdp")
        raise CheckpointError(f"{path} was written with train.parallel {written}, this run uses {this}: "
                              f"resume it with train.parallel {written}")


def load_rng(path: Path) -> list[dict[str, torch.Tensor]]:
    """Every rank's RNG states, in rank order."""
    return torch.load(Path(path) / RNG_NAME, map_location="cpu", weights_only=True)


def restore(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            heads: dict[str, torch.nn.Module] | None = None) -> tuple[TrainState, list]:
    """Load model, head and optimizer state from a checkpoint dir; returns its state and RNG states."""
    path = Path(path)
    state = load_state(path)
    check_parallel(path, sharded=False)
    load_weights(model, read_weights(path / WEIGHTS_NAME), source=str(path / WEIGHTS_NAME))
    heads = heads or {}
    has_head = "object_head" in heads
    if has_head != (path / HEAD_NAME).is_file():
        raise CheckpointError(
            f"{path} was written {'without' if has_head else 'with'} loss.object_weight > 0: "
            "resume it with the same loss.object_weight setting"
        )
    for name, head in heads.items():
        source = f"{path / name}.safetensors (resume with the loss settings of the run that wrote it)"
        load_weights(head, read_weights(path / f"{name}.safetensors"), source=source)
    optimizer.load_state_dict(torch.load(path / OPTIMIZER_NAME, map_location="cpu", weights_only=True))
    return state, load_rng(path)
