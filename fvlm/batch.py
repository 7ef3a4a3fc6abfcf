"""Samples and padded batches: the one input format of every model forward.

A batch is three blocks side by side, each padded on its own:

    [ prefix (left-padded) | frames (right-padded in time) | suffix (right- or left-padded) ]

Padding is invisible to the model: padded slots are masked out of attention and skipped by the
position ids (see `sequence.py`), so a short video in a batch gives the same text logits as alone.
Training pads the suffix on the right; generation pads it on the left so that every sample's last
prompt token sits in the last column.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

import numpy as np

from .chat import ChatTokens, encode_chat
from .config import FVLMConfig
from .errors import InputError
from .video import preprocess


@dataclass
class Sample:
    pixel_values: torch.Tensor  # [T, 3, S, S] float (T may be 0: a text-only sample)
    chat: ChatTokens


def make_sample(
    frames: np.ndarray | None,  # [T, H, W, 3] uint8, or None for a text-only sample
    user: str,
    assistant: str | None,
    *,
    tokenizer,
    config: FVLMConfig,
    loss: str = "answer",
) -> Sample:
    """One model input: preprocessed frames + the tokenized chat in the config's layout."""
    S = config.image_size
    if frames is None or len(frames) == 0:
        pixels = torch.zeros((0, 3, S, S))
    else:
        pixels = preprocess(frames, S, config.image_mean, config.image_std)
    chat = encode_chat(tokenizer, user, assistant, layout=config.layout, system=config.system_prompt,
                       loss=loss, has_video=pixels.shape[0] > 0)
    return Sample(pixels, chat)


@dataclass
class Batch:
    pixel_values: torch.Tensor  # [B, T, 3, S, S]
    frame_mask: torch.Tensor  # [B, T] bool, True = real frame
    prefix_ids: torch.Tensor  # [B, P] long, left-padded
    prefix_mask: torch.Tensor  # [B, P] bool
    prefix_targets: torch.Tensor  # [B, P] bool, loss targets
    suffix_ids: torch.Tensor  # [B, S] long
    suffix_mask: torch.Tensor  # [B, S] bool
    suffix_targets: torch.Tensor  # [B, S] bool

    @property
    def batch_size(self) -> int:
        return self.frame_mask.shape[0]

    @property
    def num_frames(self) -> torch.Tensor:  # [B]
        return self.frame_mask.sum(1)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Batch":
        moved = {}
        for f in fields(self):
            t = getattr(self, f.name)
            if f.name == "pixel_values" and dtype is not None:
                moved[f.name] = t.to(device=device, dtype=dtype, non_blocking=True)
            else:
                moved[f.name] = t.to(device, non_blocking=True)
        return Batch(**moved)


def _pad(rows: list[list], value, left: bool, dtype: torch.dtype) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, r in enumerate(rows):
        if r:
            if left:
                out[i, width - len(r) :] = torch.tensor(r, dtype=dtype)
            else:
                out[i, : len(r)] = torch.tensor(r, dtype=dtype)
    return out


def collate(samples: list[Sample], pad_id: int = 0, suffix_left: bool = False) -> Batch:
    """Pad a list of samples into a Batch (see the module docstring for the layout)."""
    B = len(samples)
    T = max(s.pixel_values.shape[0] for s in samples)
    shape = samples[0].pixel_values.shape[1:]  # text-only samples carry [0, 3, S, S]
    if any(s.pixel_values.shape[1:] != shape for s in samples):
        raise InputError(f"all samples need frames of one size, got {[s.pixel_values.shape for s in samples]}")
    dtype = samples[0].pixel_values.dtype
    pixel_values = torch.zeros((B, T, *shape), dtype=dtype)
    frame_mask = torch.zeros((B, T), dtype=torch.bool)
    for i, s in enumerate(samples):
        n = s.pixel_values.shape[0]
        if n:
            pixel_values[i, :n] = s.pixel_values
            frame_mask[i, :n] = True

    chats = [s.chat for s in samples]
    return Batch(
        pixel_values=pixel_values,
        frame_mask=frame_mask,
        prefix_ids=_pad([c.prefix_ids for c in chats], pad_id, True, torch.long),
        prefix_mask=_pad([[True] * len(c.prefix_ids) for c in chats], False, True, torch.bool),
        prefix_targets=_pad([c.prefix_targets for c in chats], False, True, torch.bool),
        suffix_ids=_pad([c.suffix_ids for c in chats], pad_id, suffix_left, torch.long),
        suffix_mask=_pad([[True] * len(c.suffix_ids) for c in chats], False, suffix_left, torch.bool),
        suffix_targets=_pad([c.suffix_targets for c in chats], False, suffix_left, torch.bool),
    )
