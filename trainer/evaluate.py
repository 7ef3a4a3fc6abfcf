"""Validation: text loss with the fine and with the coarse (static) queries, attention entropy of
both, DPO reward metrics in stage 3, and heatmap PNGs of the first eval clips. Stage 0 (vision
pretraining) has no text: `evaluate_objects` measures the object head instead.

The coarse loss is always measured (coarse_fine with measure_coarse=True), whatever
lambda_coarse, so val_loss_ratio = fine / coarse is a real number: < 1 means looking where the
LLM asks helps. val_loss is the main training mode's loss (coarse for coarse_only training) and
picks the best checkpoint (val_dpo_loss for DPO). Sums are reduced over ranks, so the numbers are
token means over the whole validation set.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from fvlm.batch import Batch
from fvlm.vlm import VLMBase

from . import dist as D
from .config import Config
from .dpo import dpo_step

# indices into the sums vector
(
    FINE_NLL,
    FINE_N,
    COARSE_NLL,
    COARSE_N,
    ENT_F,
    ENT_F_N,
    ENT_C,
    ENT_C_N,
    DPO_LOSS,
    DPO_ACC,
    DPO_MARGIN,
    PAIRS,
    SAMPLES,
) = range(13)


def take_rows(batch: Batch, rows: slice) -> Batch:
    return Batch(**{f.name: getattr(batch, f.name)[rows] for f in fields(Batch)})


def attention_entropy(probs: torch.Tensor) -> tuple[float, int]:
    """probs [n, L, H, N] -> (sum of per-(frame, layer, head) entropies in nats, their count)."""
    p = probs.float()
    ent = -(p * p.clamp_min(1e-12).log()).sum(-1)  # [n, L, H]
    return float(ent.sum()), ent.numel()


@torch.no_grad()
def evaluate(
    model: VLMBase,
    reference: VLMBase | None,
    cfg: Config,
    batches,
    dist: D.Dist,
    autocast: Callable[[], AbstractContextManager],
    heatmap_dir: Path | None,
) -> dict[str, float | None]:
    was_training = model.training
    model.eval()
    foveated = model.architecture == "foveated"
    sums = torch.zeros(13, dtype=torch.float64)
    clips_left = cfg.eval.heatmap_clips if dist.main and heatmap_dir is not None else 0
    for tb in batches:
        batch = tb.batch.to(dist.device)
        with autocast():
            if reference is not None:  # DPO: rewards on the pairs, then losses on the chosen half
                stats = dpo_step(model, reference, batch, "coarse_fine", cfg.loss.beta)
                sums[DPO_LOSS] += float(stats.loss) * stats.pairs
                sums[DPO_ACC] += float(stats.reward_acc) * stats.pairs
                sums[DPO_MARGIN] += float(stats.margin) * stats.pairs
                sums[PAIRS] += stats.pairs
                batch = take_rows(batch, slice(0, tb.size))
            out = model(batch, mode="coarse_fine", measure_coarse=foveated, return_attention=foveated)
        sums[FINE_NLL] -= float(out.text.logprob.sum())
        sums[FINE_N] += float(out.text.num_targets.sum())
        sums[SAMPLES] += tb.size
        coarse = out.coarse  # measured for foveated models, None for multi-token
        if coarse is not None:
            sums[COARSE_NLL] -= float(coarse.logprob.sum())
            sums[COARSE_N] += float(coarse.num_targets.sum())
        if out.attention is not None and out.attention.shape[0] > 0:
            s, n = attention_entropy(out.attention)
            sums[ENT_F] += s
            sums[ENT_F_N] += n
            s, n = attention_entropy(out.coarse_attention)
            sums[ENT_C] += s
            sums[ENT_C_N] += n
            if clips_left > 0:
                clips_left -= save_heatmaps(
                    model, batch, out.attention, out.coarse_attention, tb.keys, heatmap_dir, clips_left
                )
    D.all_reduce_sum(dist, sums)
    model.train(was_training)

    def ratio(a: int, b: int) -> float | None:
        return float(sums[a] / sums[b]) if sums[b] > 0 else None

    fine, coarse = ratio(FINE_NLL, FINE_N), ratio(COARSE_NLL, COARSE_N)
    main = coarse if cfg.main_mode == "coarse_only" and coarse is not None else fine
    return {
        "val_loss": main,
        "val_loss_fine": fine,
        "val_loss_coarse": coarse,
        "val_loss_ratio": fine / coarse if fine is not None and coarse else None,
        "val_entropy_fine": ratio(ENT_F, ENT_F_N),
        "val_entropy_coarse": ratio(ENT_C, ENT_C_N),
        "val_dpo_loss": ratio(DPO_LOSS, PAIRS),
        "val_reward_acc": ratio(DPO_ACC, PAIRS),
        "val_reward_margin": ratio(DPO_MARGIN, PAIRS),
        "val_samples": int(sums[SAMPLES]),
    }


@torch.no_grad()
def evaluate_objects(
    module: torch.nn.Module,
    batches,
    dist: D.Dist,
    autocast: Callable[[], AbstractContextManager],
) -> dict[str, float | None]:
    """Stage 0: the unweighted object loss and shape / colour accuracy of the object head of
    `module` (trainer/heads.py: TrainModule) on the encoder's final patch features, over the
    validation batches, object-weighted; val_loss is the object loss."""
    was_training = module.training
    module.eval()
    head = module.object_head
    sums = torch.zeros(5, dtype=torch.float64)  # loss, shape and colour hits (x objects), objects, samples
    for tb in batches:
        batch = tb.batch.to(dist.device)
        targets = tb.objects.to(dist.device)[batch.frame_mask]  # [n_real, K, 6]
        with autocast():
            features = module.model.encoder.encode_patches(batch.pixel_values[batch.frame_mask]).features
            loss = float(head(features, targets))
        n = head.stats.get("objects", 0.0)
        if n:
            sums[:4] += torch.tensor([loss * n, head.stats["shape_acc"] * n, head.stats["color_acc"] * n, n],
                                     dtype=torch.float64)
        sums[4] += tb.size
    D.all_reduce_sum(dist, sums)
    module.train(was_training)
    n = float(sums[3])
    return {
        "val_loss": float(sums[0]) / n if n else None,
        "val_object_shape_acc": float(sums[1]) / n if n else None,
        "val_object_color_acc": float(sums[2]) / n if n else None,
        "val_samples": int(sums[4]),
    }


def save_heatmaps(
    model: VLMBase,
    batch: Batch,
    fine: torch.Tensor,
    coarse: torch.Tensor,
    keys: list[str],
    out_dir: Path,
    limit: int,
) -> int:
    """One PNG per clip (at most `limit`): rows = frames, fine-query overlay, coarse-query overlay.
    fine / coarse: [n_real, L, H, N] attention probs. Returns the number of PNGs written."""
    import cv2

    from fvlm.heatmap import overlay

    cfg = model.config
    gh, gw = model.encoder.grid(cfg.image_size)
    layer = cfg.layer_index(fine.shape[1])
    mean = torch.tensor(cfg.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.image_std).view(1, 3, 1, 1)
    counts = batch.frame_mask.sum(1).tolist()
    out_dir.mkdir(parents=True, exist_ok=True)
    written, start = 0, 0
    for i, n in enumerate(counts):
        if written >= limit:
            break
        if n == 0:
            continue
        pixels = batch.pixel_values[i, :n].float().cpu() * std + mean  # [n, 3, S, S] in [0, 1]
        frames = (pixels.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()  # [n, S, S, 3]
        rows = [np.concatenate(list(frames), axis=1)]
        for probs in (fine, coarse):
            maps = _grid(probs[start : start + n], layer, gh, gw)  # [n, gh, gw]
            rows.append(np.concatenate([overlay(f, a) for f, a in zip(frames, maps)], axis=1))
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", keys[i])
        cv2.imwrite(str(out_dir / f"{name}.png"), np.concatenate(rows, axis=0)[..., ::-1])
        written += 1
        start += n
    return written


def _grid(probs: torch.Tensor, layer: int | None, gh: int, gw: int) -> np.ndarray:
    """[n, L, H, N] -> [n, gh, gw]: heads averaged, the config's layer (or the layer mean), CLS dropped."""
    p = probs.float().mean(2)  # [n, L, N]
    p = p.mean(1) if layer is None else p[:, layer]
    p = p[:, 1:]
    return (p / p.sum(-1, keepdim=True).clamp_min(1e-12)).reshape(-1, gh, gw).cpu().numpy()
