"""ShapesQA as an offline evaluation set: generated on demand, cached, and scored.

The lmms-eval tasks in eval/tasks/shapesqa/ load a one-line `shapesqa.jsonl` holding the
generation parameters; their `process_docs` swaps it for the real docs from `load_docs`, which
runs fvlm's ShapesQA generator (`fvlm.shapesqa.generate.make_shapes`, what `fvlm make-shapes` runs) the
first time and reuses the result afterwards:

    $FVLM_SHAPESQA_DIR (default ~/.cache/fvlm/shapesqa) / <key> / test / index.jsonl, videos/*.mp4

<key> hashes the parameters and the generator's source, so a changed generator never serves a
stale set. Captions are left out (free text, not exact-match scorable); every other question
type is scored by normalised exact match (generation) or by the likelihood of each option.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
from pathlib import Path

from filelock import FileLock

from fvlm.errors import ConfigError
from fvlm.shapesqa import generate

SCORED_QTYPES = tuple(q for q in generate.QTYPES if q != "caption")
OPTIONS = {
    "color": list(generate.COLORS),
    "shape": list(generate.SHAPES),
    "motion": ["left", "right", "up", "down"],
    "position": ["left", "right", "top", "bottom"],
    "count": [str(i) for i in range(9)],
    "digit": [str(i) for i in range(10)],
}
_FIRST = re.compile(r"Which appears first, the (.+) or the (.+)\?$")
_PARAMS = {"n": int, "seed": int, "split": str, "size": int, "seconds": float, "fps": int, "per_clip": int}


def cache_root() -> Path:
    return Path(os.environ.get("FVLM_SHAPESQA_DIR", Path.home() / ".cache" / "fvlm" / "shapesqa"))


def check_params(params: dict) -> dict:
    """The generation parameters of a task's shapesqa.jsonl row, typed; unknown keys are refused."""
    unknown = sorted(set(params) - set(_PARAMS))
    missing = sorted(set(_PARAMS) - set(params))
    if unknown or missing:
        raise ConfigError(f"ShapesQA task parameters: unknown {unknown}, missing {missing}; expected {sorted(_PARAMS)}")
    return {k: cast(params[k]) for k, cast in _PARAMS.items()}


def dataset_dir(params: dict) -> Path:
    """The generated test set for `params` (generated now if missing; safe across processes)."""
    params = check_params(params)
    source = inspect.getsource(generate)
    key = hashlib.sha1((json.dumps(params, sort_keys=True) + source).encode()).hexdigest()[:12]
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{params['split']}-n{params['n']}-seed{params['seed']}-{key}"
    with FileLock(str(final) + ".lock"):
        if not (final / "test" / "index.jsonl").is_file():
            tmp = root / f".{final.name}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            generate.make_shapes(tmp, params["n"], params["seed"], params["split"], "test",
                                  size=params["size"], seconds=params["seconds"], fps=params["fps"],
                                  per_clip=params["per_clip"], qtypes=SCORED_QTYPES, shards=False,
                                  progress=False)
            os.replace(tmp, final)
    return final / "test"


def options(question: str, qtype: str) -> list[str]:
    """The candidate answers of a question (likelihood scoring, eval.mcq)."""
    if qtype == "first":
        m = _FIRST.match(question)
        if m is None:
            raise ConfigError(f"cannot read the two objects of a 'first' question: {question!r}")
        return [m.group(1), m.group(2)]
    if qtype not in OPTIONS:
        raise ConfigError(f"ShapesQA question type {qtype!r} has no fixed answer options")
    return list(OPTIONS[qtype])


def load_docs(params: dict) -> list[dict]:
    """One doc per question: video (absolute path), question, answer, qtype, difficulty, clip, options."""
    root = dataset_dir(params)
    docs = []
    with open(root / "index.jsonl") as f:
        for line in f:
            r = json.loads(line)
            docs.append({"video": str(root / r["video"]), "question": r["question"], "answer": r["answer"],
                         "qtype": r["qtype"], "difficulty": r["difficulty"], "clip": r["clip"],
                         "options": options(r["question"], r["qtype"])})
    return docs


def normalize(text: str) -> str:
    """Lower case, first line, no punctuation at the ends, no leading article, digits for number words."""
    text = text.strip().split("\n")[0].lower().strip(" .!?,;:\"'")
    text = re.sub(r"^(the|a|an)\s+", "", re.sub(r"\s+", " ", text))
    words = {w: str(i) for i, w in enumerate(generate.NUMBER_WORDS)}
    return words.get(text, text)


def is_correct(prediction: str, answer: str) -> bool:
    return normalize(prediction) == normalize(answer)
