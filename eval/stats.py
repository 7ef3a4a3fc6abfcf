"""What an evaluation run costs: time per sample, time to first token, visual tokens, peak memory.

Both lmms-eval wrappers (eval.lmms_model, eval.smolvlm) record into a `RunStats` as they serve
requests; eval.compare reads it after each run and measures memory around the run with
`PeakMemory`, so every number in its table comes from the same process on the same machine.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class TaskStats:
    requests: int = 0  # a multiple-choice doc sends one request per option
    seconds: float = 0.0  # wall time serving the requests, video decoding included
    first_token_s: list[float] = field(default_factory=list)  # per generated sample: inputs ready -> first token
    visual_tokens: list[int] = field(default_factory=list)  # per answered request: frames x tokens per frame

    @property
    def mean_first_token_s(self) -> float:
        return sum(self.first_token_s) / len(self.first_token_s) if self.first_token_s else float("nan")

    @property
    def mean_visual_tokens(self) -> float:
        return sum(self.visual_tokens) / len(self.visual_tokens) if self.visual_tokens else float("nan")


class RunStats:
    """Per-task statistics of the requests a model served."""

    def __init__(self) -> None:
        self.tasks: dict[str, TaskStats] = defaultdict(TaskStats)

    def add(self, tasks: list[str], seconds: float, first_token_s: float | None,
            visual_tokens: list[int]) -> None:
        """One batch: its tasks (one per request), wall time, time to first token (generation) and,
        per answered request, its visual token count (failed requests have none)."""
        for task in tasks:
            s = self.tasks[task]
            s.requests += 1
            s.seconds += seconds / len(tasks)
        for task, n in zip(tasks, visual_tokens):
            self.tasks[task].visual_tokens.append(n)
            if first_token_s is not None:
                self.tasks[task].first_token_s.append(first_token_s)


class Stopwatch:
    """Wall time since creation, and since creation until `first()` was first called."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first_at: float | None = None

    def first(self) -> None:
        if self.first_at is None:
            self.first_at = time.perf_counter() - self.start

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def _status_kb(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field_name}")


def _lifetime_peak_bytes() -> int:
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


class PeakMemory:
    """Peak memory of a block above its start, in MB.

    CUDA: torch.cuda.max_memory_allocated (reset at the start). CPU on Linux: the peak resident set
    size, VmHWM, after resetting it through /proc/self/clear_refs, minus the RSS at the start; so it
    is the transient memory of the run (activations, decoded frames, caches), not the weights.
    Elsewhere on CPU the peak cannot be reset: the growth of the process's lifetime peak RSS
    (ru_maxrss) is reported instead, a lower bound, and `method` says so.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.linux = Path("/proc/self/clear_refs").exists()
        if self.cuda:
            self.method = "cuda max_memory_allocated above start"
        elif self.linux:
            self.method = "cpu peak RSS (VmHWM, reset via /proc/self/clear_refs) above start"
        else:
            self.method = "cpu growth of the lifetime peak RSS (ru_maxrss): a lower bound"
        self.peak_mb = float("nan")

    def __enter__(self) -> PeakMemory:  # noqa: PYI034 (typing.Self needs Python 3.11)
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        elif self.linux:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self._start = _status_kb("VmRSS") * 1024
        else:
            self._start = _lifetime_peak_bytes()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        elif self.linux:
            peak = _status_kb("VmHWM") * 1024
        else:
            peak = _lifetime_peak_bytes()
        self.peak_mb = (peak - self._start) / 2**20
