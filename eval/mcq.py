"""Upstream-style likelihood MCQ: length-normalised answer log-likelihood over lettered options,
in all three modes, so numbers compare with the published fVLM-135M table.

    python -m eval.mcq --tasks mvbench,videomme --pretrained DIR [--video_root DIR] [--out mcq.json]
    python -m eval.mcq --tasks shapesqa_mc --limit 50           # offline

For each item the user turn is the question plus its options, one per line ("A. text"); each
candidate answer is "X. text" as the assistant's reply; its score is the mean log-prob of its own
tokens (eval.likelihood: upstream fVLM took the argmin of the mean cross-entropy over the answer
tokens, its `<|im_end|>` ignored); the prediction is the best-scoring option. Accuracy is over all
items: a video that cannot be decoded makes the item wrong in every mode, and is counted.

Items come from lmms-eval tasks, so the docs and video paths are those of the generation runs:
MVBench (`candidates` + answer text), Video-MME (`options` "A. ..." + answer letter), MLVU
("(A) ..." lines in the question + answer letter) and ShapesQA (`options` + answer text).
Published fVLM-135M (upstream's harness and shards; coarse_only / coarse_fine / autoregressive):
MVBench 27.4 / 28.0 / 27.9, Video-MME 26.2 / 29.5 / 28.7.
"""

from __future__ import annotations

import argparse
import json
import re
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fvlm.config import MODES
from fvlm.progress import track

from .video_root import apply_video_root

_LETTERED = re.compile(r"^\(?([A-Z])[.)]\s*(.*)$")
_MLVU_OPTION = re.compile(r"^\(([A-Z])\)\s*(.+)$")


@dataclass(frozen=True)
class McqItem:
    question: str
    options: tuple[str, ...]
    gold: int

    def prompt(self) -> str:
        return self.question + "\n" + "\n".join(f"{string.ascii_uppercase[i]}. {o}" for i, o in enumerate(self.options))

    def answers(self) -> list[str]:
        return [f"{string.ascii_uppercase[i]}. {o}" for i, o in enumerate(self.options)]


def _gold(answer: str, options: list[str]) -> int:
    """The answer as an option index: the option's text, a letter ("B", "(B)", "B.") or "B. text"."""
    letters = string.ascii_uppercase[: len(options)]
    if answer in options:
        return options.index(answer)
    bare = answer.strip("().: ")
    if len(bare) == 1 and bare in letters:
        return letters.index(bare)
    m = _LETTERED.match(answer)
    if m and m.group(1) in letters and m.group(2) == options[letters.index(m.group(1))]:
        return letters.index(m.group(1))
    raise ValueError(f"answer {answer!r} is neither an option nor an option letter of {options}")


def mcq_item(doc: dict) -> McqItem:
    """Question, options and gold index of a benchmark doc (MVBench, Video-MME, MLVU, ShapesQA)."""
    question, answer = doc["question"].strip(), str(doc["answer"]).strip()
    if doc.get("candidates"):  # MVBench (MLVU too, in some versions)
        options = [str(c) for c in doc["candidates"]]
    elif doc.get("options"):  # Video-MME: "A. text"; ShapesQA: plain text
        options = [str(o) for o in doc["options"]]
        parsed = [_LETTERED.match(o) for o in options]
        if all(m and m.group(1) == string.ascii_uppercase[i] for i, m in enumerate(parsed)):
            options = [m.group(2) for m in parsed]
    else:  # MLVU: "(A) text" lines inside the question
        lines = question.split("\n")
        found = [(i, _MLVU_OPTION.match(line.strip())) for i, line in enumerate(lines)]
        found = [(i, m) for i, m in found if m]
        if not found:
            raise ValueError(f"cannot find answer options in the doc (keys {sorted(doc)})")
        options = [m.group(2) for _, m in found]
        question = "\n".join(lines[: found[0][0]]).strip()
    return McqItem(question, tuple(options), _gold(answer, options))


@dataclass
class ModeResult:
    n: int = 0
    correct: int = 0
    errors: int = 0

    @property
    def accuracy(self) -> float:
        return 100 * self.correct / self.n if self.n else float("nan")


@dataclass
class TaskResult:
    task: str
    modes: dict[str, ModeResult] = field(default_factory=dict)


def leaf_tasks(names: list[str], task_manager) -> list:
    """(name, task object) of every task in `names`, groups expanded."""
    from lmms_eval.evaluator_utils import get_task_list
    from lmms_eval.tasks import get_task_dict

    return [(t.task_name, t.task) for t in get_task_list(get_task_dict(names, task_manager)) if t.task is not None]


def score_task(model, name: str, task, modes: list[str], limit: int | None) -> TaskResult:
    """Every (limited) doc of one lmms-eval task, in every mode."""
    from loguru import logger

    from fvlm.errors import InputError, VideoError

    from .likelihood import answer_sample, score_answers
    from .requests import describe, single_video

    result = TaskResult(name, {m: ModeResult() for m in modes})
    docs = task.eval_docs
    n = len(docs) if limit is None else min(limit, len(docs))
    for doc_id in track(range(n), f"mcq {name}", unit="docs"):
        doc = docs[doc_id]
        item = mcq_item(doc)
        visuals = list(task.doc_to_visual(doc) or [])
        try:
            clip = model.clip(single_video(visuals))
            samples = [answer_sample(model, clip, item.prompt(), a) for a in item.answers()]
        except (VideoError, InputError) as e:
            logger.warning(f"mcq {name} doc {doc_id} ({describe(visuals)}) scored wrong: {type(e).__name__}: {e}")
            for r in result.modes.values():
                r.n, r.errors = r.n + 1, r.errors + 1
            continue
        for mode in modes:
            scores = [s.mean_logprob for s in score_answers(model, samples, mode)]
            r = result.modes[mode]
            r.n += 1
            r.correct += int(max(range(len(scores)), key=scores.__getitem__) == item.gold)
    return result


def markdown(results: list[TaskResult], modes: list[str]) -> str:
    lines = ["| task | n | errors | " + " | ".join(f"{m} %" for m in modes) + " |",
             "|---|---:|---:|" + "---:|" * len(modes)]
    for t in results:
        first = t.modes[modes[0]]
        lines.append(f"| {t.task} | {first.n} | {first.errors} | "
                     + " | ".join(f"{t.modes[m].accuracy:.1f}" for m in modes) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> list[TaskResult]:
    from lmms_eval.tasks import TaskManager

    import fvlm

    from .tasks import TASKS_DIR

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - set(MODES):
        raise SystemExit(f"--modes {args.modes!r}: choose from {', '.join(MODES)}")
    task_manager = TaskManager("WARNING", include_path=[str(TASKS_DIR), *args.include_path])
    model = fvlm.load(args.pretrained, device=args.device)
    if args.max_frames is not None:
        model.config.max_frames = args.max_frames
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    results = [score_task(model, name, task, modes, args.limit) for name, task in leaf_tasks(names, task_manager)]
    table = markdown(results, modes)
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "pretrained": args.pretrained or "shipped default (fvlm.load())", "limit": args.limit, "modes": modes,
            "tasks": [{"task": t.task, **{m: {**asdict(r), "accuracy": r.accuracy} for m, r in t.modes.items()}}
                      for t in results],
        }, indent=2))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.mcq", description=__doc__.split("\n")[0],
                                epilog=__doc__.split("\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="shapesqa_mc", help="comma-separated lmms-eval tasks or groups")
    p.add_argument("--pretrained", default=None, help="a saved fvlm directory (default: the shipped model)")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--limit", type=int, default=None, help="docs per task (default all)")
    p.add_argument("--max_frames", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--include_path", action="append", default=[], help="extra lmms-eval task directory (repeatable)")
    p.add_argument("--video_root", default=None, help="benchmark videos laid out as under $HF_HOME (eval/README.md)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.video_root:
        apply_video_root(args.video_root)
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
