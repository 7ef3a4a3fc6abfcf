"""fvlm as an lmms-eval model: `FVLM` (simple request format) and `FVLMChat` (chat format).

    python -m lmms_eval --model fvlm --model_args pretrained=sanps/fVLM-135M,mode=coarse_fine ...
    evaluator.simple_evaluate(model=FVLM(pretrained=DIR, mode="autoregressive"), tasks=[...], ...)

Model args (`--model_args k=v,...`):
    pretrained   a saved model directory or a hub id owner/name[@revision] (fvlm.load: fvlm's format
                 or upstream fVLM's); default: the model shipped in the package
    mode         coarse_only | coarse_fine (default) | autoregressive
    max_frames   frame cap of the sampler (default: the checkpoint's config, 64)
    device       cpu | cuda | cuda:N (default: cuda:LOCAL_RANK when available: one GPU per process
                 under torchrun / accelerate launch; else cpu)
    dtype        float32 (default) | bfloat16 | float16
    batch_size   requests per forward pass (lmms-eval's --batch_size)

Videos are decoded by fvlm's own sampler (`model.clip`: 1 fps, <= max_frames, spread over the
whole video), so eval frames match training. A request whose video cannot be used is logged,
counted in `self.errors` and answered with eval.errors.ERROR_RESPONSE, never a silent "".
`generate_until` serves both request formats; `loglikelihood` (multiple-choice tasks) scores
exactly the continuation's tokens (eval.likelihood) in the same mode.
"""

from __future__ import annotations

import torch
from lmms_eval.api.instance import Instance

import fvlm
from fvlm.config import MODES
from fvlm.errors import FVLMError, InputError
from fvlm.generation import TextEvent
from fvlm.video import Clip

from .base import FrameModel
from .errors import ERROR_LOGLIKELIHOOD, ERROR_RESPONSE, ErrorLog
from .likelihood import answer_sample, score_answers
from .requests import (
    DTYPES,
    Query,
    chat_query,
    check_batch_size,
    cut_at,
    describe,
    pick_device,
)
from .stats import RunStats, Stopwatch


class FVLM(FrameModel):
    is_simple = True

    def __init__(
        self,
        pretrained: str | None = None,
        mode: str = "coarse_fine",
        max_frames: int | None = None,
        device: str | None = None,
        dtype: str = "float32",
        batch_size: int | str = 1,
        max_batch_size: int | None = None,  # passed by lmms-eval; only fixed batch sizes are used
        model=None,  # Python use: an already loaded fvlm model (then pretrained must be None)
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise InputError(f"mode={mode!r}: use one of {', '.join(MODES)}")
        if dtype not in DTYPES:
            raise InputError(f"dtype={dtype!r}: use one of {', '.join(DTYPES)}")
        if model is not None and pretrained is not None:
            raise InputError("pass either pretrained= (a directory or hub id) or model= (a loaded model), not both")
        self.batch_size = check_batch_size(batch_size)
        model = model if model is not None else fvlm.load(pretrained)
        self.model = model.to(pick_device(device), DTYPES[dtype]).eval()
        if max_frames is not None:
            if int(max_frames) < 1:
                raise InputError(f"max_frames={max_frames!r}: must be >= 1")
            self.model.config.max_frames = int(max_frames)
        self.mode = mode
        self.name = f"fvlm[{mode}]"
        self.errors = ErrorLog(self.name)
        self.stats = RunStats()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def visual_tokens_per_frame(self) -> int:
        return self.model.visual_tokens_per_frame

    def clip(self, video) -> Clip:
        return self.model.clip(video)

    def _generate(self, queries: list[Query]) -> list[str]:
        """One batch with the same generation settings; failed samples get ERROR_RESPONSE."""
        watch = Stopwatch()
        clips = [self._decode(q) for q in queries]
        ok = [i for i, c in enumerate(clips) if c is not None]
        texts, tokens = [ERROR_RESPONSE] * len(queries), []
        ready = Stopwatch()  # the inputs are decoded: time to first token starts here
        if ok:
            q0 = queries[ok[0]]
            try:
                outs = self.model.generate(
                    [clips[i].frames for i in ok], [queries[i].prompt for i in ok], mode=self.mode,
                    max_new_tokens=q0.max_new_tokens, temperature=q0.temperature, top_p=q0.top_p,
                    return_attention=False, callback=lambda e: ready.first() if isinstance(e, TextEvent) else None,
                )
            except FVLMError as e:
                if len(ok) > 1:  # one sample spoils the batch (e.g. a prompt too long): one by one
                    return [text for q in queries for text in self._generate([q])]
                self.errors.add(q0.task, q0.doc_id, describe(q0.visuals), e)
            else:
                for i, out in zip(ok, outs):
                    texts[i] = cut_at(out.text, queries[i].until)
                tokens = [len(clips[i].frames) * self.visual_tokens_per_frame for i in ok]
        self.stats.add([q.task for q in queries], watch.elapsed(), ready.first_at, tokens)
        return texts

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("fvlm answers single-turn questions; multi-round tasks are not supported")

    # ---- likelihood ---------------------------------------------------------------------------
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """(log p(continuation | video, context), greedy?) per request. The continuation is the
        assistant's reply; only its own tokens are scored (eval.likelihood)."""
        before = len(self.errors.errors)
        results = [ERROR_LOGLIKELIHOOD] * len(requests)
        for chunk, items in self.likelihood_chunks(requests):
            watch = Stopwatch()
            samples, where, tokens = [], [], []
            for i, clip, context, answer in items:
                try:
                    samples.append(answer_sample(self.model, clip, context, answer))
                except InputError as e:  # e.g. the context does not fit the LLM
                    _, _, doc_to_visual, doc_id, task, split = requests[i].args
                    self.errors.add(task, doc_id, clip.source, e)
                    continue
                where.append(i)
                tokens.append(len(clip.frames) * self.visual_tokens_per_frame)
            if samples:
                for i, s in zip(where, score_answers(self.model, samples, self.mode)):
                    results[i] = (s.logprob, s.is_greedy)
            self.stats.add([requests[i].args[4] for i in chunk], watch.elapsed(), None, tokens)
        self.errors.log_summary("loglikelihood", len(requests), before)
        return results


class FVLMChat(FVLM):
    """The chat request format (doc_to_messages); generation tasks only, as in lmms-eval. The
    prompt is the user turns' text; fvlm adds its own system prompt, as in training."""

    is_simple = False

    def _query(self, request: Instance) -> Query:
        return chat_query(request, self.task_dict)
