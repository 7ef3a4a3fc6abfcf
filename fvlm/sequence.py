"""Build the LLM input from a Batch plus visual tokens, and the text loss.

Pads may sit anywhere in the sequence (left of the prefix, after a short video, around the
suffix). They get a zero embedding, are masked out of attention, and do not advance the position
ids, so every sample computes exactly what it would compute alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass
class LLMInput:
    embeds: torch.Tensor  # [B, L, D]
    mask: torch.Tensor  # [B, L] bool, True = real token
    position_ids: torch.Tensor  # [B, L] long
    labels: torch.Tensor  # [B, L] long: the next real token where it is a loss target, else -100


def positions(mask: torch.Tensor, offset: torch.Tensor | int = 0) -> torch.Tensor:
    """Position id of each slot = number of real tokens before it (+ offset). [B, L] -> [B, L]"""
    off = offset if isinstance(offset, int) else offset[:, None]
    return (mask.long().cumsum(-1) - 1).clamp(min=0) + off


def next_token_labels(ids: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """labels[b, j] = ids at the next real slot after j if that slot is a target, else -100."""
    B, L = ids.shape
    ar = torch.arange(L, device=ids.device).expand(B, L)
    pos = torch.where(mask, ar, L)  # [B, L]: own index if real, else L
    after = pos.flip(-1).cummin(-1).values.flip(-1)  # min index of a real slot at >= j
    nxt = torch.cat([after[:, 1:], torch.full((B, 1), L, device=ids.device)], dim=1)  # > j
    has = (nxt < L) & mask
    nxt_c = nxt.clamp(max=L - 1)
    ok = has & targets.gather(1, nxt_c)
    return torch.where(ok, ids.gather(1, nxt_c), torch.full_like(ids, IGNORE_INDEX))


def assemble(
    embed_tokens: torch.nn.Module,
    prefix_ids: torch.Tensor,  # [B, P]
    prefix_mask: torch.Tensor,  # [B, P]
    prefix_targets: torch.Tensor,  # [B, P]
    visual: torch.Tensor,  # [B, V, D]
    visual_mask: torch.Tensor,  # [B, V]
    suffix_ids: torch.Tensor,  # [B, S]
    suffix_mask: torch.Tensor,  # [B, S]
    suffix_targets: torch.Tensor,  # [B, S]
) -> LLMInput:
    """[prefix | visual | suffix] -> embeddings, mask, positions and next-token labels."""
    B, V, _ = visual.shape
    zeros = torch.zeros((B, V), dtype=torch.long, device=visual.device)
    ids = torch.cat([prefix_ids, zeros, suffix_ids], dim=1)  # [B, L]
    mask = torch.cat([prefix_mask, visual_mask, suffix_mask], dim=1)
    targets = torch.cat([prefix_targets, zeros.bool(), suffix_targets], dim=1)
    text = embed_tokens(ids)  # [B, L, D]
    vis = visual.to(text.dtype) * visual_mask[..., None]
    embeds = torch.cat([text[:, : prefix_ids.shape[1]], vis, text[:, prefix_ids.shape[1] + V :]], 1)
    embeds = embeds * mask[..., None]  # pads -> 0
    return LLMInput(embeds, mask, positions(mask), next_token_labels(ids, mask, targets))


@dataclass
class TextLoss:
    loss: torch.Tensor  # scalar, mean over all target tokens of the batch
    logprob: torch.Tensor  # [B] sum of target log-probs per sample
    num_targets: torch.Tensor  # [B]


def text_loss(hidden: torch.Tensor, labels: torch.Tensor, lm_head: torch.nn.Module) -> TextLoss:
    """Token-mean cross-entropy, with the LM head applied only where there is a target."""
    B = labels.shape[0]
    sel = labels != IGNORE_INDEX  # [B, L]
    rows = sel.nonzero()[:, 0]  # [M]
    logits = lm_head(hidden[sel]).float()  # [M, V]
    tok_logp = logits.log_softmax(-1).gather(1, labels[sel][:, None]).squeeze(1)  # [M]
    n = torch.zeros(B, device=hidden.device).index_add_(0, rows, torch.ones_like(tok_logp))
    lp = torch.zeros(B, device=hidden.device).index_add_(0, rows, tok_logp)
    if tok_logp.numel() == 0:  # no targets: a zero that still belongs to the graph
        return TextLoss(hidden.sum() * 0.0, lp, n)
    return TextLoss(-tok_logp.mean(), lp, n)
