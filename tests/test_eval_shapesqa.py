"""eval.shapesqa: the offline ShapesQA eval set (generated on demand, cached) and its scoring."""

import json

import pytest

from eval import shapesqa
from eval.tasks import TASKS_DIR
from fvlm.errors import ConfigError

PARAMS = {"n": 2, "seed": 3, "split": "mix", "size": 64, "seconds": 3.0, "fps": 4, "per_clip": 3}


def test_shipped_task_files_and_parameters():
    task_dir = TASKS_DIR / "shapesqa"
    assert {"shapesqa.yaml", "shapesqa_mc.yaml", "_default_template_yaml", "utils.py"} <= {
        p.name for p in task_dir.iterdir()}
    [row] = [json.loads(line) for line in (task_dir / "shapesqa.jsonl").read_text().splitlines()]
    assert shapesqa.check_params(row)["split"] == "mix"


def test_docs_are_generated_once_then_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("FVLM_SHAPESQA_DIR", str(tmp_path))
    docs = shapesqa.load_docs(PARAMS)
    assert 0 < len(docs) <= PARAMS["n"] * PARAMS["per_clip"]
    index = next(tmp_path.glob("*/test/index.jsonl"))
    stamp = index.stat().st_mtime_ns
    assert shapesqa.load_docs(PARAMS) == docs and index.stat().st_mtime_ns == stamp
    for d in docs:
        assert d["qtype"] != "caption" and d["answer"] in d["options"]
        assert d["video"].endswith(".mp4") and (tmp_path / d["video"]).is_file()
    assert not list(tmp_path.glob(".*tmp*")), "the temporary generation folder was left behind"


def test_bad_parameters_are_refused():
    with pytest.raises(ConfigError, match="unknown .*'colour'"):
        shapesqa.check_params({**PARAMS, "colour": 1})
    with pytest.raises(ConfigError, match="missing .*'seed'"):
        shapesqa.check_params({k: v for k, v in PARAMS.items() if k != "seed"})


def test_options_per_question_type():
    assert shapesqa.options("Which appears first, the red circle or the blue star?", "first") == [
        "red circle", "blue star"]
    assert "green" in shapesqa.options("What color is the star?", "color")
    assert shapesqa.options("How many stars are there?", "count")[:2] == ["0", "1"]
    with pytest.raises(ConfigError):
        shapesqa.options("Describe the video.", "caption")


@pytest.mark.parametrize("prediction, answer, ok", [
    ("Red.", "red", True), ("the red circle", "red circle", True), ("three", "3", True),
    ("3\nbecause", "3", True), ("red or blue", "red", False), ("", "red", False)])
def test_normalised_exact_match(prediction, answer, ok):
    assert shapesqa.is_correct(prediction, answer) is ok


def test_task_scoring_functions():
    import importlib.util

    spec = importlib.util.spec_from_file_location("shapesqa_utils", TASKS_DIR / "shapesqa" / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    doc = {"answer": "blue", "options": ["red", "blue", "green"]}
    assert utils.process_results(doc, ["Blue."]) == {"acc": 1.0, "errors": 0}
    assert utils.process_results(doc, ["[fvlm-eval-error]"]) == {"acc": 0.0, "errors": 1}
    # lmms-eval 0.7.3 hands loglikelihood results over as strings
    assert utils.process_results_mc(doc, ["(-3.0, False)", "(-1.0, True)", "(-2.0, False)"])["acc"] == 1.0
    assert utils.process_results_mc(doc, ["(-inf, False)"] * 3) == {"acc": 0.0, "acc_norm": 0.0, "errors": 1}
    assert utils.total([0, 1, 1]) == 2
