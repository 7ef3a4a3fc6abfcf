"""Entry point and training loop.

    python -m trainer.run --config trainer/configs/tiny.yaml [--dry-run] [--no-wandb] [--set a.b=v ...]
    torchrun --nproc_per_node=N [--nnodes M --rdzv-endpoint HOST:PORT ...] -m trainer.run --config ...

One optimizer step = grad_accum micro-batches per rank (DDP gradients sync on the last one only,
`no_sync` before; train.parallel fsdp shards the model instead of replicating it: trainer/fsdp.py).
The mode (coarse_fine / coarse_only / autoregressive) is drawn per step from train.modes with a
generator fixed by (seed, step), the same on every rank. Checkpoints every checkpoint.every_steps,
at every new best validation metric and at the end; the final model is saved to RUN/final in
fvlm's save_pretrained format.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from fvlm.errors import ConfigError, FVLMError
from fvlm.hub import save_pretrained
from fvlm.progress import Progress
from fvlm.vlm import param_group

from . import checkpoint as ckpt
from . import dist as D
from . import fsdp, objectives
from .build import build_model, build_tokenizer, freeze, speedups
from .config import Config, load_config, to_yaml
from .data import Decoder, EvalStream, TrainStream, advance, expand_shards, loader, skipped_counts
from .dpo import reference_model
from .evaluate import evaluate, evaluate_objects
from .flops import sample_flops, samples_for_budget
from .heads import TrainModule
from .logger import RunLogger, line
from .optim import build_optimizer, set_lrs, warmup_steps

# Test-only fault injection: SIGKILL this process right after optimizer step N (0 = never).
KILL_AT_STEP = int(os.environ.get("FVLM_TRAINER_KILL_AT_STEP", "0"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m trainer.run", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="a YAML file (see trainer/configs/)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set data.batch_size=4 (repeatable)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print one batch's shapes, steps, batch size, parameters and FLOPs, then exit",
    )
    p.add_argument("--no-wandb", action="store_true", help="do not log to wandb")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
    except FVLMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    dist = D.init()
    try:
        return Trainer(cfg, args, dist).run()
    except FVLMError as e:  # found once data, model or checkpoint are read: bad shards, a wrong world size
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        D.close(dist)


def pick_mode(cfg: Config, step: int) -> str:
    """The mode of optimizer step `step`: same on every rank and after a resume."""
    probs = cfg.mode_probs
    if len(probs) == 1:
        return next(iter(probs))
    digest = hashlib.sha256(f"mode-{cfg.run.seed}-{step}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    for mode, p in probs.items():
        u -= p
        if u < 0:
            return mode
    return mode


def autocast_factory(cfg: Config, device: torch.device):
    """bf16 autocast on CUDA (dtype auto/bf16), fp16 with a grad scaler, fp32 otherwise."""
    dtype = cfg.train.dtype
    if dtype == "auto":
        dtype = "bf16" if device.type == "cuda" else "fp32"
    if dtype == "fp16" and device.type != "cuda":
        raise ConfigError("config key 'train.dtype': fp16 needs CUDA; use fp32 or bf16")
    if dtype == "fp32":
        return contextlib.nullcontext, dtype
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float16
    return (lambda: torch.autocast(device.type, dtype=torch_dtype)), dtype


def tied_names(module: torch.nn.Module) -> set[str]:
    """Names not to save of parameters shared by several names (e.g. lm_head = embeddings): all but
    the alphabetically first, the one safetensors' save_model keeps."""
    names_of: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(p), []).append(name)
    return {n for names in names_of.values() for n in sorted(names)[1:]}


class Trainer:
    def __init__(self, cfg: Config, args: argparse.Namespace, dist: D.Dist):
        self.cfg, self.args, self.dist = cfg, args, dist
        self.run_dir = Path(cfg.run.out_dir)
        self.dpo = cfg.loss.type == "dpo"

    # ---- setup ------------------------------------------------------------------------------------
    def _resume_dir(self) -> Path | None:
        r = self.cfg.checkpoint.resume
        if r == "never" or self.args.dry_run:
            return None
        if r == "auto":
            return ckpt.latest(self.run_dir)
        path = Path(r)
        ckpt.load_state(path)  # a clear error if it is not a checkpoint
        return path

    def setup(self) -> None:
        cfg, dist = self.cfg, self.dist
        if dist.main and not self.args.dry_run:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.remove_partial(self.run_dir)
            (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
        D.barrier(dist)
        self.resume_dir = self._resume_dir()
        self.tokenizer = build_tokenizer(cfg, self.resume_dir)
        model = build_model(cfg, self.tokenizer)
        self.reference = reference_model(model).to(dist.device) if self.dpo else None
        freeze(model, cfg)
        self.module = TrainModule(model, cfg.loss).to(dist.device)  # the model + training-only heads
        self.model, self.heads = self.module.model, self.module.heads
        self.autocast, dtype = autocast_factory(cfg, dist.device)
        self.fsdp = cfg.train.parallel == "fsdp" and dist.enabled  # one process: nothing to shard
        if self.fsdp:
            self.aliases = tied_names(self.module)
            fsdp.shard(self.module, dtype)  # before the optimizer: it must hold the sharded parameters
        self.optimizer = build_optimizer(self.model, cfg.optim, self.heads)
        self.scaler = torch.amp.GradScaler("cuda", enabled=dtype == "fp16")
        self.state = ckpt.TrainState()
        if self.resume_dir is not None and self.fsdp:
            ckpt.check_parallel(self.resume_dir, sharded=True)
            fsdp.load_shards(self.module, self.optimizer, self.resume_dir / ckpt.SHARDS_NAME)
            self.state, rng = ckpt.load_state(self.resume_dir), ckpt.load_rng(self.resume_dir)
        elif self.resume_dir is not None:
            self.state, rng = ckpt.restore(self.resume_dir, self.model, self.optimizer, self.heads)
        if self.resume_dir is not None:
            if len(rng) != dist.world:
                raise ConfigError(
                    f"{self.resume_dir} was written by {len(rng)} processes, this run has "
                    f"{dist.world}: resume with the same number of processes"
                )
            if self.state.scaler:
                self.scaler.load_state_dict(self.state.scaler)
            torch.set_rng_state(rng[dist.rank]["cpu"])
            if "cuda" in rng[dist.rank] and dist.device.type == "cuda":
                torch.cuda.set_rng_state(rng[dist.rank]["cuda"], dist.device)

        self.flops = sample_flops(cfg, model.config.vision, model.config.llm)
        total = cfg.train.total_samples
        if total is None:
            total = samples_for_budget(cfg.flops.budget, self.flops["total"])
        self.effective_batch = cfg.data.batch_size * cfg.train.grad_accum * dist.world
        self.total_samples = total
        self.total_steps = max(1, total // self.effective_batch)

        # validation decodes object targets only for stage 0, which validates the object head
        self.decoder = Decoder(model.config, self.tokenizer, cfg.text_loss, self.dpo, cfg.stage == 0)
        targets = cfg.loss.object_weight > 0 or cfg.loss.gaze_weight > 0
        train_decoder = Decoder(model.config, self.tokenizer, cfg.text_loss, self.dpo, targets)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        positions = self.state.positions
        position = positions[dist.rank] if positions else None
        self.dataset = TrainStream(
            cfg.data, train_decoder, self.pad_id, cfg.run.seed, dist.rank, dist.world, position
        )
        self.position = copy.deepcopy(self.dataset.position)
        self.val_shards = (
            expand_shards(cfg.data.val_shards, "data.val_shards") if cfg.data.val_shards is not None else None
        )

    def _train_loader(self):
        d = self.cfg.data
        return loader(self.dataset, d.num_workers, d.prefetch_factor, self.dist.device.type == "cuda")

    def _val_loader(self):
        d = self.cfg.data
        ds = EvalStream(
            self.val_shards,
            self.decoder,
            d.batch_size,
            self.pad_id,
            self.dist.rank,
            self.dist.world,
            d.num_workers,
            self.cfg.eval.max_samples,
        )
        return loader(ds, d.num_workers, d.prefetch_factor, self.dist.device.type == "cuda")

    # ---- dry run --------------------------------------------------------------------------------
    def dry_run(self) -> int:
        cfg = self.cfg
        tb = next(iter(self._train_loader()))
        b = tb.batch
        print(f"config: {self.args.config}  stage {cfg.stage}  loss {cfg.loss.type}  modes {cfg.mode_probs}")
        print(f"batch ({tb.kind}, {tb.size} {'pairs' if self.dpo else 'samples'}):")
        for name in ("pixel_values", "frame_mask", "prefix_ids", "suffix_ids"):
            print(f"  {name:13s} {list(getattr(b, name).shape)}")
        print(f"  frames per sample {b.num_frames.tolist()}")
        print(
            f"total samples {self.total_samples}  total steps {self.total_steps}  "
            f"warmup steps {warmup_steps(self.total_steps, cfg.optim)}"
        )
        print(
            f"effective batch {self.effective_batch} = {cfg.data.batch_size} x grad_accum "
            f"{cfg.train.grad_accum} x {self.dist.world} ranks"
            + ("  (nominal: dynamic batching)" if cfg.data.dynamic_batch else "")
        )
        counts = self.model.num_parameters_by_group()
        trainable: dict[str, int] = {}
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                trainable[param_group(name)] = trainable.get(param_group(name), 0) + p.numel()
        for g in ("connector", "dino", "llm"):
            print(f"params {g:9s} {counts.get(g, 0):>13,d}  trainable {trainable.get(g, 0):>13,d}")
        f = self.flops
        print(
            f"forward FLOPs per sample ({cfg.flops.avg_frames:g} frames, {cfg.flops.avg_text_tokens} "
            f"text tokens, {cfg.main_mode}): {f['total']:.3e}  ("
            + ", ".join(f"{k} {v:.2e}" for k, v in f.items() if k != "total")
            + ")"
        )
        print(f"training FLOPs (3x forward x samples): {3 * f['total'] * self.total_samples:.3e}")
        return 0

    # ---- the loop -------------------------------------------------------------------------------
    def run(self) -> int:
        self.setup()
        if self.args.dry_run:
            return self.dry_run() if self.dist.main else 0
        cfg, dist = self.cfg, self.dist
        speedups(self.model, cfg)
        net: torch.nn.Module = self.module
        # unused: DINO (text-only batches), llm_to_query/q_init (coarse_only), LLM (stage 0)
        if dist.enabled and not self.fsdp:
            net = DDP(
                net,
                device_ids=[dist.local_rank] if dist.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        self.net = net
        resumed_step = self.state.step if self.resume_dir is not None else None
        self.logger = (
            RunLogger(cfg, self.run_dir, resumed_step, not self.args.no_wandb) if dist.main else None
        )
        self.keys_file = self._keys_file(resumed_step)
        if dist.main:
            where = (
                f"resumed from {self.resume_dir} at step {self.state.step}"
                if self.resume_dir
                else "fresh start"
            )
            print(
                f"[trainer] {cfg.run.name}: {self.total_steps} steps x {self.effective_batch} samples, "
                f"{where}, device {dist.device}, world {dist.world}",
                flush=True,
            )
        try:
            self._loop()
        finally:
            if self.keys_file is not None:
                self.keys_file.close()
            if self.logger is not None:
                self.logger.close()
        return 0

    def _keys_file(self, resumed_step: int | None):
        if not self.cfg.log.sample_keys:
            return None
        path = self.run_dir / f"samples_rank{self.dist.rank}.jsonl"
        kept = []
        if resumed_step is not None and path.is_file():
            kept = [r for r in path.read_text().splitlines() if json.loads(r)["step"] <= resumed_step]
        path.write_text("".join(r + "\n" for r in kept))
        return open(path, "a")

    def _loop(self) -> None:
        """nanoGPT-style: per step, grad_accum micro-batches (DDP syncs on the last), clip, step,
        reduce the sums over ranks, log, evaluate, save."""
        cfg, dist, st = self.cfg, self.dist, self.state
        accum = cfg.train.grad_accum
        trainable = [p for p in self.module.parameters() if p.requires_grad]
        batches = iter(self._train_loader())
        self.clock = (time.time(), st.samples, st.wall_time)  # start time, samples and earlier wall time
        bar = Progress(self.total_steps, cfg.run.name, initial=st.step, unit="steps", disable=not dist.main)
        last_train: dict[str, Any] = {}
        last_eval: dict[str, Any] = {}
        while st.step < self.total_steps:
            mode = pick_mode(cfg, st.step)
            log_now = (st.step + 1) % cfg.log.every_steps == 0 or st.step + 1 == self.total_steps
            sums = dict.fromkeys(objectives.sum_names(cfg), 0.0)
            for micro in range(accum):
                tb = self._next_batch(batches, micro)
                sync = not dist.enabled or micro == accum - 1
                if self.fsdp:  # FSDP accumulates unsharded gradients until the last micro-batch
                    self.net.set_requires_gradient_sync(sync)
                with contextlib.nullcontext() if sync or self.fsdp else self.net.no_sync():
                    with self.autocast():
                        loss, parts = self._objective(tb, mode, measure=log_now)
                    self.scaler.scale(loss / accum).backward()
                objectives.add(sums, {"loss": float(loss.detach()), "samples": tb.size,
                                      "text_batches": float(tb.kind == "text"), **parts})
            if self.fsdp:
                fsdp.drop_unused(trainable)
            self.scaler.unscale_(self.optimizer)
            grad_norm = fsdp.grad_norm(torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.grad_clip))
            lrs = set_lrs(self.optimizer, st.step, self.total_steps, cfg.optim)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            reduced = D.all_reduce_sum(dist, torch.tensor(list(sums.values()), dtype=torch.float64))
            sums = dict(zip(sums, reduced.tolist()))
            st.step += 1
            st.samples += int(sums["samples"])
            bar.update(1)
            if log_now:
                last_train = self._log(sums, grad_norm, lrs, bar)
            done = st.step == self.total_steps
            improved = False
            if self.val_shards is not None and (st.step % cfg.eval.every_steps == 0 or done):
                last_eval = self._evaluate()
                improved = self._update_best(last_eval)
            if improved or done or st.step % cfg.checkpoint.every_steps == 0:
                st.wall_time = self.clock[2] + time.time() - self.clock[0]
                self._save()
            if st.step == KILL_AT_STEP:  # fault injection for the resume tests: a hard crash here
                os.kill(os.getpid(), signal.SIGKILL)
        bar.close()
        self._finish(last_train, last_eval)

    def _next_batch(self, batches, micro: int):
        """The next training batch; advances the data position and records its sample keys."""
        tb = next(batches)
        advance(self.position, tb)
        if self.keys_file is not None:
            row = {"step": self.state.step + 1, "micro": micro, "kind": tb.kind, "keys": tb.keys}
            self.keys_file.write(json.dumps(row) + "\n")
            self.keys_file.flush()
        return tb

    def _objective(self, tb, mode: str, measure: bool) -> tuple[torch.Tensor, objectives.Sums]:
        """The stage's objective of one micro-batch (trainer/objectives.py). measure: also the coarse
        loss (a logged step of foveated coarse_fine training)."""
        cfg, device = self.cfg, self.dist.device
        batch = tb.batch.to(device)
        objects = None if tb.objects is None else tb.objects.to(device)
        target = None if tb.target is None else tb.target.to(device)
        if cfg.stage == 0:
            return objectives.vision(self.net, batch, objects)
        if self.dpo:
            return objectives.dpo(self.net, self.reference, batch, mode, cfg.loss.beta)
        measure = measure and self.model.architecture == "foveated" and mode == "coarse_fine"
        return objectives.ce(self.net, batch, mode, objects, target, measure)

    def _log(self, sums: objectives.Sums, grad_norm: float, lrs: dict[str, float], bar) -> dict[str, Any]:
        """The train metrics of the step just taken (reduced sums); logged and printed on rank 0."""
        dist, st = self.dist, self.state
        start_time, start_samples, start_wall = self.clock
        elapsed = time.time() - start_time
        m = {
            "samples": st.samples,
            "epoch": min(w["epoch"] for w in self.position["workers"]),
            "wall_time": start_wall + elapsed,
            "grad_norm": grad_norm,
            **{f"lr_{g}": v for g, v in lrs.items()},
            "samples_per_s": (st.samples - start_samples) / max(elapsed, 1e-9),
            "gpu_mem_gb": (torch.cuda.max_memory_allocated(dist.device) / 1e9
                           if dist.device.type == "cuda" else 0.0),
            "skipped_samples": self._skipped(),
            "text_batches": int(sums["text_batches"]),
            **objectives.metrics(sums, self.cfg.train.grad_accum * dist.world, self.cfg.stage),
        }
        if dist.main:
            self.logger.log("train", st.step, m)
            bar.write(line(st.step, self.total_steps, m), sys.stdout)
        if not math.isfinite(m["loss"]):
            raise FloatingPointError(f"loss is {m['loss']} at step {st.step}")
        return m

    def _skipped(self) -> int:
        local = torch.tensor([sum(skipped_counts(self.position).values())], dtype=torch.float64)
        return int(D.all_reduce_sum(self.dist, local)[0])

    def _evaluate(self) -> dict[str, Any]:
        with fsdp.gathered(self.module) if self.fsdp else contextlib.nullcontext():
            if self.cfg.stage == 0:
                metrics = evaluate_objects(self.module, self._val_loader(), self.dist, self.autocast)
            else:
                heatmaps = self.run_dir / "heatmaps" / ckpt.step_name(self.state.step)
                metrics = evaluate(
                    self.model, self.reference, self.cfg, self._val_loader(), self.dist, self.autocast, heatmaps
                )
        if self.dist.main:
            self.logger.log("eval", self.state.step, metrics)
            shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
            print(f"[eval] step {self.state.step}: {shown}", flush=True)
        return metrics

    def _update_best(self, metrics: dict[str, Any]) -> bool:
        """Best is chosen on the validation metric only (never a training batch's loss)."""
        value = metrics["val_dpo_loss"] if self.dpo else metrics["val_loss"]
        st = self.state
        if value is None or (st.best_metric is not None and value >= st.best_metric):
            return False
        st.best_metric, st.best_step = value, st.step
        return True

    def _save(self) -> None:
        dist, st = self.dist, self.state
        st.positions = D.all_gather(dist, self.position)
        st.scaler = self.scaler.state_dict() if self.scaler.is_enabled() else {}
        rng = {"cpu": torch.get_rng_state()}
        if dist.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(dist.device)
        rngs = D.all_gather(dist, rng)
        weights = {}
        if self.fsdp:  # every rank writes its shards into the staging dir; rank 0 renames it when complete
            if dist.main:
                ckpt.staging_dir(self.run_dir, st.step)
            D.barrier(dist)
            staged = ckpt.staging_dir(self.run_dir, st.step, fresh=False)
            fsdp.save_shards(self.module, self.optimizer, staged / ckpt.SHARDS_NAME)
            weights = self._gathered()
        if dist.main:
            ckpt.save(self.run_dir, self.model, None if self.fsdp else self.optimizer, st, rngs,
                      self.cfg.checkpoint.keep_last, heads=self.heads, weights=weights)
        D.barrier(dist)

    def _gathered(self) -> dict[str, dict[str, torch.Tensor]]:
        """FSDP: the full weights by part ("model", each head's name) on rank 0, {} on the others.
        Every rank must call it. Tied weights are kept once, as save_pretrained keeps them."""
        parts: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in fsdp.full_weights(self.module).items():
            if key not in self.aliases:
                part, _, name = key.partition(".")
                parts.setdefault(part, {})[name] = tensor
        return parts

    def _finish(self, last_train: dict[str, Any], last_eval: dict[str, Any]) -> None:
        dist, st = self.dist, self.state
        weights = self._gathered() if self.fsdp else {}
        if not dist.main:
            return
        final_dir = self.run_dir / "final"
        save_pretrained(self.model, final_dir, weights.get("model"))  # the model alone: heads are training-only
        best = {
            "metric": "val_dpo_loss" if self.dpo else "val_loss",
            "value": st.best_metric,
            "step": st.best_step,
        }
        final = {"step": st.step, **last_train, **last_eval}
        path = self.logger.summary(self.args.config, final, best, st.step, st.samples, st.wall_time)
        print(
            f"[trainer] done: {st.step} steps, {st.samples} samples; model in {final_dir}; summary {path}",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
