"""Samples a model could not answer: each one is logged, counted, and answered with a marker.

A benchmark must never see a silent "" for a video that could not be decoded: MVBench's aggregate
drops empty answers from its denominator, so "" would quietly raise the score. Instead the model
answers `ERROR_RESPONSE`, which every scorer we use reads as a wrong answer (it contains no option
letter), logs the file and the reason, and keeps a count per task that eval.compare and
eval.report print. Likelihood requests that fail return `ERROR_LOGLIKELIHOOD` (-inf, not greedy).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from loguru import logger

ERROR_RESPONSE = "[fvlm-eval-error]"
ERROR_LOGLIKELIHOOD = (float("-inf"), False)


def is_error_response(response: object) -> bool:
    """True for the marker a model returns instead of an answer it could not produce."""
    return isinstance(response, str) and response.strip() == ERROR_RESPONSE


@dataclass(frozen=True)
class SampleError:
    task: str
    doc_id: int
    source: str  # the video path (or a description of the visual input)
    kind: str  # exception class name
    message: str


class ErrorLog:
    """The samples a model could not answer during an evaluation, with a count per task."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name
        self.errors: list[SampleError] = []
        self._seen: set[tuple[str, int]] = set()

    def add(self, task: str, doc_id: int, source: str, error: Exception) -> None:
        """Record a sample (task, doc) that could not be answered; a doc's other requests (its
        options, in a multiple-choice task) add nothing new."""
        if (task, int(doc_id)) in self._seen:
            return
        self._seen.add((task, int(doc_id)))
        entry = SampleError(task, int(doc_id), source, type(error).__name__, str(error))
        self.errors.append(entry)
        logger.warning(f"{self.model_name}: {task} doc {doc_id} ({source}) not answered: "
                       f"{entry.kind}: {entry.message}")

    def counts(self) -> Counter:
        """Samples not answered, per task."""
        return Counter(e.task for e in self.errors)

    def log_summary(self, what: str, total: int, before: int) -> None:
        """Log how many of the `total` requests just served failed (`before` = count at the start)."""
        new = len(self.errors) - before
        if new:
            logger.warning(f"{self.model_name}: {new} samples of {total} {what} requests could not be answered "
                           f"(scored as wrong); first: {self.errors[before].source}: {self.errors[before].message}")
