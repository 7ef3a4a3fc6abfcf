"""Accuracy over all items, next to lmms-eval's own aggregate, from an lmms-eval run.

lmms-eval's MVBench aggregate divides by answered items only: an empty answer leaves the
denominator, which can inflate the score. Here every item counts; an empty answer, an error
marker (eval.errors) or an answer no option letter can be read from is wrong. Both numbers are
shown, plus the accuracy over answered items, so the difference is visible.

    python -m eval.report OUTPUT_DIR     # the --output_path of `python -m lmms_eval ... --log_samples`

Per-sample correctness is read from the sample's first metric: a number (ShapesQA's `acc`), a
dict with `score` (MVBench, Video-MME) or with `pred_answer` and `answer` (MLVU).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import is_error_response

_PAIR = re.compile(r"^\(\s*([^,]+),\s*(True|False)\s*\)$")


def loglikelihood_value(result) -> float:
    """The log-likelihood of one (logprob, is_greedy) result. lmms-eval 0.7.3 passes loglikelihood
    results on as their str(), e.g. "(-3.2, False)" or "(-inf, False)"."""
    if isinstance(result, str):
        m = _PAIR.match(result.strip())
        if m is None:
            raise ValueError(f"not a (logprob, is_greedy) result: {result!r}")
        return float(m.group(1))
    return float(result[0])


def response_state(sample: dict) -> str:
    """'error' (the model could not answer), 'empty' (answered "") or 'answered'."""
    responses = sample.get("filtered_resps") or []
    if isinstance(responses, str):  # lmms-eval 0.7.3 logs a generation task's single answer unwrapped
        responses = [responses]
    if any(is_error_response(r) for r in responses):
        return "error"
    if len(responses) > 1:  # a multiple-choice doc: one log-likelihood per option
        return "answered" if all(math.isfinite(loglikelihood_value(r)) for r in responses) else "error"
    if not responses or (isinstance(responses[0], str) and not responses[0].strip()):
        return "empty"
    return "answered"


def sample_score(sample: dict, metric: str) -> float:
    """1.0 if the sample was answered correctly under `metric`, else 0.0 (or a partial score)."""
    value = sample[metric]
    if isinstance(value, dict):
        if "score" in value:
            return float(value["score"])
        if "pred_answer" in value and "answer" in value:
            return float(value["pred_answer"] == value["answer"])
        raise ValueError(f"cannot read a per-sample score from {metric!r} = {value!r}")
    return float(value)


@dataclass
class TaskReport:
    task: str
    metric: str
    lmms_value: float | None  # lmms-eval's aggregate as it reports it (its own scale), None for pools
    n: int
    correct: float
    answered: int
    errors: int

    @property
    def accuracy(self) -> float:
        """Percent correct over all items."""
        return 100 * self.correct / self.n if self.n else float("nan")

    @property
    def answered_accuracy(self) -> float:
        """Percent correct over answered items only (MVBench's lmms-eval aggregate)."""
        return 100 * self.correct / self.answered if self.answered else float("nan")


def main_metric(results: dict, task: str) -> str:
    return results["configs"][task]["metric_list"][0]["metric"]


def task_report(results: dict, task: str, samples: list[dict]) -> TaskReport:
    metric = main_metric(results, task)
    states = [response_state(s) for s in samples]
    value = results["results"].get(task, {}).get(f"{metric},none")
    return TaskReport(task, metric, None if value is None else float(value), len(samples),
                      sum(sample_score(s, metric) for s in samples), states.count("answered"),
                      states.count("error"))


def pooled(name: str, parts: list[TaskReport]) -> TaskReport:
    metrics = sorted({p.metric for p in parts})
    return TaskReport(name, "/".join(metrics), None, sum(p.n for p in parts), sum(p.correct for p in parts),
                      sum(p.answered for p in parts), sum(p.errors for p in parts))


def reports(results: dict, samples: dict[str, list[dict]]) -> list[TaskReport]:
    """One row per evaluated task, then one pooled row per group (e.g. all MVBench subtasks)."""
    rows = {task: task_report(results, task, samples[task]) for task in samples}
    out = list(rows.values())
    for group, subtasks in results.get("group_subtasks", {}).items():
        parts = [rows[t] for t in subtasks if t in rows]
        if parts:
            out.append(pooled(f"{group} (pooled)", parts))
    return out


def load_run(output_dir: str | Path) -> tuple[dict, dict[str, list[dict]]]:
    """The newest results JSON under an lmms-eval --output_path and its samples files."""
    found = sorted(Path(output_dir).rglob("*_results.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no *_results.json under {output_dir}; was lmms-eval run with --output_path?")
    path = found[-1]
    results = json.loads(path.read_text())
    stamp = path.name[: -len("_results.json")]
    samples = {}
    for task in results["results"]:
        file = path.parent / f"{stamp}_samples_{task}.jsonl"
        if file.is_file():
            samples[task] = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    if not samples:
        raise FileNotFoundError(f"no samples next to {path}; rerun lmms-eval with --log_samples")
    return results, samples


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def markdown(rows: list[TaskReport]) -> str:
    lines = ["| task | metric | n | answered | errors | lmms-eval aggregate | acc over answered % | acc over all items % |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.task} | {r.metric} | {r.n} | {r.answered} | {r.errors} | {_fmt(r.lmms_value, 4)} "
                     f"| {_fmt(r.answered_accuracy)} | {_fmt(r.accuracy)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.report", description=__doc__.split("\n")[0])
    parser.add_argument("output_dir", type=Path, help="lmms-eval's --output_path (run with --log_samples)")
    args = parser.parse_args(argv)
    print(markdown(reports(*load_run(args.output_dir))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
