"""eval.compare (fvlm vs a tiny random SmolVLM2), the SmolVLM2 wrapper's frames and prompt, eval.mcq."""

import json

import numpy as np
import pytest

pytest.importorskip("lmms_eval")  # safety net only: CI installs lmms-eval (see eval/README.md)

from eval import compare, mcq
from eval.smolvlm import SmolVLM2
from eval.tiny_smolvlm import save_tiny_smolvlm


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    """The shipped ShapesQA task's data, generated once per session (shared cache folder)."""
    root = tmp_path_factory.getbasetemp() / "shapesqa-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FVLM_SHAPESQA_DIR", str(root))
        yield root


@pytest.fixture(scope="module")
def smol_dir(tmp_path_factory):
    return save_tiny_smolvlm(tmp_path_factory.mktemp("tiny-smolvlm"))


@pytest.fixture(scope="module")
def fvlm_dir(tmp_path_factory):
    from fvlm.tiny import tiny_model

    return tiny_model(seed=2, max_frames=4).save_pretrained(tmp_path_factory.mktemp("tiny-fvlm"))


def test_smolvlm_frames_and_prompt_follow_smolvlm2(smol_dir, video_file):
    from transformers.models.smolvlm import processing_smolvlm as hf

    from eval import smolvlm

    assert smolvlm.VIDEO_INTRO.format(count="two", duration="0:01:05") == hf.DEFAULT_VIDEO_INTRO.format(
        frame_count="two", video_duration="0:01:05")
    assert smolvlm.FRAME_LINE.format(minutes=1, seconds=5) == hf.FRAME_TIMESTAMP_MESSAGE.format(timestamp="01:05")
    lm = SmolVLM2(pretrained=str(smol_dir))
    assert (lm.video_size, lm.max_frames, lm.fps, lm.visual_tokens_per_frame) == (64, 64, 1.0, 4)
    clip = lm.clip(video_file)  # 8 s at 8 fps: one frame per second, no edge skip (no room)
    assert len(clip.frames) == 8 and np.allclose(clip.timestamps, np.linspace(0, 63, 8).round() / 8)
    prompt = lm.prompt(clip, "Which way?")
    frame = "<fake_token_around_image><global-img>" + "<image>" * 4 + "<fake_token_around_image>"
    assert prompt.startswith("<|im_start|>User: You are provided the following series of eight frames "
                             "from a 0:00:08 [H:MM:SS] video.\n\nFrame from 00:00:" + frame)
    assert prompt.endswith(frame + "\n\nWhich way?<end_of_utterance>\nAssistant:")
    assert prompt.count("<image>") == 8 * 4


def test_compare_prints_and_writes_one_table(fvlm_dir, smol_dir, shapes_dir, tmp_path, capsys):
    out = tmp_path / "cmp"
    compare.main(["--fvlm", str(fvlm_dir), "--smolvlm", str(smol_dir), "--tasks", "shapesqa",
                  "--limit", "2", "--max_frames", "4", "--out", str(out)])
    printed = capsys.readouterr().out
    data = json.loads((out / "compare.json").read_text())
    rows = {r["model"]: r for r in data["rows"]}
    assert set(rows) == {"fvlm coarse_only", "fvlm coarse_fine", "fvlm autoregressive", "smolvlm2"}
    for r in rows.values():
        assert r["task"] == "shapesqa" and r["n"] == 2 and r["errors"] == 0
        assert 0 <= r["acc_all"] <= 100 and r["ttft_ms"] > 0 and r["s_per_sample"] > 0
        assert r["peak_mb"] == r["peak_mb"] and r["weights_mb"] > 0  # not NaN
    assert rows["fvlm coarse_fine"]["tokens_per_frame"] == 1 and rows["smolvlm2"]["tokens_per_frame"] == 4
    assert rows["fvlm coarse_fine"]["tokens_per_sample"] == 4 and rows["smolvlm2"]["tokens_per_sample"] == 16
    table = (out / "compare.md").read_text()
    assert "| smolvlm2 | shapesqa | 2 |" in table and "| fvlm autoregressive | shapesqa | 2 |" in table
    assert "TTFT ms" in printed and "peak MB" in printed and data["meta"]["memory"]


def test_mcq_scores_every_mode(fvlm_dir, shapes_dir, tmp_path):
    out = tmp_path / "mcq.json"
    mcq.main(["--pretrained", str(fvlm_dir), "--tasks", "shapesqa_mc", "--limit", "3", "--out", str(out)])
    data = json.loads(out.read_text())
    [task] = data["tasks"]
    for mode in mcq.MODES:
        assert task[mode]["n"] == 3 and task[mode]["errors"] == 0 and 0 <= task[mode]["accuracy"] <= 100
