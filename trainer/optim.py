"""AdamW with connector / dino / llm parameter groups, and the LR schedules (docs/training.md).

Groups come from `fvlm.vlm.param_group` (connector = q_static, q_init, encoder.query_input_proj,
encoder.output_proj, dino_to_llm, llm_to_query). Each has its own base LR. Weight decay applies
to weight matrices only: biases, norm weights and the learned query vectors q_static / q_init
(which must keep their std ~1) are not decayed. Frozen parameters are left out.

Schedules, a pure function of the optimizer step s of S, with W = int(S * warmup_ratio) warmup
steps (linear, base / W up to base) and progress p = (s - W) / (S - 1 - W) in [0, 1] after it:

    lr(s) = end + (base - end) * (1 + cos(pi * p)) / 2
    cosine:     end = base * min_lr_ratio
    constant:   end = base
    converging: end = target_lr for every group: the connector falls from its high LR and the
                backbone rises from its low one, so connector:backbone goes e.g. 100:1 -> 1:1.
"""

from __future__ import annotations

import math

import torch

from fvlm.vlm import param_group

from .config import GROUPS, OptimConfig

NO_DECAY_NAMES = ("q_static", "q_init")


def param_groups(model: torch.nn.Module, cfg: OptimConfig, heads: dict[str, torch.nn.Module] | None = None
                 ) -> list[dict]:
    """Trainable parameters in groups named '<group>' (decayed) and '<group>/no_decay'. heads: the
    trainer's training-only modules by name (trainer/heads.py), trained with the connector group."""
    named = list(model.named_parameters())
    named += [(f"{k}.{n}", p) for k, head in (heads or {}).items() for n, p in head.named_parameters()]
    buckets: dict[str, list[torch.nn.Parameter]] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        group = param_group(name)
        decay = p.ndim >= 2 and name not in NO_DECAY_NAMES
        buckets.setdefault(group if decay else f"{group}/no_decay", []).append(p)
    base_lrs = {"connector": cfg.lr.connector, "dino": cfg.lr.dino, "llm": cfg.lr.llm}
    groups = []
    for name in sorted(buckets):
        group = name.split("/")[0]
        base = base_lrs[group]
        groups.append(
            {
                "params": buckets[name],
                "name": name,
                "group": group,
                "base_lr": base,
                "lr": base,
                "weight_decay": 0.0 if name.endswith("/no_decay") else cfg.weight_decay,
            }
        )
    return groups


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, heads: dict[str, torch.nn.Module] | None = None
                    ) -> torch.optim.AdamW:
    groups = param_groups(model, cfg, heads)
    if not groups:
        raise ValueError(
            "no trainable parameters: model.freeze_dino and freeze_llm leave only the connector, "
            "which must not be frozen"
        )
    fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, fused=fused or None)


def warmup_steps(total_steps: int, cfg: OptimConfig) -> int:
    return int(total_steps * cfg.warmup_ratio)


def lr_at(base: float, step: int, total_steps: int, cfg: OptimConfig) -> float:
    """The LR of a group with base LR `base` at optimizer step `step` (0-based)."""
    warm = warmup_steps(total_steps, cfg)
    if step < warm:
        return base * (step + 1) / warm
    if cfg.schedule == "constant":
        return base
    end = cfg.target_lr if cfg.schedule == "converging" else base * cfg.min_lr_ratio
    progress = min(1.0, (step - warm) / max(1, total_steps - 1 - warm))
    return end + (base - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lrs(
    optimizer: torch.optim.Optimizer, step: int, total_steps: int, cfg: OptimConfig
) -> dict[str, float]:
    """Set every group's LR for `step`; returns {connector|dino|llm: lr} of the groups present."""
    lrs = {}
    for g in optimizer.param_groups:
        g["lr"] = lr_at(g["base_lr"], step, total_steps, cfg)
        lrs[g["group"]] = g["lr"]
    return {k: lrs[k] for k in GROUPS if k in lrs}
