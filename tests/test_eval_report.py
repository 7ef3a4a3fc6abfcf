"""Scoring helpers: accuracy over all items (eval.report), MCQ items (eval.mcq), the error marker."""

import math

import pytest

from eval.errors import ERROR_RESPONSE, ErrorLog, is_error_response
from eval.mcq import McqItem, mcq_item
from eval.report import TaskReport, loglikelihood_value, reports, response_state, sample_score


def test_error_marker_scores_wrong_under_stock_benchmark_scorers():
    pytest.importorskip("lmms_eval")
    from lmms_eval.tasks._task_utils.mcq_extract import extract_mcq_answer
    from lmms_eval.tasks.mvbench.utils import mcq_acc, mvbench_process_results

    assert extract_mcq_answer(ERROR_RESPONSE, choices=list("ABCD")) == ""  # Video-MME, MLVU
    assert all(mcq_acc(letter, ERROR_RESPONSE) == 0 for letter in "ABCDE")
    doc = {"candidates": ["x", "y"], "answer": "x"}
    scored = mvbench_process_results(doc, [ERROR_RESPONSE])["mvbench_accuracy"]
    assert scored["score"] == 0 and scored["pred_answer"] != ""  # counted in MVBench's denominator


def test_error_log_counts_each_doc_once():
    log = ErrorLog("m")
    for _ in range(3):  # a multiple-choice doc fails once per option
        log.add("t", 4, "a.mp4", ValueError("broken"))
    log.add("t", 5, "b.mp4", ValueError("broken"))
    assert log.counts() == {"t": 2} and log.errors[0].kind == "ValueError"
    assert is_error_response(f" {ERROR_RESPONSE}\n") and not is_error_response("A")


def test_loglikelihood_results_as_lmms_eval_passes_them():
    assert loglikelihood_value("(-3.25, False)") == -3.25
    assert loglikelihood_value("(-inf, False)") == -math.inf
    assert loglikelihood_value((-1.5, True)) == -1.5
    with pytest.raises(ValueError):
        loglikelihood_value("A")


@pytest.mark.parametrize("sample, metric, score", [
    ({"acc": 1.0}, "acc", 1.0),
    ({"mvbench_accuracy": {"pred_answer": "B", "gt_answer": "A", "score": 0}}, "mvbench_accuracy", 0.0),
    ({"videomme_perception_score": {"pred_answer": "C", "answer": "C", "score": 1.0}}, "videomme_perception_score", 1.0),
    ({"mlvu_percetion_score": {"pred_answer": "D", "answer": "D"}}, "mlvu_percetion_score", 1.0),
])
def test_per_sample_scores(sample, metric, score):
    assert sample_score(sample, metric) == score


def test_all_items_accuracy_counts_empty_and_errors_as_wrong():
    """MVBench-style: lmms-eval's aggregate divides by answered items; ours by all items."""
    def s(resp, score):
        return {"filtered_resps": [resp], "mvbench_accuracy": {"pred_answer": resp, "score": score}}

    samples = {"mvbench_a": [s("A", 1), s("", 0), s(ERROR_RESPONSE, 0), s("B", 0)]}
    results = {"configs": {"mvbench_a": {"metric_list": [{"metric": "mvbench_accuracy"}]}},
               "results": {"mvbench_a": {"mvbench_accuracy,none": 100 / 3}},
               "group_subtasks": {"mvbench": ["mvbench_a"]}}
    row, pool = reports(results, samples)
    assert (row.n, row.answered, row.errors) == (4, 2, 1)
    assert row.accuracy == 25.0 and row.answered_accuracy == 50.0 and row.lmms_value == pytest.approx(33.33, 0.01)
    assert pool.task == "mvbench (pooled)" and pool.accuracy == 25.0 and pool.lmms_value is None
    assert response_state({"filtered_resps": ["(-1.0, False)", "(-inf, False)"]}) == "error"
    # a generation task's answer as lmms-eval 0.7.3 logs it: the string itself, not a list
    assert response_state({"filtered_resps": "red"}) == "answered"
    assert response_state({"filtered_resps": ""}) == "empty"
    assert math.isnan(TaskReport("t", "acc", None, 0, 0, 0, 0).accuracy)


@pytest.mark.parametrize("doc, item", [
    ({"question": "What happens?", "candidates": ["sit", "run"], "answer": "run"},  # MVBench
     McqItem("What happens?", ("sit", "run"), 1)),
    ({"question": "Who?", "options": ["A. cat", "B. dog", "C. cow", "D. owl"], "answer": "C"},  # Video-MME
     McqItem("Who?", ("cat", "dog", "cow", "owl"), 2)),
    ({"question": "Count them.\n(A) 1\n(B) 2\n(C) 3", "answer": "(B)"},  # MLVU
     McqItem("Count them.", ("1", "2", "3"), 1)),
    ({"question": "What color?", "options": ["red", "blue"], "answer": "blue"},  # ShapesQA
     McqItem("What color?", ("red", "blue"), 1)),
])
def test_mcq_items_from_benchmark_docs(doc, item):
    assert mcq_item(doc) == item


def test_mcq_prompt_and_answers_are_lettered():
    item = McqItem("Which way?", ("left", "up"), 1)
    assert item.prompt() == "Which way?\nA. left\nB. up"
    assert item.answers() == ["A. left", "B. up"]
    with pytest.raises(ValueError, match="options"):
        mcq_item({"question": "No options here", "answer": "A"})
