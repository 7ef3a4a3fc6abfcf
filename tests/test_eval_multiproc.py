"""lmms-eval on several processes: each process binds to its own device (cuda:LOCAL_RANK), and 2 CPU
processes under `torchrun` and under `accelerate launch` give the scores and per-sample answers of 1
process on the offline ShapesQA tasks, each process answering its share of the documents."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")  # safety net only: CI installs lmms-eval (see eval/README.md)

from eval.lmms_model import FVLM
from eval.requests import pick_device
from eval.tasks import TASKS_DIR

REPO = Path(__file__).resolve().parents[1]
LIMIT = 8  # documents per task

# Runs lmms-eval's CLI after wrapping the fvlm model's request methods so that every process
# records how many requests it answered, on which device, as which rank of how many.
LAUNCH = '''
import os, runpy, sys
from fvlm_eval.lmms_model import FVLM

def counted(method):
    inner = getattr(FVLM, method)
    def wrapper(self, requests):
        path = os.path.join(os.environ["FVLM_TEST_SHARE_DIR"], "rank%s.jsonl" % os.environ.get("RANK", "0"))
        with open(path, "a") as f:
            f.write('{"method": "%s", "n": %d, "device": "%s", "rank": %d, "world": %d}\\n'
                    % (method, len(requests), self.device, self.rank, self.world_size))
        return inner(self, requests)
    return wrapper

FVLM.generate_until, FVLM.loglikelihood = counted("generate_until"), counted("loglikelihood")
sys.argv = ["lmms_eval", *sys.argv[1:]]
runpy.run_module("lmms_eval", run_name="__main__")
'''


def test_each_process_picks_its_own_gpu(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert pick_device(None) == "cuda:0"  # one process
    monkeypatch.setenv("LOCAL_RANK", "3")  # process 3 of a node under torchrun / accelerate launch
    assert pick_device(None) == "cuda:3"
    assert pick_device("cuda:1") == "cuda:1" and pick_device("cpu") == "cpu"  # device= wins
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert pick_device(None) == "cpu"


def test_the_fvlm_model_moves_to_the_process_device(monkeypatch):
    from fvlm.tiny import tiny_model

    model = tiny_model(seed=1, max_frames=4)
    moved = []
    monkeypatch.setattr(type(model), "to", lambda self, *args: moved.append(args) or self)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    FVLM(model=model)
    FVLM(model=model, device="cpu")
    assert [a[0] for a in moved] == ["cuda:1", "cpu"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from fvlm.tiny import tiny_model

    root = tmp_path_factory.mktemp("multiproc")
    tiny = tiny_model(seed=1, max_frames=4).save_pretrained(root / "tiny")
    (root / "launch.py").write_text(LAUNCH)
    return root, tiny


def evaluate(root: Path, tiny: Path, name: str, launcher: list[str]) -> tuple[dict, dict, list[dict]]:
    """Run the CLI under `launcher`; returns (results, {task: {doc_id: answers}}, the calls made)."""
    share, out = root / f"{name}-calls", root / f"{name}-out"
    share.mkdir()
    cmd = [*launcher, str(root / "launch.py"), "--model", "fvlm",
           "--model_args", f"pretrained={tiny},mode=coarse_fine,max_frames=4",
           "--tasks", "shapesqa,shapesqa_mc", "--include_path", str(TASKS_DIR), "--limit", str(LIMIT),
           "--batch_size", "2", "--output_path", str(out), "--log_samples"]
    env = {**os.environ, "FVLM_SHAPESQA_DIR": str(root.parent / "shapesqa-cache"),
           "FVLM_TEST_SHARE_DIR": str(share), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    found = list(out.rglob("*_results.json"))  # lmms-eval exits 0 even on failure: check the file
    assert found, f"no results file; rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    results = json.loads(found[0].read_text())["results"]
    answers = {}
    for task in ("shapesqa", "shapesqa_mc"):
        (samples,) = out.rglob(f"*_samples_{task}.jsonl")
        rows = [json.loads(line) for line in samples.read_text().splitlines()]
        answers[task] = {r["doc_id"]: r["filtered_resps"] for r in rows}
    calls = [json.loads(line) for f in sorted(share.iterdir()) for line in f.read_text().splitlines()]
    return results, answers, calls


@pytest.fixture(scope="module")
def one_process(setup):
    root, tiny = setup
    return evaluate(root, tiny, "single", [sys.executable])


LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=2",
                   "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no"],
}


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_two_processes_give_the_answers_of_one(setup, one_process, launcher):
    root, tiny = setup
    results, answers, calls = evaluate(root, tiny, launcher, [sys.executable, *LAUNCHERS[launcher]])
    ref_results, ref_answers, ref_calls = one_process

    assert {(c["rank"], c["world"]) for c in ref_calls} == {(0, 1)}
    assert {(c["rank"], c["world"], c["device"]) for c in calls} == {(0, 2, "cpu"), (1, 2, "cpu")}
    gen = {c["rank"]: c["n"] for c in calls if c["method"] == "generate_until"}
    assert gen == {0: LIMIT // 2, 1: LIMIT // 2}  # each process answers its half of the documents
    ll = {c["rank"]: c["n"] for c in calls if c["method"] == "loglikelihood"}
    assert set(ll) == {0, 1} and all(0 < n < sum(c["n"] for c in ref_calls if c["method"] == "loglikelihood")
                                     for n in ll.values())

    for task in ("shapesqa", "shapesqa_mc"):
        for metric in ("acc,none", "acc_norm,none", "errors,none"):
            assert results[task].get(metric) == ref_results[task].get(metric), (task, metric)
    assert answers["shapesqa"] == ref_answers["shapesqa"] and len(answers["shapesqa"]) == LIMIT
    mc, ref_mc = answers["shapesqa_mc"], ref_answers["shapesqa_mc"]
    assert mc.keys() == ref_mc.keys() and len(mc) == LIMIT
    for doc in mc:  # "(log-prob, is_greedy)" per option: the same up to float rounding of the batches
        got, want = [ast.literal_eval(x) for x in mc[doc]], [ast.literal_eval(x) for x in ref_mc[doc]]
        assert [g[1] for g in got] == [w[1] for w in want], doc
        assert [g[0] for g in got] == pytest.approx([w[0] for w in want], rel=1e-5), doc
