"""lmms-eval requests -> plain queries: the plumbing both model wrappers share (fvlm, SmolVLM2).

Request tuples in lmms-eval 0.7.3 (`Instance.args`):
    simple generate_until  (context, gen_kwargs, doc_to_visual, doc_id, task, split)
    chat generate_until    (context, doc_to_messages, gen_kwargs, doc_id, task, split)
    loglikelihood          (context, continuation or doc_to_target, doc_to_visual, doc_id, task, split)
The doc is `model.task_dict[task][split][doc_id]` (filled by the evaluator before the calls).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from fvlm.errors import InputError, VideoError
from fvlm.video import Clip

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_MAX_NEW_TOKENS = 64


@dataclass
class Query:
    """One generation request, independent of lmms-eval's request format."""

    task: str
    doc_id: int
    prompt: str
    visuals: list  # as the task gives them: paths or PIL images
    max_new_tokens: int
    temperature: float
    top_p: float
    until: tuple[str, ...]


def generation_settings(gen_kwargs: dict) -> tuple[int, float, float, tuple[str, ...]]:
    """(max_new_tokens, temperature, top_p, until) from a task's generation kwargs; greedy unless
    do_sample is set with a temperature > 0."""
    until = gen_kwargs.get("until") or ()
    until = (until,) if isinstance(until, str) else tuple(u for u in until if u)
    temperature = float(gen_kwargs.get("temperature") or 0.0) if gen_kwargs.get("do_sample") else 0.0
    top_p = float(gen_kwargs.get("top_p") or 1.0) if temperature > 0 else 1.0
    return int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS), temperature, top_p, until


def simple_query(request, task_dict: dict) -> Query:
    context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
    visuals = doc_to_visual(task_dict[task][split][doc_id])
    return Query(task, doc_id, context, list(visuals or []), *generation_settings(gen_kwargs))


def chat_query(request, task_dict: dict) -> Query:
    """The prompt is the text of the user turns; the visual input the first video of the
    messages, else their images."""
    from lmms_eval.protocol import ChatMessages

    _context, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
    messages = ChatMessages(messages=doc_to_messages(task_dict[task][split][doc_id]))
    images, videos, _audios = messages.extract_media()
    prompt = "\n".join(c.text for m in messages.messages if m.role == "user"
                       for c in m.content if c.type == "text")
    return Query(task, doc_id, prompt, videos[:1] if videos else images, *generation_settings(gen_kwargs))


def single_video(visuals: list) -> object:
    """The one video of a request: a path, or a list of PIL images (the frames of one video)."""
    from PIL import Image

    if len(visuals) == 1 and isinstance(visuals[0], (str, Image.Image)):
        return visuals[0]
    if visuals and all(isinstance(v, Image.Image) for v in visuals):
        return visuals
    kinds = [type(v).__name__ for v in visuals]
    raise InputError(f"expected one video path or a list of frames, got {kinds or 'no visual input'}")


def describe(visuals: list) -> str:
    """A visual input for an error message: the path(s), else what it is."""
    if visuals and all(isinstance(v, str) for v in visuals):
        return ", ".join(visuals)
    return f"{len(visuals)} in-memory visual(s)"


def batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def cut_at(text: str, until: tuple[str, ...]) -> str:
    """The answer up to the first stop string, stripped."""
    for stop in until:
        text = text.split(stop)[0]
    return text.strip()


def check_batch_size(batch_size: int | str) -> int:
    if not str(batch_size).isdigit() or int(batch_size) < 1:
        raise InputError(f"batch_size={batch_size!r}: a positive integer is needed ('auto' is not supported)")
    return int(batch_size)


def pick_device(device: str | None) -> str:
    """`device` when given; else this process's GPU, cuda:LOCAL_RANK (torchrun and accelerate launch
    set LOCAL_RANK: one GPU per process; unset in a single process: cuda:0) when CUDA is available;
    else cpu."""
    if device:
        return device
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"


class ClipCache:
    """Decodes each video file once for consecutive requests on it (a multiple-choice doc sends one
    request per option); failures are cached too. In-memory frames are not cached."""

    def __init__(self, load: Callable[[object], Clip], size: int = 8) -> None:
        self.load = load
        self.size = size
        self._items: OrderedDict[str, Clip | VideoError] = OrderedDict()

    def __call__(self, video: object) -> Clip:
        if not isinstance(video, str):
            return self.load(video)
        if video not in self._items:
            try:
                self._items[video] = self.load(video)
            except VideoError as e:
                self._items[video] = e
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        hit = self._items[video]
        if isinstance(hit, VideoError):
            raise hit
        return hit
