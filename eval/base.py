"""What the fvlm and SmolVLM2 lmms-eval models share: sampling a request's video (errors recorded,
never a silent ""), batched generate_until, the likelihood requests loop, and a clean() that keeps
the model loaded."""

from __future__ import annotations

import gc
from collections import defaultdict
from collections.abc import Iterator

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from fvlm.errors import InputError, VideoError
from fvlm.progress import Progress, track
from fvlm.video import Clip

from .errors import ERROR_RESPONSE, ErrorLog
from .requests import ClipCache, Query, batches, describe, simple_query, single_video


class FrameModel(lmms):
    """Subclasses set `name`, `errors` (ErrorLog), `batch_size`, and implement `clip(video)`,
    `device` and `_generate(queries)`."""

    name: str
    errors: ErrorLog
    batch_size: int

    def clip(self, video) -> Clip:
        raise NotImplementedError

    def _generate(self, queries: list[Query]) -> list[str]:
        raise NotImplementedError

    def clean(self) -> None:
        """Free cached memory but keep the model: lmms-eval's default deletes it after every
        evaluation, while eval.compare evaluates one loaded model in several modes."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _query(self, request: Instance) -> Query:
        return simple_query(request, self.task_dict)

    def _decode(self, q: Query) -> Clip | None:
        """The query's video as this model's sampler reads it, or None (error recorded)."""
        try:
            return self.clip(single_video(q.visuals))
        except (VideoError, InputError) as e:
            self.errors.add(q.task, q.doc_id, describe(q.visuals), e)
            return None

    def generate_until(self, requests: list[Instance]) -> list[str]:
        before = len(self.errors.errors)
        queries = [self._query(r) for r in requests]
        answers = [ERROR_RESPONSE] * len(queries)
        groups: dict[tuple, list[int]] = defaultdict(list)  # one generate() call per settings
        for i, q in enumerate(queries):
            groups[q.max_new_tokens, q.temperature, q.top_p].append(i)
        with Progress(len(queries), f"{self.name} generate", unit="requests", disable=self.rank != 0) as bar:
            for idx in groups.values():
                for chunk in batches(idx, self.batch_size):
                    for i, text in zip(chunk, self._generate([queries[i] for i in chunk])):
                        answers[i] = text
                    bar.update(len(chunk))
        self.errors.log_summary("generate_until", len(queries), before)
        return answers

    def likelihood_chunks(
        self, requests: list[Instance]
    ) -> Iterator[tuple[list[int], list[tuple[int, Clip, str, str]]]]:
        """loglikelihood's requests in chunks of batch_size: (the chunk's request indices, and per
        usable request (index, clip, context, continuation)); the others are recorded as errors."""
        clip = ClipCache(self.clip)
        chunks = list(batches(list(range(len(requests))), self.batch_size))
        for chunk in track(chunks, f"{self.name} loglikelihood", unit="batches", disable=self.rank != 0):
            items = []
            for i in chunk:
                context, continuation, doc_to_visual, doc_id, task, split = requests[i].args
                doc = self.task_dict[task][split][doc_id]
                visuals = list(doc_to_visual(doc) or [])
                try:
                    c = clip(single_video(visuals))
                except (VideoError, InputError) as e:
                    self.errors.add(task, doc_id, describe(visuals), e)
                    continue
                answer = continuation(doc) if callable(continuation) else continuation
                items.append((i, c, context, str(answer)))
            yield chunk, items
