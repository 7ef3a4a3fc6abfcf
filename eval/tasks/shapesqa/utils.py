"""ShapesQA task functions for lmms-eval (loaded by file path from the task YAMLs)."""

import math

import datasets

from eval.errors import is_error_response
from eval.report import loglikelihood_value
from eval.shapesqa import is_correct, load_docs


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
