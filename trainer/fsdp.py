"""FSDP2 (torch.distributed.fsdp.fully_shard): parameters, gradients and AdamW state sharded over the
ranks, for models whose training state one device cannot hold (train.parallel: fsdp).

    shard(module, dtype)              the TrainModule (model + object head) as one FSDP unit
    gathered(module)                  the full weights on every rank for a while (validation)
    save_shards / load_shards         model + heads + optimizer through torch.distributed.checkpoint:
                                      each rank writes and reads its own part
    full_weights(module)              the whole state dict gathered on rank 0 (for model.safetensors)

Between steps every rank holds 1/world of the fp32 weights, gradients and AdamW moments; the
weights are gathered once at the start of each micro-batch's forward and the gradients
reduce-scattered once at the end of its backward. One unit, not one per transformer block: how
often the model runs the LLM depends on the micro-batch (once for a text-only batch, twice in
coarse_fine, once per frame in autoregressive) and DINO's layers are walked part by part by the
foveated encoder, so per-block units would issue a different number of collectives on different
ranks and hang. Parameters a rank did not use get zero gradients (reduce_scatter_unused_params),
as DDP's find_unused_parameters gives; `drop_unused` then sets the gradients that are zero on every
rank (a parameter no rank used in the step, e.g. llm_to_query in a coarse_only step) to None, as DDP
and a single process leave them, so AdamW skips them instead of stepping them with zero gradients.

Mixed precision: with bf16 the gathered parameters are bf16 and gradients are reduced in fp32; the
trainer's autocast stays on around the forward, so the ops autocast keeps in fp32 stay in fp32 as
under DDP. fp32 runs (CPU) gather and reduce in fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as td
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor


def shard(module: nn.Module, dtype: str) -> None:
    """Shard `module` (the TrainModule) in place over the default process group. dtype: the
    trainer's resolved dtype (bf16 | fp32). Build the optimizer afterwards."""
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if dtype == "bf16" \
        else MixedPrecisionPolicy()
    fully_shard(module, mp_policy=mp)
    module.set_reduce_scatter_unused_params(True)


@contextlib.contextmanager
def gathered(module: nn.Module) -> Iterator[None]:
    """The full weights on every rank for the duration (validation: each rank runs the inner model
    on its own share of the set and rank 0 alone draws heatmaps, so no collective may happen inside
    a forward). Every rank must enter it; the weights are resharded on exit."""
    module.unshard()
    try:
        yield
    finally:
        module.reshard()


def drop_unused(params: list[nn.Parameter]) -> None:
    """After backward: gradient None for every parameter whose gradient is zero on all ranks (one
    all-reduce of a flag per parameter)."""
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return
    local = [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad for p in with_grad]
    used = torch.stack([(g != 0).any() for g in local]).float()  # [n] this rank's shards
    td.all_reduce(used, op=td.ReduceOp.MAX)
    for p, u in zip(with_grad, used.tolist()):
        if not u:
            p.grad = None


def grad_norm(total: torch.Tensor) -> float:
    """clip_grad_norm_'s total norm over all shards as a float."""
    return float(total.full_tensor() if isinstance(total, DTensor) else total)


def save_shards(module: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Every rank writes its part of the model, heads and optimizer state under `path` (collective)."""
    model_sd, optim_sd = get_state_dict(module, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(path))


def load_shards(module: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Read what save_shards wrote, each rank its part, into the sharded module and optimizer."""
    model_sd, optim_sd = get_state_dict(module, optimizer)  # AdamW state for every parameter (zeros)
    saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    # parameters never stepped before the checkpoint have no AdamW state: leave them without
    optim_sd["state"] = {k: v for k, v in optim_sd["state"].items() if f"optimizer.state.{k}.step" in saved}
    state = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(strict=False))
    for name, p in module.named_parameters():
        if f"optimizer.state.{name}.step" not in saved:
            optimizer.state.pop(p, None)


def full_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on CPU on rank 0 ({} on the others); every rank must call it."""
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
