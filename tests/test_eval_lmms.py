"""fvlm through lmms-eval 0.7.3: the entry point, the real CLI, simple_evaluate, both request
formats, and an undecodable video counted as an error (never a silent "")."""

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")  # safety net only: CI installs lmms-eval (see eval/README.md)

from lmms_eval import evaluator
from lmms_eval.tasks import TaskManager

import fvlm
from eval.errors import ERROR_RESPONSE
from eval.lmms_model import FVLM, FVLMChat
from eval.report import reports
from eval.tasks import TASKS_DIR

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    """The shipped ShapesQA task's data, generated once per session (shared cache folder)."""
    root = tmp_path_factory.getbasetemp() / "shapesqa-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FVLM_SHAPESQA_DIR", str(root))
        yield root


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from fvlm.tiny import tiny_model

    return tiny_model(seed=1, max_frames=4).save_pretrained(tmp_path_factory.mktemp("tiny-fvlm"))


@pytest.fixture(scope="module")
def task_manager(shapes_dir):
    return TaskManager("WARNING", include_path=[str(TASKS_DIR)])


def run(lm, tasks, task_manager, limit):
    return evaluator.simple_evaluate(model=lm, tasks=tasks, task_manager=task_manager, limit=limit,
                                     log_samples=True, bootstrap_iters=0, verbosity="WARNING")


def test_entry_point_registers_the_models():
    from lmms_eval.models import get_model

    declared = [ep for ep in entry_points(group="lmms_eval.models") if ep.value == "fvlm_eval.plugin:manifests"]
    assert declared, ('the lmms_eval.models entry point is not installed: pyproject.toml needs '
                      '[project.entry-points."lmms_eval.models"] fvlm = "fvlm_eval.plugin:manifests", '
                      'then pip install -e .')
    # the classes of the installed name the entry point uses (a clone's eval.* is a second copy)
    from fvlm_eval.lmms_model import FVLM, FVLMChat
    from fvlm_eval.smolvlm import SmolVLM2

    assert get_model("fvlm") is FVLM and get_model("fvlm_chat") is FVLMChat
    assert get_model("smolvlm2_frames") is SmolVLM2


def test_lmms_eval_cli_writes_results(tiny_dir, shapes_dir, tmp_path):
    """The real `python -m lmms_eval` (it exits 0 even on failure: check the results file)."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "fvlm",
           "--model_args", f"pretrained={tiny_dir},mode=autoregressive,max_frames=4",
           "--tasks", "shapesqa,shapesqa_mc", "--include_path", str(TASKS_DIR), "--limit", "3",
           "--batch_size", "2", "--output_path", str(out), "--log_samples"]
    env = {**os.environ, "FVLM_SHAPESQA_DIR": str(shapes_dir)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    found = list(out.rglob("*_results.json"))
    assert found, f"no results file; rc={proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    results = json.loads(found[0].read_text())["results"]
    assert 0.0 <= results["shapesqa"]["acc,none"] <= 1.0 and results["shapesqa"]["errors,none"] == 0
    assert 0.0 <= results["shapesqa_mc"]["acc,none"] <= 1.0
    assert len(list(out.rglob("*_samples_shapesqa.jsonl"))) == 1


def test_simple_evaluate_generation_and_likelihood(tiny_dir, task_manager):
    lm = FVLM(pretrained=str(tiny_dir), mode="coarse_fine", batch_size=2)
    res = run(lm, ["shapesqa", "shapesqa_mc"], task_manager, limit=4)
    assert 0.0 <= res["results"]["shapesqa"]["acc,none"] <= 1.0
    assert 0.0 <= res["results"]["shapesqa_mc"]["acc,none"] <= 1.0
    assert not lm.errors.errors and lm.stats.tasks["shapesqa"].requests == 4
    assert lm.stats.tasks["shapesqa_mc"].visual_tokens[0] == 4  # 8 s clip, max_frames 4, 1 token per frame
    assert hasattr(lm, "model"), "the model must survive lmms-eval's clean() so the instance can be reused"


def test_simple_and_chat_request_formats_ask_the_same(tiny_dir, task_manager):
    model = fvlm.load(tiny_dir)
    seen = {}

    def recording(cls):
        class Recording(cls):
            def _query(self, request):
                q = super()._query(request)
                seen.setdefault(cls.__name__, []).append((q.task, q.doc_id, q.prompt, q.visuals, q.max_new_tokens))
                return q
        return Recording

    for cls in (FVLM, FVLMChat):
        run(recording(cls)(model=model, mode="coarse_only"), ["shapesqa"], task_manager, limit=3)
    assert seen["FVLM"] == seen["FVLMChat"] and len(seen["FVLM"]) == 3
    assert seen["FVLM"][0][3][0].endswith(".mp4")


def test_undecodable_video_is_counted_as_an_error(tiny_dir, shapes_dir, tmp_path, monkeypatch):
    copy = tmp_path / "shapes"
    shutil.copytree(shapes_dir, copy)
    monkeypatch.setenv("FVLM_SHAPESQA_DIR", str(copy))
    index = next(copy.glob("*/test/index.jsonl"))
    docs = [json.loads(line) for line in index.read_text().splitlines()[:6]]
    victim = docs[-1]["video"]
    (index.parent / victim).write_bytes(b"this is not a video" * 50)
    broken = sum(d["video"] == victim for d in docs)
    assert 0 < broken < 6

    lm = FVLM(pretrained=str(tiny_dir), batch_size=2)
    res = run(lm, ["shapesqa", "shapesqa_mc"], TaskManager("WARNING", include_path=[str(TASKS_DIR)]), limit=6)
    assert res["results"]["shapesqa"]["errors,none"] == broken
    assert res["results"]["shapesqa_mc"]["errors,none"] == broken
    assert lm.errors.counts() == {"shapesqa": broken, "shapesqa_mc": broken}
    assert {e.kind for e in lm.errors.errors} == {"VideoDecodeError"}
    assert all(e.source.endswith(Path(victim).name) for e in lm.errors.errors)
    answers = [s["filtered_resps"][0] for s in res["samples"]["shapesqa"]]
    assert answers.count(ERROR_RESPONSE) == broken
    by_task = {r.task: r for r in reports(res, res["samples"])}
    assert by_task["shapesqa"].errors == broken and by_task["shapesqa"].n == 6
    assert by_task["shapesqa_mc"].errors == broken


def test_video_root_moves_only_the_video_lookup(tmp_path):
    """--video_root: stock task code looks for videos there; the hub cache stays where it was."""
    videos = tmp_path / "videos"
    videos.mkdir()
    code = ("import sys; from eval.video_root import apply_video_root; apply_video_root(sys.argv[1]); "
            "from lmms_eval.tasks.mvbench import utils; import huggingface_hub.constants as c; "
            "print(utils.base_cache_dir); print(c.HF_HUB_CACHE)")
    moved = {"HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE", "HF_TOKEN_PATH", "XDG_CACHE_HOME"}
    env = {k: v for k, v in os.environ.items() if k not in moved} | {"HF_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-c", code, str(videos)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300, check=True).stdout.splitlines()
    assert out[-2:] == [str(videos.resolve()), str(tmp_path / "home" / "hub")]
