"""The training objectives, one function each: loss_fn(...) -> (loss to backpropagate, named sums).

The sums are plain floats for the logs; the loop adds them over micro-batches and ranks, and
`metrics` turns them into the logged numbers (docs/losses.md describes every term):

    ce       stages 1-3: the model's text loss (fine, + lambda_coarse * coarse), plus the aux terms
    vision   stage 0: the weighted object loss of the encoder's final patch features, nothing else
    dpo      stage 3 with loss.type dpo: preference pairs against the frozen reference
    object_term / gaze_term / token_term / look_term: the auxiliary losses, computed inside the
             trainer module's forward (trainer/heads.py) from what the model returned
"""

from __future__ import annotations

import torch

from fvlm.batch import Batch
from fvlm.vlm import VLMOutput

from .config import Config
from .dpo import dpo_from_logprobs
from .gaze import gaze_loss
from .look import look_loss
from .objects import ObjectHead

VISION = "vision"  # the pseudo-mode of stage 0: the encoder and the object head alone, no LLM
Sums = dict[str, float]
DPO = ("dpo_reward_acc", "dpo_margin", "dpo_chosen_reward", "dpo_rejected_reward")  # means over micro-batches
AVERAGED = {  # metrics averaged over the micro-batches that had the term, by the name of their count
    "coarse_batches": ("loss_coarse",),
    "objects_batches": ("loss_objects", "object_shape_acc", "object_color_acc", "object_position_acc"),
    "gaze_batches": ("loss_gaze", "gaze_mass"),
    "token_batches": ("loss_token", "token_shape_acc", "token_color_acc", "token_position_acc"),
    "look_batches": ("loss_look", "look_mass"),
}
POSITION = ("object_position_acc", "token_position_acc")  # reported only with loss.object_position


def sum_names(cfg: Config) -> list[str]:
    """Every sum a step of this configuration can report, in a fixed order (the same on every rank,
    whatever its batches held, so that they can be reduced as one vector)."""
    names = ["loss", "samples", "text_batches"]
    if cfg.loss.type == "dpo":
        return names + list(DPO)
    if cfg.stage > 0:
        names += ["loss_fine", "loss_coarse", "coarse_batches"]
    skip = () if cfg.loss.object_position else POSITION
    averaged = {count: [n for n in terms if n not in skip] for count, terms in AVERAGED.items()}
    if cfg.loss.object_weight > 0:
        names += [*averaged["objects_batches"], "objects_batches"]
    if cfg.loss.gaze_weight > 0:
        names += [*averaged["gaze_batches"], "gaze_batches"]
    if cfg.loss.token_weight > 0:
        names += [*averaged["token_batches"], "token_batches"]
    if cfg.loss.look_weight > 0:
        names += [*averaged["look_batches"], "look_batches"]
    return names


def add(sums: Sums, parts: Sums) -> None:
    for k, v in parts.items():
        sums[k] += v  # a KeyError here: a term that sum_names does not know


def metrics(sums: Sums, n: int, stage: int) -> dict[str, float]:
    """The logged loss metrics from the reduced sums; n = micro-batches over all ranks. Batch-mean
    terms are averaged over the batches that had them (e.g. a coarse loss, a visible target)."""
    m = {"loss": sums["loss"] / n}
    if "dpo_margin" in sums:
        return m | {k: sums[k] / n for k in DPO}
    if stage > 0:
        m["loss_fine"] = sums["loss_fine"] / n
    for count, names in AVERAGED.items():
        if sums.get(count):
            m.update({k: sums[k] / sums[count] for k in names if k in sums})
            if count == "coarse_batches":
                m["loss_ratio"] = m["loss_fine"] / m["loss_coarse"]
    return m


# ---- main objectives (called with the DDP-wrapped trainer module as `net`) -----------------------
def ce(net: torch.nn.Module, batch: Batch, mode: str, objects: torch.Tensor | None,
       target: torch.Tensor | None, measure_coarse: bool) -> tuple[torch.Tensor, Sums]:
    """Cross-entropy of the text targets under `mode` (+ lambda_coarse * the coarse loss, inside the
    model), plus the auxiliary terms the configuration asks for."""
    step = net(batch, mode, objects=objects, target=target, measure_coarse=measure_coarse)
    return step.loss, text_sums(step.out) | step.sums


def text_sums(out: VLMOutput) -> Sums:
    """The fine (the mode's own) text loss, and the coarse (static-query) loss where it was measured."""
    sums = {"loss_fine": float(out.text.loss.detach())}
    if out.coarse is not None:
        sums |= {"loss_coarse": float(out.coarse.loss.detach()), "coarse_batches": 1.0}
    return sums


def vision(net: torch.nn.Module, batch: Batch, objects: torch.Tensor) -> tuple[torch.Tensor, Sums]:
    """Stage 0: the weighted object loss alone (no query, no LLM)."""
    step = net(batch, VISION, objects=objects)
    return step.loss, step.sums


def dpo(net: torch.nn.Module, reference: torch.nn.Module, batch: Batch, mode: str, beta: float
        ) -> tuple[torch.Tensor, Sums]:
    """DPO on the pairs of `batch` (trainer/dpo.py); the policy's pass goes through `net`."""
    stats = dpo_from_logprobs(net(batch, mode).out.text.logprob, reference, batch, mode, beta)
    values = (stats.reward_acc, stats.margin, stats.chosen_reward, stats.rejected_reward)
    return stats.loss, {k: float(v) for k, v in zip(DPO, values)}


# ---- auxiliary terms (computed inside the trainer module's forward) -------------------------------
def object_term(head: ObjectHead, features: torch.Tensor, targets: torch.Tensor, weight: float
                ) -> tuple[torch.Tensor, Sums]:
    """weight * the object loss of the final patch features [n, N, D] against targets [n, K, 6]
    (trainer/objects.py)."""
    loss = weight * head(features, targets)
    if not head.stats.get("objects"):
        return loss, {}
    accs = {f"object_{k}": v for k, v in head.stats.items() if k.endswith("_acc")}
    return loss, {"loss_objects": float(loss.detach()), **accs, "objects_batches": 1.0}


def gaze_term(attention: torch.Tensor, rows: torch.Tensor, patch: int, weight: float
              ) -> tuple[torch.Tensor, Sums]:
    """weight * the gaze loss of the query's attention [n, L, H, N] on the target rows [n, 6]
    (trainer/gaze.py); the logged loss is the unweighted one."""
    g, stats = gaze_loss(attention, rows, patch)
    if not stats["frames"]:
        return weight * g, {}
    return weight * g, {"loss_gaze": float(g.detach()), "gaze_mass": stats["mass"], "gaze_batches": 1.0}


def token_term(head: ObjectHead, tokens: torch.Tensor, rows: torch.Tensor, weight: float
               ) -> tuple[torch.Tensor, Sums]:
    """weight * the token loss: the head must name the target from the visual tokens [n, D]; the
    logged loss is the unweighted one."""
    t, stats = head.token_loss(tokens, rows)
    if not stats["frames"]:
        return weight * t, {}
    accs = {f"token_{k}": v for k, v in stats.items() if k.endswith("_acc")}
    return weight * t, {"loss_token": float(t.detach()), **accs, "token_batches": 1.0}


def look_term(probs: list[torch.Tensor], labels: torch.Tensor, batch: Batch, weight: float
              ) -> tuple[torch.Tensor, Sums]:
    """weight * the look loss: the answer position's attention on the frames, per LLM layer probs
    [B, H, L, L] of the fine pass (trainer/look.py); the logged loss is the unweighted one."""
    loss, stats = look_loss(probs, labels, batch)
    if not stats["rows"]:
        return weight * loss, {}
    return weight * loss, {"loss_look": float(loss.detach()), "look_mass": stats["mass"], "look_batches": 1.0}
