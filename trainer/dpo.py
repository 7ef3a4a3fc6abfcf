"""DPO (stage 3): preference pairs against a frozen reference model.

A DPO batch holds 2B rows: [chosen_0 .. chosen_{B-1}, rejected_0 .. rejected_{B-1}] with the same
frames. One forward of the *DDP-wrapped* policy over all 2B rows gives the per-row answer
log-probabilities (sum over answer tokens, incl. the closing <|im_end|>), so gradients sync like
any other step; the reference model (a frozen copy of the policy at the start of the stage) scores
the same rows without gradients.

    r_c = beta * (log pi(c) - log ref(c)),   r_r = beta * (log pi(r) - log ref(r))
    loss = -mean(log sigmoid(r_c - r_r)),    reward accuracy = mean(r_c > r_r), margin = mean(r_c - r_r)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fvlm.batch import Batch


@dataclass
class DPOStats:
    loss: torch.Tensor  # scalar, differentiable
    reward_acc: torch.Tensor  # scalar
    margin: torch.Tensor
    chosen_reward: torch.Tensor
    rejected_reward: torch.Tensor
    pairs: int


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> DPOStats:
    """All inputs [B] summed answer log-probs."""
    r_c = beta * (policy_chosen - ref_chosen)  # [B]
    r_r = beta * (policy_rejected - ref_rejected)
    diff = r_c - r_r
    return DPOStats(
        loss=-F.logsigmoid(diff).mean(),
        reward_acc=(diff > 0).float().mean().detach(),
        margin=diff.mean().detach(),
        chosen_reward=r_c.mean().detach(),
        rejected_reward=r_r.mean().detach(),
        pairs=diff.shape[0],
    )


def reference_model(policy: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of the policy as it is now (call before any training or resume)."""
    ref = copy.deepcopy(policy)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def dpo_step(
    policy: torch.nn.Module, reference: torch.nn.Module, batch: Batch, mode: str, beta: float
) -> DPOStats:
    """`policy` may be DDP-wrapped: its forward is the one call that carries gradients."""
    return dpo_from_logprobs(policy(batch, mode=mode).text.logprob, reference, batch, mode, beta)


def dpo_from_logprobs(logp: torch.Tensor, reference: torch.nn.Module, batch: Batch, mode: str, beta: float
                      ) -> DPOStats:
    """The DPO loss of the policy's per-row answer log-probs logp [2B] (from a pass that carries the
    gradients, e.g. the trainer module's), the reference scoring the same rows."""
    with torch.no_grad():
        ref = reference(batch, mode=mode).text.logprob  # [2B]
    B = logp.shape[0] // 2
    return dpo_loss(logp[:B], logp[B:], ref[:B], ref[B:], beta)
