"""ShapesQA task functions for lmms-eval (loaded by file path from the task YAMLs).

Loaded by path, this file belongs to no package: it imports the eval package that holds it under
the name the process already uses (`eval` in a clone that imported it so, e.g. the tests), else
under its installed name `fvlm_eval`, so no module is loaded twice under two names.
"""

import importlib
import math
import sys
from pathlib import Path

import datasets


def _package() -> str:
    here = Path(__file__).resolve().parents[2]  # <package>/tasks/shapesqa/utils.py
    clone = sys.modules.get("eval")
    if clone is not None and here in [Path(p).resolve() for p in getattr(clone, "__path__", [])]:
        return "eval"
    return "fvlm_eval"


_PKG = _package()
is_error_response = importlib.import_module(f"{_PKG}.errors").is_error_response
loglikelihood_value = importlib.import_module(f"{_PKG}.report").loglikelihood_value
is_correct = importlib.import_module(f"{_PKG}.shapesqa").is_correct
load_docs = importlib.import_module(f"{_PKG}.shapesqa").load_docs


def process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """The parameters row of shapesqa.jsonl -> the generated questions (cached after the first run)."""
    return datasets.Dataset.from_list(load_docs(dataset[0]))


def doc_to_visual(doc: dict) -> list[str]:
    return [doc["video"]]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kw = lmms_eval_specific_kwargs or {}
    return kw.get("pre_prompt", "") + doc["question"] + kw.get("post_prompt", "")


def doc_to_target(doc: dict) -> int:
    return doc["options"].index(doc["answer"])


def process_results(doc: dict, results: list[str]) -> dict:
    error = is_error_response(results[0])
    return {"acc": float(not error and is_correct(results[0], doc["answer"])), "errors": int(error)}


def process_results_mc(doc: dict, results: list) -> dict:
    lls = [loglikelihood_value(r) for r in results]
    if not all(math.isfinite(ll) for ll in lls):  # the model could not score this doc
        return {"acc": 0.0, "acc_norm": 0.0, "errors": 1}
    gold = doc_to_target(doc)
    per_char = [ll / len(c) for ll, c in zip(lls, doc["options"])]
    return {"acc": float(max(range(len(lls)), key=lls.__getitem__) == gold),
            "acc_norm": float(max(range(len(lls)), key=per_char.__getitem__) == gold), "errors": 0}


def total(values: list[int]) -> int:
    return int(sum(values))
