"""Log-likelihood of an answer to a question about a video: what lmms-eval's `loglikelihood` and
the likelihood MCQ (eval.mcq) need.

The answer is the assistant's reply in the model's own chat format (training's SFT layout), so
the question sits where training put it and the visual tokens where the layout puts them. The
scored tokens are exactly those that spell the answer: the template's closing tokens (ChatML's
`<|im_end|>\n`, which are loss targets in training) are not part of a continuation and are left
out, as upstream fVLM's MCQ scorer did (it ignored `<|im_end|>` targets).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fvlm.batch import Sample
from fvlm.errors import InputError, PromptTooLongError
from fvlm.sequence import IGNORE_INDEX
from fvlm.video import Clip


@dataclass(frozen=True)
class AnswerScore:
    logprob: float  # sum of the log-probs of the answer's tokens
    num_tokens: int
    is_greedy: bool  # greedy decoding would produce exactly these tokens

    @property
    def mean_logprob(self) -> float:
        """Length-normalised score (upstream fVLM's MCQ criterion, = -mean cross-entropy)."""
        return self.logprob / self.num_tokens


def _find(needle: list[int], haystack: list[int]) -> int:
    """Index of the first occurrence of `needle` in `haystack`, or -1."""
    n = len(needle)
    return next((i for i in range(len(haystack) - n + 1) if haystack[i : i + n] == needle), -1)


def answer_sample(model, clip: Clip | None, question: str, answer: str) -> Sample:
    """A model input whose loss targets are exactly the tokens of `answer`.

    Leading spaces of `answer` are dropped: lmms-eval continuations carry the separator of a raw
    prompt (" A"), while in a chat the reply starts right after the assistant header.
    """
    text = answer.lstrip(" ")
    if not text:
        raise InputError(f"cannot score an empty answer (got {answer!r})")
    sample = model.sample(clip, question, text, loss="answer")
    chat = sample.chat
    length = len(chat) + sample.pixel_values.shape[0] * model.visual_tokens_per_frame
    if length > model.context_length:
        raise PromptTooLongError(f"question + frames + answer need {length} tokens but the LLM context is "
                                 f"{model.context_length}; shorten the prompt or lower max_frames")
    reply_start = len(chat.suffix_ids) - sum(chat.suffix_targets)  # loss="answer": the reply is the tail
    reply = chat.suffix_ids[reply_start:]
    own = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    at = _find(own, reply)
    if at < 0:
        raise InputError(f"the answer {text!r} tokenizes differently inside the chat template "
                         f"({reply} vs {own} alone); cannot tell which tokens to score")
    first = reply_start + at
    chat.suffix_targets = [first <= i < first + len(own) for i in range(len(chat.suffix_ids))]
    return sample


@torch.inference_mode()
def score_answers(model, samples: list[Sample], mode: str) -> list[AnswerScore]:
    """Score a batch of `answer_sample`s in one forward pass of `mode`."""
    batch = model.collate(samples).to(model.device, model.dtype)
    out = model(batch, mode=mode, return_hidden=True)
    labels = out.labels  # [B, L], -100 except where the next token is an answer token
    sel = labels != IGNORE_INDEX
    logits = model.llm.get_output_embeddings()(out.hidden[sel]).float()  # [M, V]
    targets = labels[sel]  # [M]
    token_logprob = logits.log_softmax(-1).gather(1, targets[:, None])[:, 0]  # [M]
    greedy = logits.argmax(-1) == targets  # [M]
    rows = sel.nonzero()[:, 0]  # [M] sample of each target
    scores = []
    for b in range(len(samples)):
        mine = rows == b
        scores.append(AnswerScore(float(token_logprob[mine].sum()), int(mine.sum()), bool(greedy[mine].all())))
    return scores
