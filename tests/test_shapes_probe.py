"""experiments.shapesqa.shapes_probe: the linear probe on hand-made data, and an end-to-end run on a
tiny model."""

import json

import numpy as np
import pytest

from experiments.shapesqa.shapes_probe import format_report, linear_probe, main, probe


def test_linear_probe_separable_and_random_labels():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    x = rng.normal(0, 1, (400, 16))
    x[np.arange(400), y] += 4.0  # class k lifts feature k: linearly separable
    train = np.arange(400) % 4 != 0
    assert linear_probe(x, y, train, 4) > 0.95
    shuffled = rng.permutation(y)  # labels unrelated to the features: about chance (0.25)
    assert linear_probe(x, shuffled, train, 4) < 0.45


def test_probe_end_to_end(make_model, tmp_path):
    from fvlm.shapesqa.generate import make_shapes

    make_shapes(tmp_path, n=8, seed=0, split="easy", subset="test", shards=False, size=64, progress=False)
    index = tmp_path / "test" / "index.jsonl"
    from fvlm.shapesqa.score import read_index

    model = make_model(seed=1, image_size=32)
    report = probe(model, read_index(index), progress=False)
    for k in ("trained", "random", "pixels", "majority"):
        assert set(report[k]) == {"shape", "color"}
        assert all(0.0 <= v <= 1.0 for v in report[k].values())
    assert report["n_train"] > report["n_test"] > 0
    assert report["pixels"]["color"] > report["majority"]["color"]  # colour is in the raw pixels
    assert "raw pixels" in format_report(report)
    for k in ("token_fine", "token_coarse", "token_majority"):  # the read-out probe of a foveated model
        assert set(report[k]) == {"shape", "color"} and all(0.0 <= v <= 1.0 for v in report[k].values())
    assert report["token_n_train"] > report["token_n_test"] > 0
    assert "token (fine)" in format_report(report)


def test_cli_writes_json(make_model, tmp_path, capsys):
    from fvlm.shapesqa.generate import make_shapes

    make_shapes(tmp_path, n=4, seed=0, split="easy", subset="test", shards=False, size=64, progress=False)
    model = make_model(seed=1, image_size=32)
    model.save_pretrained(tmp_path / "m")
    out = tmp_path / "probe.json"
    assert main([str(tmp_path / "m"), "--index", str(tmp_path / "test" / "index.jsonl"), "--json", str(out)]) == 0
    assert "encoder (trained)" in capsys.readouterr().out
    assert json.loads(out.read_text())["n_test"] > 0


def test_needs_two_clips(make_model, tmp_path):
    from fvlm.shapesqa.generate import make_shapes
    from fvlm.shapesqa.score import read_index

    make_shapes(tmp_path, n=1, seed=0, split="easy", subset="test", shards=False, size=64, progress=False)
    with pytest.raises(ValueError, match="2 clips"):
        probe(make_model(seed=1, image_size=32), read_index(tmp_path / "test" / "index.jsonl"), progress=False)
