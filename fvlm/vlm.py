"""VLMBase: what every fvlm model shares — the LLM, inputs, loss plumbing, generate, save/load.

Subclasses (FoveatedVLM, MultiTokenVLM) say how frames become visual tokens: `forward` for
training/scoring and `prefill` for generation. Everything else lives here once.
"""

from __future__ import annotations

import inspect
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn as nn
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache

from . import pretrained
from .batch import Batch, Sample, collate, make_sample
from .config import MODES, FVLMConfig
from .errors import ConfigError, InputError, PromptTooLongError
from .generation import DoneEvent, FrameEvent, GenerateOutput, StreamEvent, TextEvent, sample_next
from .sequence import TextLoss, text_loss
from .video import Clip, center_crop, to_clip


def hf_config(d: dict[str, Any]):
    """A transformers config object from a stored dict (which names its model_type)."""
    d = dict(d)
    model_type = d.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **d)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"cannot build a {model_type!r} config from the stored dict: {e}") from e


@dataclass
class VLMOutput:
    loss: torch.Tensor  # what to backpropagate: the mode's loss (+ lambda_coarse * coarse)
    text: TextLoss  # the mode's own text loss, with per-sample log-probs
    coarse: TextLoss | None = None  # static-query loss (coarse_fine with measure_coarse/lambda)
    attention: torch.Tensor | None = None  # [n_frames, L, H, N] probs of the mode's queries
    coarse_attention: torch.Tensor | None = None  # [n_frames, L, H, N] of the static query (coarse_fine)
    hidden: torch.Tensor | None = None  # [B, L, d_llm] final hidden states (return_hidden=True)
    labels: torch.Tensor | None = None  # [B, L]
    tokens: torch.Tensor | None = None  # [n_frames, D] the mode's visual tokens z (return_tokens=True)
    features: torch.Tensor | None = None  # [n_frames, N, D] DINO's final patch features, CLS first
    #                                       (return_features=True)


# Whether generation uses the inference engine (fvlm/engine.py) when neither the call, nor model.fast, nor
# FVLM_FAST says: off on every device for now. The engine equals the reference path on CPU (tests/test_engine.py),
# but its CUDA graphs and compiled step have not yet passed tests/test_engine.py on a GPU in this form; turn this
# on (for CUDA only) once benchmarks/gpu_suite.sh has passed on one.
ENGINE_ON_CUDA_BY_DEFAULT = False


class DecodeCache(Protocol):
    """A prefilled LLM KV cache that decoding appends to: LLMCache (the reference path, transformers'
    DynamicCache) or fvlm.engine.EngineCache (static slots). Each tracks its own mask and positions."""

    def append(self, embeds: torch.Tensor) -> torch.Tensor:
        """embeds [B, l, d] of l new (real) tokens -> final hidden states [B, l, d]."""
        ...

    def get_seq_length(self) -> int:
        """Slots held so far (pads included)."""
        ...


class LLMCache:
    """The reference path's DecodeCache: a transformers DynamicCache with its mask [B, L] bool and the
    next position id [B] of each row."""

    def __init__(self, model: VLMBase, kv: DynamicCache, mask: torch.Tensor, next_position: torch.Tensor):
        self.model, self.kv, self.mask, self.next_position = model, kv, mask, next_position

    def append(self, embeds: torch.Tensor) -> torch.Tensor:
        B, l = embeds.shape[:2]
        self.mask = torch.cat([self.mask, self.mask.new_ones(B, l)], dim=1)
        pos = self.next_position[:, None] + torch.arange(l, device=embeds.device)  # [B, l]
        self.next_position = self.next_position + l
        return self.model.decoder(embeds, self.mask, pos, self.kv)

    def get_seq_length(self) -> int:
        return self.mask.shape[1]


@dataclass
class Prefill:
    """State after the prompt has been read, ready for token-by-token decoding (cache.append)."""

    cache: DecodeCache
    mask: torch.Tensor  # [B, L] bool, every slot held by the cache
    next_position: torch.Tensor  # [B] position id of the next token
    logits: torch.Tensor  # [B, V] at the last slot
    attention: torch.Tensor | None = None  # [n_frames, L, H, N]
    coarse_attention: torch.Tensor | None = None


class VLMBase(nn.Module):
    def __init__(self, config: FVLMConfig, tokenizer=None):
        super().__init__()
        if not isinstance(config.llm, dict) or not isinstance(config.vision, dict):
            raise ConfigError("build models with from_components() when vision/llm are hub ids or paths")
        self.config = config
        self.tokenizer = tokenizer
        self.fast: bool | None = None  # use the inference engine by default? None: see use_engine
        self.llm = AutoModelForCausalLM.from_config(hf_config(config.llm), attn_implementation="sdpa")
        params = inspect.signature(self.llm.get_decoder().forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    # ---- small helpers ------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def context_length(self) -> int:
        return int(getattr(self.llm.config, "max_position_embeddings", 2048))

    @property
    def eos_ids(self) -> list[int]:
        tok = self.tokenizer
        ids = {tok.eos_token_id}
        im_end = tok.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != tok.unk_token_id:
            ids.add(im_end)
        return sorted(i for i in ids if i is not None)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(ids)

    def decoder(
        self,
        embeds: torch.Tensor,  # [B, l, D] new slots
        mask: torch.Tensor,  # [B, past + l] bool, all slots so far
        position_ids: torch.Tensor,  # [B, l]
        cache: DynamicCache | None = None,
    ) -> torch.Tensor:  # [B, l, D] final hidden states
        kw = {self._cache_kw: cache} if cache is not None else {}
        out = self.llm.get_decoder()(
            inputs_embeds=embeds,
            attention_mask=mask.long(),
            position_ids=position_ids,
            use_cache=cache is not None,
            **kw,
        )
        return out.last_hidden_state

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.llm.config)

    def loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> TextLoss:
        return text_loss(hidden, labels, self.llm.get_output_embeddings())

    # ---- to be provided by subclasses ---------------------------------------------------------
    architecture = "foveated"
    visual_tokens_per_frame = 1

    @property
    def vision_model(self) -> nn.Module:
        raise NotImplementedError

    def forward(self, batch: Batch, mode: str = "coarse_fine", **kw) -> VLMOutput:
        raise NotImplementedError

    def prefill(self, batch: Batch, mode: str, return_attention: bool,
                 on_step: Callable | None = None, fast: bool | None = None) -> Prefill:
        """Read the prompt (frames included) -> a Prefill. fast: use the inference engine where the
        model has one and it serves the batch (resolved by use_engine)."""
        raise NotImplementedError

    def use_engine(self, fast: bool | None = None) -> bool:
        """Whether a call asks for the inference engine: `fast` if given, else self.fast, else the
        environment variable FVLM_FAST=0|1, else ENGINE_ON_CUDA_BY_DEFAULT on CUDA (off elsewhere)."""
        if fast is not None:
            return bool(fast)
        if self.fast is not None:
            return bool(self.fast)
        env = os.environ.get("FVLM_FAST", "")
        if env:
            if env not in ("0", "1"):
                raise ConfigError(f"FVLM_FAST={env!r}: use 1 (the inference engine) or 0 (the reference path)")
            return env == "1"
        return self.device.type == "cuda" and ENGINE_ON_CUDA_BY_DEFAULT

    def attention_summary(self, probs: torch.Tensor) -> dict[str, np.ndarray]:
        """Attention probs [n, L, H, N] -> per-frame heatmap fields (models with a query)."""
        return {}

    def attention_maps(self, pre: Prefill, batch: Batch) -> list[dict[str, np.ndarray]]:
        """Per sample, the GenerateOutput attention fields (none for models without a query)."""
        return [{} for _ in range(batch.batch_size)]

    # ---- inputs -------------------------------------------------------------------------------
    def check_mode(self, mode: str) -> str:
        if mode not in MODES:
            raise InputError(f"unknown mode {mode!r}; use one of {MODES}")
        return mode

    def clip(self, video) -> Clip:
        c = self.config
        return to_clip(video, fps=c.fps, max_frames=c.max_frames, image_frames=c.image_frames)

    def sample(self, clip: Clip | None, user: str, assistant: str | None = None, loss: str = "none") -> Sample:
        """One model input from a clip (None = text only) and a chat turn."""
        return make_sample(None if clip is None else clip.frames, user, assistant,
                           tokenizer=self.tokenizer, config=self.config, loss=loss)

    def collate(self, samples: list[Sample], for_generation: bool = False) -> Batch:
        return collate(samples, pad_id=self.tokenizer.pad_token_id or 0, suffix_left=for_generation)

    # ---- generation ---------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self,
        video,
        prompt: str | list[str],
        mode: str = "autoregressive",
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        return_attention: bool = True,
        seed: int | None = None,
        callback: Callable[[FrameEvent | TextEvent], None] | None = None,
        fast: bool | None = None,
    ) -> GenerateOutput | list[GenerateOutput]:
        """Answer `prompt` about `video`.

        video: a path (video or image), a [T, H, W, 3] uint8 array/tensor, a list of PIL images
        (one video), or a list of paths / arrays (a batch: returns a list of outputs).
        callback: called with a FrameEvent as each frame is read (live in autoregressive mode,
        after the prefill otherwise) and a TextEvent after each generated token. See `stream`.
        fast: run on the inference engine (fvlm/engine.py; static KV cache, CUDA graphs) where it
        serves the model and batch; None: model.fast, else FVLM_FAST, else the default (`use_engine`).
        """
        self.check_mode(mode)
        if self.tokenizer is None:
            raise ConfigError("this model has no tokenizer; pass tokenizer= when building it")
        videos, batched = _as_video_list(video)
        prompts = [prompt] * len(videos) if isinstance(prompt, str) else prompt
        if not isinstance(prompts, (list, tuple)) or len(prompts) != len(videos):
            raise InputError(f"got {len(videos)} videos but prompt is {type(prompt).__name__} "
                             f"of length {len(prompts) if isinstance(prompts, (list, tuple)) else '?'}")
        for p in prompts:
            if not isinstance(p, str) or not p.strip():
                raise InputError(f"prompt must be a non-empty string, got {p!r}")
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")

        clips = [self.clip(v) for v in videos]
        samples = [self.sample(c, p) for c, p in zip(clips, prompts)]
        longest = max(len(s.chat) + s.pixel_values.shape[0] * self.visual_tokens_per_frame for s in samples)
        room = self.context_length - longest
        if room < 1:
            raise PromptTooLongError(
                f"prompt + frames need {longest} tokens but the LLM context is {self.context_length}; "
                f"shorten the prompt or lower max_frames (now {self.config.max_frames})"
            )
        max_new_tokens = min(max_new_tokens, room)
        batch = self.collate(samples, for_generation=True).to(self.device, self.dtype)

        crops = [center_crop(c.frames) for c in clips]

        def frame_event(b: int, t: int, maps: dict[str, np.ndarray], j: int) -> FrameEvent:
            get = lambda k: maps[k][j] if k in maps else None  # noqa: E731
            return FrameEvent(sample=b, index=t, timestamp=float(clips[b].timestamps[t]), frame=crops[b][t],
                              attention=get("attention"), coarse_attention=get("coarse_attention"),
                              entropy=None if get("entropy") is None else float(get("entropy")))

        def on_step(t: int, real: torch.Tensor, probs: torch.Tensor | None) -> None:  # live frames
            maps = self.attention_summary(probs) if probs is not None else {}
            for j, b in enumerate(real.nonzero()[:, 0].tolist()):
                callback(frame_event(b, t, maps, j))

        live = callback is not None and mode == "autoregressive"
        pre = self.prefill(batch, mode, return_attention, on_step=on_step if live else None,
                           fast=self.use_engine(fast))
        maps = self.attention_maps(pre, batch) if return_attention else [{} for _ in clips]
        if callback is not None and not live:
            for b, m in enumerate(maps):
                for t in range(len(crops[b])):
                    callback(frame_event(b, t, m, t))

        def on_token(rows: list[list[int]]) -> None:
            for b, ids in enumerate(rows):
                callback(TextEvent(sample=b, text=self.tokenizer.decode(ids, skip_special_tokens=True)))

        tokens = self.decode(pre, max_new_tokens, temperature, top_p, seed,
                              on_token=on_token if callback is not None else None)
        outs = [
            GenerateOutput(
                text=self.tokenizer.decode(ids, skip_special_tokens=True).strip(), mode=mode,
                frames=crop, timestamps=clip.timestamps, token_ids=ids, source=clip.source, **m,
            )
            for clip, crop, ids, m in zip(clips, crops, tokens, maps)
        ]
        return outs if batched else outs[0]

    def stream(self, video, prompt: str, mode: str = "autoregressive", **kw) -> Iterator[StreamEvent]:
        """generate() as a stream of events for one video: FrameEvents as frames are read, TextEvents
        as tokens arrive, then a DoneEvent with the GenerateOutput. Errors are re-raised here.
        kw (max_new_tokens, fast, ...) go to generate."""
        events: queue.Queue = queue.Queue()

        def run() -> None:
            try:
                events.put(DoneEvent(self.generate(video, prompt, mode, callback=events.put, **kw)))
            except BaseException as e:  # handed to the consumer, which re-raises it
                events.put(e)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        while True:
            event = events.get()
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, DoneEvent):
                break
        worker.join()

    def decode(self, pre: Prefill, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
               seed: int | None = None, on_token: Callable[[list[list[int]]], None] | None = None,
               ) -> list[list[int]]:
        """Token-by-token decoding from the prefilled KV cache (appended to); stops each sample at EOS.
        Returns the new token ids per sample, EOS excluded."""
        B = pre.logits.shape[0]
        gen = None
        if seed is not None:
            gen = torch.Generator(device=pre.logits.device).manual_seed(seed)
        eos = torch.tensor(self.eos_ids, device=self.device)
        pad = self.tokenizer.pad_token_id or 0
        done = torch.zeros(B, dtype=torch.bool, device=self.device)
        logits = pre.logits
        out: list[torch.Tensor] = []
        for step in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_p, gen)  # [B]
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            out.append(nxt)
            done |= torch.isin(nxt, eos)
            if on_token is not None:
                on_token(self._cut_at_eos(torch.stack(out, dim=1).tolist()))
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            h = pre.cache.append(self.embed(nxt[:, None]))
            logits = self.llm.get_output_embeddings()(h[:, -1])
        return self._cut_at_eos(torch.stack(out, dim=1).tolist())

    def _cut_at_eos(self, rows: list[list[int]]) -> list[list[int]]:
        eos = set(self.eos_ids)
        return [row[: next((j for j, t in enumerate(row) if t in eos), len(row))] for row in rows]

    def full_prefill(self, batch: Batch, inp) -> Prefill:
        """Prefill for modes whose whole input is known up front: one cached LLM pass."""
        cache = self.new_cache()
        h = self.decoder(inp.embeds, inp.mask, inp.position_ids, cache)
        return Prefill(
            cache=LLMCache(self, cache, inp.mask, inp.mask.sum(1)),
            mask=inp.mask,
            next_position=inp.mask.sum(1),
            logits=self.llm.get_output_embeddings()(h[:, -1]),
        )

    # ---- save / load --------------------------------------------------------------------------
    @classmethod
    def from_components(cls, vision, llm, tokenizer=None, **config_kwargs):
        """A fresh model from HF ids / local dirs (pretrained weights) or config objects (random)."""
        return pretrained.from_components(cls, vision, llm, tokenizer, **config_kwargs)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        return pretrained.save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device | None = None):
        def this_class(config: FVLMConfig) -> type:
            if config.architecture != cls.architecture:
                raise ConfigError(f"{directory} holds a {config.architecture} model, not a {cls.__name__}")
            return cls

        return pretrained.load_model(directory, this_class, device=device)

    def num_parameters_by_group(self) -> dict[str, int]:
        groups: dict[str, int] = {}
        for name, p in self.named_parameters():
            groups[param_group(name)] = groups.get(param_group(name), 0) + p.numel()
        return groups


def param_group(name: str) -> str:
    """'llm' | 'dino' | 'connector' for a parameter name (for optimizer groups and reports)."""
    if name.startswith("llm."):
        return "llm"
    if name.startswith(("encoder.dino.", "dino.")):
        return "dino"
    return "connector"


def _as_video_list(video) -> tuple[list, bool]:
    """Split generate()'s `video` argument into a list of videos and whether it was a batch."""
    if isinstance(video, (list, tuple)):
        if not video:
            raise InputError("video is an empty list; pass a path, an array or a list of paths")
        first = video[0]
        if isinstance(first, (str, os.PathLike)):
            return list(video), True
        if isinstance(first, (np.ndarray, torch.Tensor)) and first.ndim == 4:
            return list(video), True
    return [video], False
