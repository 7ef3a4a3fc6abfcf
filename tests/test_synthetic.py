"""ShapesQA generator: determinism, ground truth, answers, splits, writers, bad arguments."""

import glob
import hashlib
import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import webdataset as wds

from fvlm.errors import ConfigError
from fvlm.shapesqa import generate as S
from fvlm.video import sample_indices

SAMPLED = sample_indices(64, 8)


def _job(subset="train", seed=0, split="mix", size=128, videos=None):
    return S._Job(seed, split, subset, size, 8.0, 8, 16, videos)


def _scene(objects, difficulty="easy"):
    return S.Scene(128, 8.0, 8, difficulty, objects, np.full((128, 128, 3), 100, np.uint8))


def _answers(cands, qtype):
    return {c["question"]: c["answer"] for c in cands[qtype]}


def test_shards_use_the_model_sampler():
    assert SAMPLED.tolist() == [0, 9, 18, 27, 36, 45, 54, 63]  # 8 s at 8 fps -> 1 fps


def test_same_seed_same_clip_and_different_seed_different_clip():
    a, b = S._make_clip(_job(), 3), S._make_clip(_job(), 3)
    assert a[2] == b[2]  # JPEG bytes of the sampled frames
    assert json.dumps(a[:2]) == json.dumps(b[:2]) and json.dumps(a[3]) == json.dumps(b[3])
    assert S._make_clip(_job(seed=1), 3)[2] != a[2] and S._make_clip(_job(), 4)[2] != a[2]
    sa, sb = (S.sample_scene(np.random.default_rng(5), "hard") for _ in range(2))
    ta, tb = S.compute_track(sa), S.compute_track(sb)
    assert np.array_equal(S.render(sa, ta, SAMPLED), S.render(sb, tb, SAMPLED))


@pytest.mark.parametrize("difficulty", ["easy", "hard"])
def test_ground_truth_matches_the_pixels(difficulty):
    checked = 0
    for seed in range(6):
        scene = S.sample_scene(np.random.default_rng(seed), difficulty)
        n = len(scene.objects)
        assert (1 <= n <= 3) if difficulty == "easy" else (5 <= n <= 8)
        track = S.compute_track(scene)
        frames = S.render(scene, track, SAMPLED)  # (8, 128, 128, 3)
        assert frames.shape == (8, 128, 128, 3) and frames.dtype == np.uint8
        assert np.allclose(track.boxes[..., 2] - track.boxes[..., 0], [o.side for o in scene.objects])
        vis = track.visible
        x0, y0, x1, y1 = np.moveaxis(track.boxes, -1, 0)
        assert np.all((x1[vis] > 0) & (y1[vis] > 0) & (x0[vis] < 128) & (y0[vis] < 128))
        assert np.all(vis[SAMPLED].sum(0) >= 2)  # every object shows up in >= 2 sampled frames
        for f, t in enumerate(SAMPLED):
            for i, o in enumerate(scene.objects):
                if track.inside[t, i] < 0.999 or track.occluded[t, i]:
                    continue
                mask = S.object_mask(scene, track, t, i)
                ys, xs = np.nonzero(mask)
                assert xs.min() >= x0[t, i] - 1 and xs.max() <= x1[t, i] + 1
                assert ys.min() >= y0[t, i] - 1 and ys.max() <= y1[t, i] + 1
                near = np.all(np.abs(frames[f][mask].astype(int) - S.COLORS[o.color]) <= 40, -1)
                assert near.mean() > 0.6, (seed, i, o)
                checked += 1
        cands = S.question_candidates(scene, track, SAMPLED)
        shapes = Counter(o.shape for o in scene.objects)
        for c in cands["count"]:
            shape = {v: k for k, v in S.PLURALS.items()}[c["question"].split()[2]]
            assert int(c["answer"]) == shapes[shape] == len(c["targets"])
    assert checked > 20


def test_answers_for_a_hand_built_scene():
    scene = _scene([
        S.Obj("red", "triangle", "medium", 30, (30, 40), (10, 0)),  # moves right, ends at the right
        S.Obj("blue", "square", "medium", 30, (64, 110), (0, -10)),  # moves up, ends at the top
        S.Obj("green", "circle", "small", 24, (-40, 100), (14, 0), bounce=False),  # enters at ~3 s
    ])
    track = S.compute_track(scene)
    cands = S.question_candidates(scene, track, SAMPLED)
    assert _answers(cands, "color") == {"What color is the triangle?": "red",
                                        "What color is the square?": "blue",
                                        "What color is the circle?": "green"}
    assert _answers(cands, "shape")["What shape is the blue object?"] == "square"
    assert _answers(cands, "motion") == {"Which way does the red triangle move?": "right",
                                         "Which way does the blue square move?": "up",
                                         "Which way does the green circle move?": "right"}
    assert _answers(cands, "position") == {"Where is the red triangle at the end of the video?": "right",
                                           "Where is the blue square at the end of the video?": "top",
                                           "Where is the green circle at the end of the video?": "bottom"}
    counts = _answers(cands, "count")
    assert counts["How many circles are there?"] == "1" and counts["How many stars are there?"] == "0"
    first = _answers(cands, "first")
    assert first["Which appears first, the green circle or the red triangle?"] == "red triangle"
    assert first["Which appears first, the blue square or the green circle?"] == "blue square"
    assert len(first) == 4 and not cands["digit"]
    assert cands["caption"][0]["answer"] == ("A red triangle moves right, a blue square moves up "
                                             "and a green circle enters from the left.")


def test_no_direction_for_bouncing_or_diagonal_motion():
    scene = _scene([S.Obj("red", "circle", "small", 20, (100, 30), (30, 0)),  # bounces back and forth
                    S.Obj("cyan", "star", "small", 20, (30, 60), (5, 5))])  # diagonal
    track = S.compute_track(scene)
    assert S.question_candidates(scene, track, SAMPLED)["motion"] == []
    assert S.caption(scene, track, SAMPLED) == "A cyan star moves diagonally and a red circle bounces around."


def test_hard_questions_disambiguate_with_digits():
    scene = _scene([S.Obj("red", "triangle", "small", 20, (20, 20), (0, 0), digit=3),
                    S.Obj("red", "square", "small", 20, (100, 20), (0, 0), digit=5),
                    S.Obj("blue", "triangle", "small", 20, (60, 100), (0, 0), digit=7)], "hard")
    cands = S.question_candidates(scene, S.compute_track(scene), SAMPLED)
    assert _answers(cands, "color") == {"What color is the triangle with the digit 3?": "red",
                                        "What color is the square?": "red",
                                        "What color is the triangle with the digit 7?": "blue"}
    assert _answers(cands, "shape")["What shape is the red object with the digit 5?"] == "square"
    assert _answers(cands, "shape")["What shape is the blue object?"] == "triangle"
    assert _answers(cands, "digit")["What digit is on the blue triangle?"] == "7"
    assert _answers(cands, "count")["How many triangles are there?"] == "2"


def test_train_val_test_never_share_a_clip():
    digest = lambda jpgs: hashlib.sha1(b"".join(jpgs)).hexdigest()
    seen = {s: {digest(S._make_clip(_job(s), i)[2]) for i in range(6)} for s in S.SUBSETS}
    assert all(len(v) == 6 for v in seen.values())
    assert not (seen["train"] & seen["val"] or seen["train"] & seen["test"] or seen["val"] & seen["test"])


def test_shard_and_video_round_trip(tmp_path):
    summary = S.make_shapes(tmp_path, 5, 0, "mix", "val", per_clip=8, shard_size=10, progress=False)
    root = tmp_path / "val"
    urls = sorted(glob.glob(str(root / "*.tar")))
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(urls) >= 2 and len(samples) == summary["samples"] >= 5 * 4
    index = [json.loads(line) for line in open(root / "index.jsonl")]
    assert len(index) == len(samples)
    for sample, rec in zip(samples, index):
        meta = json.loads(sample["json"])
        assert {"user", "assistant", "source", "frame_count", "qtype", "target", "boxes"} <= set(meta)
        assert meta["source"] == f"shapesqa/{meta['difficulty']}/{meta['qtype']}" and meta["split"] == "val"
        jpgs = sorted(k for k in sample if k.endswith(".jpg"))
        assert len(jpgs) == meta["frame_count"] == len(meta["boxes"]) == len(meta["timestamps"]) == 8
        assert (meta["user"], meta["assistant"]) == (rec["question"], rec["answer"])
        assert meta["target"] is None or meta["target"] in meta["targets"]
        frame = cv2.imdecode(np.frombuffer(sample[jpgs[3]], np.uint8), cv2.IMREAD_COLOR)
        assert frame.shape == (128, 128, 3)
    cap = cv2.VideoCapture(str(root / index[0]["video"]))
    video = []
    while (ok_frame := cap.read())[0]:
        video.append(ok_frame[1])
    assert len(video) == 64 == len(json.loads(open(root / "clips.jsonl").readline())["boxes"])
    jpg = cv2.imdecode(np.frombuffer(samples[0]["003.jpg"], np.uint8), cv2.IMREAD_COLOR)  # BGR, like cap.read
    diffs = [np.abs(jpg.astype(int) - v).mean() for v in video]
    assert int(np.argmin(diffs)) == index[0]["frame_indices"][3] and min(diffs) < 6


def test_other_sizes_and_no_videos_give_the_same_frames(tmp_path):
    for size in (64, 96, 224):
        frames = S._make_clip(_job(size=size), 0)[2]
        assert cv2.imdecode(np.frombuffer(frames[0], np.uint8), cv2.IMREAD_COLOR).shape == (size, size, 3)
    assert S._make_clip(_job(videos=str(tmp_path)), 1)[2] == S._make_clip(_job(), 1)[2]


def test_default_mixture_has_every_question_type(tmp_path):
    summary = S.make_shapes(tmp_path, 40, 0, shards=False, videos=False, progress=False)
    assert not any(tmp_path.iterdir())
    seen = {(d, q) for d, q, _ in summary["answers"]}
    assert {q for _, q in seen} == set(S.QTYPES) and {d for d, _ in seen} == {"easy", "hard"}


def test_cli_writes_three_subsets(tmp_path, capsys):
    assert S.main([str(tmp_path), "--n", "3", "--eval-n", "1", "--no-videos", "--split", "easy"]) == 0
    for subset in S.SUBSETS:
        assert glob.glob(str(tmp_path / subset / "*.tar"))
    assert "train: 3 clips" in capsys.readouterr().out


@pytest.mark.parametrize("kw", [dict(n=0), dict(n=-3), dict(split="medium"), dict(subset="dev"),
                                dict(size=16), dict(seconds=0.5), dict(qtypes=("color", "smell")),
                                dict(per_clip=0)])
def test_bad_arguments_raise_config_error(tmp_path, kw):
    args = dict(out_dir=tmp_path, n=2, seed=0) | kw
    with pytest.raises(ConfigError):
        S.make_shapes(**args, progress=False)


def test_packaged_examples_are_current(tmp_path):
    rows = S.make_examples(tmp_path)
    packaged = Path(S.__file__).parents[1] / "assets" / "examples"
    assert (tmp_path / "examples.jsonl").read_text() == (packaged / "examples.jsonl").read_text()
    assert sum(p.stat().st_size for p in packaged.iterdir()) < 1_000_000
    qa = {(r["file"], r["question"]): r["answer"] for r in rows}
    assert qa["shapes_easy.mp4", "What color is the triangle?"] == "red"
    assert any(r["qtype"] == "digit" and r["file"] == "shapes_hard.mp4" for r in rows)
    for stem in ("shapes_easy", "shapes_motion", "shapes_hard"):
        assert cv2.VideoCapture(str(packaged / f"{stem}.mp4")).get(cv2.CAP_PROP_FRAME_COUNT) == 64
