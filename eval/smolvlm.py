"""SmolVLM2 as an lmms-eval model, through transformers' SmolVLM classes, with frames sampled and
prompted the way SmolVLM2's own processor does it.

Why not lmms-eval's generic `huggingface` chat model: it builds AutoProcessor -> SmolVLMProcessor,
which requires SmolVLMVideoProcessor -> torchvision, and no torchvision build works beside CPU
torch 2.13 (the only one pip can take pulls CUDA torch 2.14; see the environment report). So this
thin wrapper does what SmolVLMProcessor + SmolVLMVideoProcessor do for one video:
- frames: `fps` (1) per second, at most `max_frames` (64), evenly over the whole video, skipping
  1 s at both ends when there is room: SmolVLMVideoProcessor.sample_frames' rule, which
  fvlm.video.sample_indices implements; decoded by fvlm's decoder (so both models see the same frames);
- pixels: SmolVLMImageProcessorPil at the checkpoint's `video_sampling.video_size`, no splitting;
- prompt: "<|im_start|>User: You are provided the following series of {N in words} frames from a
  {H:MM:SS} [H:MM:SS] video.\n" + per frame "\nFrame from MM:SS:<fake_token_around_image>
  <global-img><image>*image_seq_len<fake_token_around_image>" + "\n\n" + question +
  "<end_of_utterance>\nAssistant:"  (SmolVLM's video chat template, expanded).

    python -m lmms_eval --model smolvlm2_frames --model_args pretrained=HuggingFaceTB/SmolVLM2-256M-Video-Instruct ...

Model args: pretrained (hub id or directory), max_frames / fps (default: the checkpoint's
video_sampling), device (default as for fvlm: cuda:LOCAL_RANK, else cpu), dtype, batch_size.
Undecodable videos are counted and answered with eval.errors.ERROR_RESPONSE, as for fvlm.
"""

from __future__ import annotations

from datetime import timedelta

import torch
from lmms_eval.api.instance import Instance
from num2words import num2words
from transformers.generation.streamers import BaseStreamer

from fvlm.errors import InputError
from fvlm.video import Clip, to_clip

from .base import FrameModel
from .errors import ERROR_LOGLIKELIHOOD, ERROR_RESPONSE, ErrorLog
from .requests import (
    DTYPES,
    Query,
    check_batch_size,
    cut_at,
    pick_device,
)
from .stats import RunStats, Stopwatch

DEFAULT_MODEL = "HuggingFaceTB/SmolVLM2-256M-Video-Instruct"
VIDEO_INTRO = "You are provided the following series of {count} frames from a {duration} [H:MM:SS] video.\n"
FRAME_LINE = "\nFrame from {minutes:02d}:{seconds:02d}:"


class _FirstToken(BaseStreamer):
    """generate() streams the prompt first, then each new token: the second put() is the first token."""

    def __init__(self, watch: Stopwatch) -> None:
        self.watch, self.calls = watch, 0

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2:
            self.watch.first()

    def end(self) -> None:
        """Nothing to flush: only the time of the first token is kept."""


def video_duration(path: str) -> float | None:
    """The container's duration in seconds (SmolVLM2's intro states it), or None if unknown."""
    import av

    with av.open(path) as container:
        return container.duration / 1e6 if container.duration else None


class SmolVLM2(FrameModel):
    is_simple = True

    def __init__(
        self,
        pretrained: str = DEFAULT_MODEL,
        max_frames: int | None = None,
        fps: float | None = None,
        device: str | None = None,
        dtype: str = "float32",
        batch_size: int | str = 1,
        max_batch_size: int | None = None,  # passed by lmms-eval; only fixed batch sizes are used
    ) -> None:
        super().__init__()
        from transformers import AutoModelForImageTextToText, AutoTokenizer, SmolVLMImageProcessorPil

        if dtype not in DTYPES:
            raise InputError(f"dtype={dtype!r}: use one of {', '.join(DTYPES)}")
        self.batch_size = check_batch_size(batch_size)
        self.model = AutoModelForImageTextToText.from_pretrained(pretrained, dtype=DTYPES[dtype])
        self.model.to(pick_device(device)).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(pretrained)
        self.tokenizer.padding_side = "left"
        self.processor = SmolVLMImageProcessorPil.from_pretrained(pretrained)
        sampling = getattr(self.processor, "video_sampling", None) or {}
        self.video_size = int(sampling.get("video_size", self.processor.max_image_size)["longest_edge"])
        self.max_frames = int(max_frames or sampling.get("max_frames", 64))
        self.fps = float(fps or sampling.get("fps", 1.0))
        vc = self.model.config.vision_config
        self.image_seq_len = int((vc.image_size // vc.patch_size) ** 2 // self.model.config.scale_factor**2)
        self.frame_prompt = ("<fake_token_around_image><global-img>" + "<image>" * self.image_seq_len
                             + "<fake_token_around_image>")
        stops = {self.tokenizer.convert_tokens_to_ids("<end_of_utterance>"), self.tokenizer.eos_token_id}
        self.eos_ids = sorted(i for i in stops if i is not None)
        self.name = f"smolvlm2[{pretrained}]"
        self.errors = ErrorLog(self.name)
        self.stats = RunStats()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def visual_tokens_per_frame(self) -> int:
        return self.image_seq_len

    # ---- inputs -------------------------------------------------------------------------------
    def clip(self, video) -> Clip:
        """Frames the SmolVLM2 way, decoded by fvlm (short side <= video_size: the processor then
        only scales down). A single image becomes one frame."""
        return to_clip(video, fps=self.fps, max_frames=self.max_frames, image_frames=1, max_side=self.video_size)

    def prompt(self, clip: Clip, question: str) -> str:
        duration = video_duration(clip.source) if isinstance(clip.source, str) and not clip.is_image else None
        duration = int(duration if duration is not None else clip.timestamps[-1])
        text = VIDEO_INTRO.format(count=num2words(len(clip.frames)), duration=timedelta(seconds=duration))
        for t in clip.timestamps:
            text += FRAME_LINE.format(minutes=int(t // 60), seconds=int(t % 60)) + self.frame_prompt
        return f"<|im_start|>User: {text}\n\n{question}<end_of_utterance>\nAssistant:"

    def _inputs(self, clips: list[Clip], texts: list[str]) -> dict:
        from PIL import Image

        pixels = self.processor(
            images=[[Image.fromarray(f) for f in c.frames] for c in clips], return_tensors="pt",
            do_image_splitting=False, size={"longest_edge": self.video_size},
            max_image_size={"longest_edge": self.video_size},
        )
        tokens = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"],
                "pixel_values": pixels["pixel_values"].to(self.model.dtype),
                "pixel_attention_mask": pixels["pixel_attention_mask"]}

    # ---- generation ---------------------------------------------------------------------------
    @torch.inference_mode()
    def _generate(self, queries: list[Query]) -> list[str]:
        watch = Stopwatch()
        clips = [self._decode(q) for q in queries]
        ok = [i for i, c in enumerate(clips) if c is not None]
        texts, tokens = [ERROR_RESPONSE] * len(queries), []
        ready = Stopwatch()
        if ok:
            q0 = queries[ok[0]]
            inputs = self._inputs([clips[i] for i in ok], [self.prompt(clips[i], queries[i].prompt) for i in ok])
            sampling = {"do_sample": True, "temperature": q0.temperature, "top_p": q0.top_p} if q0.temperature > 0 \
                else {"do_sample": False}
            out = self.model.generate(
                **{k: v.to(self.device) for k, v in inputs.items()}, max_new_tokens=q0.max_new_tokens,
                eos_token_id=self.eos_ids, pad_token_id=self.tokenizer.pad_token_id,
                streamer=_FirstToken(ready), **sampling,
            )
            new = out[:, inputs["input_ids"].shape[1]:]
            for i, text in zip(ok, self.tokenizer.batch_decode(new, skip_special_tokens=True)):
                texts[i] = cut_at(text, queries[i].until)
            tokens = [len(clips[i].frames) * self.image_seq_len for i in ok]
        self.stats.add([q.task for q in queries], watch.elapsed(), ready.first_at, tokens)
        return texts

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("multi-round tasks are not supported by this SmolVLM2 wrapper")

    # ---- likelihood ---------------------------------------------------------------------------
    @torch.inference_mode()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """(log p(continuation | video, context), greedy?): the continuation is the assistant's
        reply (" answer", as SmolVLM's template writes it); only its tokens are scored."""
        before = len(self.errors.errors)
        results = [ERROR_LOGLIKELIHOOD] * len(requests)
        for chunk, items in self.likelihood_chunks(requests):
            watch = Stopwatch()
            clips = [c for _, c, _, _ in items]
            if items:
                texts = [self.prompt(c, context) for _, c, context, _ in items]
                answers = [self.tokenizer(" " + a.lstrip(" "), add_special_tokens=False)["input_ids"]
                           for _, _, _, a in items]
                for (i, _, _, _), score in zip(items, self._score(clips, texts, answers)):
                    results[i] = score
            self.stats.add([requests[i].args[4] for i in chunk], watch.elapsed(), None,
                           [len(c.frames) * self.image_seq_len for c in clips])
        self.errors.log_summary("loglikelihood", len(requests), before)
        return results

    def _score(self, clips: list[Clip], prompts: list[str], answers: list[list[int]]) -> list[tuple[float, bool]]:
        """Left-padded [prompt + answer] rows: each row's answer tokens are its last ones."""
        inputs = self._inputs(clips, prompts)
        rows = [p[m.bool()].tolist() + a for p, m, a in zip(inputs["input_ids"], inputs["attention_mask"], answers)]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate() does for left padding
        logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                            position_ids=positions.to(self.device),
                            pixel_values=inputs["pixel_values"].to(self.device),
                            pixel_attention_mask=inputs["pixel_attention_mask"].to(self.device)).logits.float()
        scores = []
        for b, a in enumerate(answers):
            logp = logits[b, width - len(a) - 1 : width - 1].log_softmax(-1)  # predicts the answer tokens
            target = torch.tensor(a, device=logp.device)
            scores.append((float(logp.gather(1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all())))
        return scores
