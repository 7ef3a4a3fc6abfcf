"""Live video: frames pushed one at a time (a camera, a stream), answers asked at any moment.

    session = model.live("What color is the triangle?")
    event = session.push(frame)            # FrameEvent: where this frame's query looked, its entropy
    session.ask()                          # an answer from the frames in the window; the session goes on
    session.close()

This is autoregressive mode run forever. The session holds the LLM's KV cache over
[prefix | one visual token per frame]. push() makes the frame's query from the hidden state of the
last slot (for the first frame: the last prompt token in text_first, q_init in video_first), reads
the frame with it, projects the token and appends it to the cache. ask() appends the suffix (the end
of the user turn and the assistant header) to a copy of the cache and decodes greedily or by
sampling, so the running state is never touched. Pushing a clip's frames one by one therefore gives
the attention maps and the answer of generate(clip, mode="autoregressive").

Window policy (bounded memory and latency forever): the cache holds at most `max_frames` visual
tokens. When a frame arrives and the window is full, the oldest frames are dropped so that
`keep_frames` remain, and the cache is re-prefilled from [prefix | the kept tokens] in one LLM pass.
The kept tokens are reused as they were made (DINO never re-reads a frame), so only the LLM pays:
one pass over prefix + keep_frames tokens every max_frames - keep_frames frames. The next frame's
query then comes from the re-prefilled last slot. Memory is bounded by prefix + max_frames tokens
plus one answer; see docs/live.md.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
from typing_extensions import Self  # typing.Self needs Python 3.11

from .errors import InputError, PromptTooLongError
from .generation import FrameEvent
from .video import center_crop, preprocess, to_clip
from .vlm import LLMCache, Prefill


@dataclass
class LiveConfig:
    max_frames: int  # frames (visual tokens) the LLM sees at most: the window
    keep_frames: int  # frames kept when the window slides (0 <= keep_frames < max_frames)
    max_new_tokens: int = 64  # ask()'s default answer length
    max_side: int | None = 448  # frames are downscaled to this short side first, as every input is

    def check(self) -> LiveConfig:
        if self.max_frames < 1:
            raise InputError(f"live: max_frames={self.max_frames}; must be >= 1")
        if not 0 <= self.keep_frames < self.max_frames:
            raise InputError(f"live: keep_frames={self.keep_frames}; need 0 <= keep_frames < max_frames "
                             f"({self.max_frames})")
        if self.max_new_tokens < 1:
            raise InputError(f"live: max_new_tokens={self.max_new_tokens}; must be >= 1")
        return self


def gaze(attention: np.ndarray) -> dict[str, tuple[float, float]]:
    """Where a frame's query looked: attention [gh, gw] -> the peak cell's centre and the attention's
    centroid, each (x, y) as fractions of the frame's square crop (0, 0) top left .. (1, 1) bottom right."""
    a = np.asarray(attention, dtype=np.float64)
    gh, gw = a.shape
    ys, xs = (np.arange(gh) + 0.5) / gh, (np.arange(gw) + 0.5) / gw  # cell centres
    r, c = np.unravel_index(int(a.argmax()), a.shape)
    w = a / max(a.sum(), 1e-12)
    return {"peak": (float(xs[c]), float(ys[r])),
            "centroid": (float((w.sum(0) * xs).sum()), float((w.sum(1) * ys).sum()))}


class LiveSession:
    """A running autoregressive read of a frame stream. Build it with `model.live(prompt, ...)`.

    Thread-safe: push() and ask() take a lock, so a camera thread may push while another asks.
    """

    def __init__(self, model, prompt: str, config: LiveConfig):
        from .chat import encode_chat

        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"live: prompt must be a non-empty string, got {prompt!r}")
        if model.tokenizer is None:
            raise InputError("live: this model has no tokenizer; pass tokenizer= when building it")
        self.model, self.prompt, self.config = model, prompt, config.check()
        c = model.config
        self.chat = encode_chat(model.tokenizer, prompt, layout=c.layout, system=c.system_prompt,
                                loss="none", has_video=True)
        need = len(self.chat) + config.max_frames + 1
        if need > model.context_length:
            raise PromptTooLongError(
                f"live: prompt + {config.max_frames} frames + one answer token need {need} tokens but the LLM "
                f"context is {model.context_length}; shorten the prompt or lower max_frames")
        self.frames_seen = 0  # frames pushed since the start (the window holds the last few)
        self.closed = False
        self._tokens: deque[torch.Tensor] = deque()  # the window's visual embeddings, each [1, d_llm]
        self._lock = threading.Lock()
        self._t0: float | None = None  # monotonic time of the first push (default timestamps)
        self._gaze: torch.Tensor | None = None  # [1, 2] where the last frame was looked at (gaze embedding)
        self._prefill()

    # ---- state ---------------------------------------------------------------------------------
    @property
    def window(self) -> int:
        """Frames in the LLM's view now (<= config.max_frames)."""
        return len(self._tokens)

    @property
    def context_tokens(self) -> int:
        """Slots held by the running KV cache: prefix + window (bounded by prefix + max_frames)."""
        return self._cache.get_seq_length()

    @torch.inference_mode()
    def _prefill(self) -> None:
        """(Re)build the KV cache from [prefix | the window's tokens] in one LLM pass."""
        m = self.model
        parts = []
        if self.chat.prefix_ids:
            ids = torch.tensor([self.chat.prefix_ids], device=m.device)
            parts.append(m.embed(ids))  # [1, P, d]
        parts += [t[:, None] for t in self._tokens]  # [1, 1, d] each
        mask = torch.ones(1, 0, dtype=torch.bool, device=m.device)
        self._cache = LLMCache(m, m.new_cache(), mask, torch.zeros(1, dtype=torch.long, device=m.device))
        self._last = None  # [1, d] hidden state of the last slot (None: no slot yet)
        if parts:
            self._last = self._cache.append(torch.cat(parts, dim=1))[:, -1]

    def _check_open(self) -> None:
        if self.closed:
            raise InputError("live: this session is closed; start a new one with model.live(prompt)")

    # ---- frames --------------------------------------------------------------------------------
    def _frame(self, frame) -> np.ndarray:
        """One frame (HxWx3 uint8 array or tensor, PIL image) -> [1, h, w, 3] uint8, downscaled."""
        from PIL import Image

        if isinstance(frame, Image.Image):
            frame = np.asarray(frame.convert("RGB"))
        elif isinstance(frame, torch.Tensor):
            frame = frame.detach().cpu().numpy()
        if not isinstance(frame, np.ndarray):
            raise InputError(f"live push: got {type(frame).__name__}; pass one frame as an HxWx3 uint8 "
                             "array or tensor, or a PIL image")
        if frame.ndim != 3 or frame.shape[-1] not in (3, 4) or 0 in frame.shape:
            hint = " (channels first? permute to HxWx3)" if frame.ndim == 3 and frame.shape[0] in (1, 3) else ""
            hint = hint or (" (a clip? push its frames one at a time)" if frame.ndim == 4 else "")
            raise InputError(f"live push: frame of shape {tuple(frame.shape)}; expected one HxWx3 RGB "
                             f"frame{hint}")
        if frame.dtype != np.uint8:
            raise InputError(f"live push: frame dtype {frame.dtype}; expected uint8 RGB in 0..255 "
                             "(for floats in [0, 1] pass (x * 255).round().astype(np.uint8))")
        c = self.model.config
        return to_clip(frame, image_frames=1, max_side=self.config.max_side, fps=c.fps).frames  # [1, h, w, 3]

    @torch.inference_mode()
    def push(self, frame, timestamp: float | None = None) -> FrameEvent:
        """Read one frame with the query the LLM chose after the frames before it; append its token.

        timestamp: seconds (default: time since the first push). Returns the frame's FrameEvent
        (index = frames pushed before it, the square crop the model saw, attention [gh, gw], entropy).
        """
        frames = self._frame(frame)
        m = self.model
        pixels = preprocess(frames, m.config.image_size, m.config.image_mean, m.config.image_std)
        pixels = pixels.to(m.device, m.dtype)  # [1, 3, S, S]
        with self._lock:
            self._check_open()
            now = time.monotonic()
            self._t0 = now if self._t0 is None else self._t0
            if len(self._tokens) == self.config.max_frames:  # slide the window
                while len(self._tokens) > self.config.keep_frames:
                    self._tokens.popleft()
                self._prefill()
            q = m.q_init if self._last is None else m.llm_to_query(self._last)  # [1, qd]
            patches = m.encoder.encode_patches(pixels)
            token, _, probs, gaze = m.frame_tokens(q, patches, return_attention=True, prev_gaze=self._gaze)
            self._gaze = gaze
            self._last = self._cache.append(token[:, None])[:, -1]
            self._tokens.append(token)
            index = self.frames_seen
            self.frames_seen += 1
        maps = m.attention_summary(probs)
        return FrameEvent(sample=0, index=index, timestamp=float(now - self._t0 if timestamp is None else timestamp),
                          frame=center_crop(frames)[0], attention=maps["attention"][0],
                          entropy=float(maps["entropy"][0]))

    # ---- answers -------------------------------------------------------------------------------
    def suffix_ids(self, question: str | None = None) -> list[int]:
        """The tokens ask() appends after the frames. None or the session's prompt: the chat's own
        suffix (as generate() would). Another question: in text_first it follows the frames in the same
        user turn ("\\n" + question, then the suffix); in video_first it is that question's whole chat."""
        if question is None or question == self.prompt:
            return list(self.chat.suffix_ids)
        if not isinstance(question, str) or not question.strip():
            raise InputError(f"live ask: question must be a non-empty string or None, got {question!r}")
        from .chat import encode_chat

        c = self.model.config
        if self.chat.prefix_ids:  # text_first: the prompt is already before the frames
            ids = self.model.tokenizer("\n" + question, add_special_tokens=False)["input_ids"]
            return ids + list(self.chat.suffix_ids)
        return encode_chat(self.model.tokenizer, question, layout=c.layout, system=c.system_prompt,
                           loss="none", has_video=True).suffix_ids

    @torch.inference_mode()
    def ask(self, question: str | None = None, max_new_tokens: int | None = None, temperature: float = 0.0,
            top_p: float = 1.0, seed: int | None = None) -> str:
        """An answer from the frames in the window, on a copy of the cache: the session goes on after it.

        question: None asks the session's prompt (see suffix_ids for another question).
        """
        m = self.model
        suffix = self.suffix_ids(question)
        n = self.config.max_new_tokens if max_new_tokens is None else max_new_tokens
        if n < 1:
            raise InputError(f"live ask: max_new_tokens must be >= 1, got {n}")
        with self._lock:
            self._check_open()
            room = m.context_length - self.context_tokens - len(suffix)
            if room < 1:
                raise PromptTooLongError(f"live ask: the question needs {len(suffix)} tokens but only "
                                         f"{room + len(suffix)} are free; ask a shorter question or lower max_frames")
            cache = LLMCache(m, copy.deepcopy(self._cache.kv), self._cache.mask.clone(),
                             self._cache.next_position.clone())
        h = cache.append(m.embed(torch.tensor([suffix], device=m.device)))  # [1, S, d]
        pre = Prefill(cache=cache, mask=cache.mask, next_position=cache.next_position,
                      logits=m.llm.get_output_embeddings()(h[:, -1]))
        ids = m.decode(pre, min(n, room), temperature, top_p, seed)[0]
        return m.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # ---- end -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Free the cache; push and ask then raise. Closing twice is fine."""
        with self._lock:
            self.closed = True
            self._tokens.clear()
            self._cache = self._last = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
