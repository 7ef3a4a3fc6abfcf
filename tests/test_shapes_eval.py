"""ShapesQA evaluation: answer normalisation, gaze metrics on hand-made maps, an end-to-end run."""

import json

import numpy as np
import pytest
import torch

from fvlm.shapesqa.score import (
    box_fraction,
    evaluate,
    format_report,
    gaze_densities,
    normalize,
    patch_coverage,
    read_index,
)


def test_normalize():
    assert normalize("The Red circle.") == "red circle"
    assert normalize("  LEFT!") == "left"
    assert normalize("a cross") == "cross"


def test_gaze_densities_on_hand_made_maps():
    boxes = [[0, 0, 32, 32], [64, 64, 96, 96], None]  # 128 px frame, 4x4 map (32-px cells)
    on_target = np.zeros((4, 4))
    on_target[0, 0] = 1.0
    t, o = gaze_densities(on_target, boxes, 0, (128, 128))
    assert t == pytest.approx(16.0) and o == pytest.approx(0.0)  # all mass on 1/16 of the frame
    uniform = np.ones((4, 4))
    assert gaze_densities(uniform, boxes, 0, (128, 128)) == pytest.approx((1.0, 1.0))
    on_other = np.zeros((4, 4))
    on_other[2, 2] = 1.0
    t, o = gaze_densities(on_other, boxes, 0, (128, 128))
    assert t == pytest.approx(0.0) and o == pytest.approx(16.0)
    assert gaze_densities(uniform, boxes, 2, (128, 128)) == (None, None)  # target outside the frame


def test_gaze_densities_use_the_centre_crop():
    boxes = [[32, 0, 64, 32], [96, 96, 128, 128]]  # frame 128 wide x 64 high: crop x in [32, 96)
    m = np.zeros((2, 2))
    m[0, 0] = 1.0  # the crop's top-left cell = frame pixels x 32..64, y 0..32
    c, _ = gaze_densities(m, boxes, 0, (64, 128))
    assert c == pytest.approx(4.0)


def test_box_fraction_is_the_boxs_share_of_the_centre_crop():
    assert box_fraction([0, 0, 32, 32], (128, 128)) == pytest.approx(1 / 16)
    assert box_fraction([0, 0, 32, 32], (64, 128)) == 0.0  # left of the crop (x 32..96)
    assert box_fraction([32, 0, 64, 64], (64, 128)) == pytest.approx(0.5)
    assert box_fraction(None, (64, 64)) == 0.0


def test_evaluate_end_to_end(make_model, tmp_path):
    from fvlm.shapesqa.generate import make_shapes

    make_shapes(tmp_path, n=3, seed=0, split="hard", subset="test", shards=False, size=64, progress=False)
    records = read_index(tmp_path / "test" / "index.jsonl", limit=6)
    model = make_model(seed=1, image_size=32)
    report = evaluate(model, records, modes=("coarse_only", "autoregressive"), batch_size=3, progress=False)
    for mode in ("coarse_only", "autoregressive"):
        r = report[mode]
        assert r["n"] == sum(1 for x in records if x["qtype"] != "caption")
        assert 0.0 <= r["accuracy"] <= 1.0
        if any(x["target"] is not None for x in records):
            assert {"shown", "layer_mean", "layer0", "layer1"} <= set(r["concentration"])
            for k, m in r["mass"].items():  # a share of the map, below the density ratio
                assert 0.0 <= m <= 1.0 and m <= r["concentration"][k] + 1e-9
    text = format_report(report)
    assert "accuracy (all)" in text and "selec" in text
    json.dumps(report)  # serialisable


def test_single_object_accuracy_counts_only_one_object_clips(tmp_path):
    """A stub that answers right exactly on one-object clips scores 100 % there, less overall."""
    from types import SimpleNamespace

    from fvlm.shapesqa.generate import make_shapes

    make_shapes(tmp_path, n=12, seed=3, split="easy", subset="test", shards=False, size=64, progress=False)
    records = [r for r in read_index(tmp_path / "test" / "index.jsonl") if r["qtype"] != "caption"]
    by_video = {}
    for r in records:
        by_video.setdefault(r["video"], []).append(r)

    class Stub:
        def generate(self, videos, questions, mode, max_new_tokens):
            outs = []
            for v, q in zip(videos, questions):
                r = next(x for x in by_video[v] if x["question"] == q)
                text = r["answer"] if len(r["objects"]) == 1 else "no idea"
                outs.append(SimpleNamespace(text=text, attention=None))
            return outs

    counts = {len(r["objects"]) for r in records}
    assert 1 in counts and len(counts) > 1, counts  # the seed gives both kinds of clip
    r = evaluate(Stub(), records, modes=("coarse_fine",), progress=False)["coarse_fine"]
    assert r["accuracy_single_object"] and all(a == 1.0 for a in r["accuracy_single_object"].values())
    assert r["accuracy"] < 1.0
    assert "1 object: " in format_report({"coarse_fine": r})


@pytest.mark.parametrize("architecture, columns", [("foveated", ["coarse_only", "coarse_fine"]),
                                                   ("multi_token", ["multi_token"])])
def test_cli_columns(make_model, tmp_path, capsys, architecture, columns):
    """`fvlm eval-shapes`: one column per mode; a multi-token (B1) model has no modes: one column."""
    from fvlm.cli import main
    from fvlm.shapesqa.generate import make_shapes

    make_shapes(tmp_path, n=2, seed=0, split="easy", subset="test", shards=False, size=64, progress=False)
    make_model(seed=1, image_size=32, architecture=architecture).save_pretrained(tmp_path / "m")
    out = tmp_path / "r.json"
    assert main(["eval-shapes", str(tmp_path / "m"), "--index", str(tmp_path / "test" / "index.jsonl"),
                 "--modes", "coarse_only,coarse_fine", "--limit", "4", "--json", str(out)]) == 0
    assert list(json.loads(out.read_text())) == columns
    assert capsys.readouterr().out.splitlines()[0].split() == columns


def test_patch_coverage_is_the_covered_fraction():
    boxes = torch.tensor([[8.0, 0.0, 16.0, 8.0], [4.0, 4.0, 12.0, 12.0], [-8.0, -8.0, -1.0, -1.0]])
    w = patch_coverage(boxes, grid=2, patch=8)  # [3, 4], row-major patches (0,0) (0,1) (1,0) (1,1)
    torch.testing.assert_close(w[0], torch.tensor([0.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(w[1], torch.full((4,), 0.25))
    assert float(w[2].sum()) == 0.0
