"""trainer.make_shards: raw videos / images / text -> shards -> trainer batches (round trip)."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
from conftest import write_video

from fvlm.config import FVLMConfig
from fvlm.video import load_video
from trainer.config import DataConfig
from trainer.data import Decoder, TrainStream
from trainer.make_shards import Options, main, make_shards


@pytest.fixture
def raw_data(tmp_path):
    """3 videos (5, 9 and 70 s at 4 fps), an image, a broken video, a missing file, a text row."""
    import cv2

    root = tmp_path / "raw"
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i, seconds in enumerate((5, 9, 70)):
        frames = rng.integers(0, 255, size=(seconds * 4, 40, 56, 3), dtype=np.uint8)
        write_video(root / f"v{i}.mp4", frames, fps=4.0)
        rows.append(
            {
                "video": f"v{i}.mp4",
                "user": f"Describe clip {i}.",
                "assistant": f"Clip number {i}.",
                "source": "test/video",
                "extra": i,
            }
        )
    cv2.imwrite(str(root / "img.png"), rng.integers(0, 255, size=(30, 50, 3), dtype=np.uint8))
    rows.append({"image": "img.png", "user": "What is shown?", "assistant": "Noise.", "source": "test/image"})
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
    rows.append({"video": "broken.mp4", "user": "u", "assistant": "a"})
    rows.append({"video": "missing.mp4", "user": "u", "assistant": "a"})
    rows.append({"user": "Say hi.", "assistant": "Hi!", "source": "smoltalk"})
    rows.append(
        {"user": "Pick one.", "chosen_assistant": "Good.", "rejected_assistant": "Bad.", "source": "dpo"}
    )
    manifest = root / "ann.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    return manifest


def test_round_trip_videos_to_shards_to_trainer_batches(tmp_path, raw_data, tokenizer, capsys):
    out = tmp_path / "shards"
    assert (
        main(
            [
                "--manifest",
                str(raw_data),
                "--out",
                str(out),
                "--per-shard",
                "3",
                "--size",
                "16",
                "--workers",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    printed = capsys.readouterr()
    assert "3 unreadable rows skipped" in printed.out and "broken.mp4" in printed.err
    errors = [json.loads(l) for l in (out / "errors.jsonl").read_text().splitlines()]
    assert sorted(e["row"] for e in errors) == [4, 5, 8]
    shards = sorted(out.glob("shard-*.tar"))
    assert [s.name for s in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    with tarfile.open(shards[0]) as t:
        names = t.getnames()
    assert "000000000.json" in names and "000000000.000.jpg" in names

    expected_frames = [len(load_video(raw_data.parent / f"v{i}.mp4").frames) for i in range(3)]
    assert expected_frames == [5, 9, 64]  # fvlm's sampler: 1 fps, at most 64, uniform
    from fvlm.tiny import tiny_llm_config, tiny_vision_config

    cfg = FVLMConfig(
        vision=tiny_vision_config(image_size=16).to_dict(),
        llm=tiny_llm_config(len(tokenizer)).to_dict(),
        image_size=16,
        image_frames=4,
    )
    data = DataConfig(train_shards=str(out / "*.tar"), batch_size=5, shuffle_buffer=1, num_workers=0)
    ds = TrainStream(data, Decoder(cfg, tokenizer, "answer", dpo=False), 2, seed=0, rank=0, world=1)
    tb = next(iter(ds))
    got = {k.split("/")[1]: int(n) for k, n in zip(tb.keys, tb.batch.num_frames)}
    # the image is replicated to image_frames; the text-only row is kept; the DPO row (no
    # "assistant") is skipped by a CE decoder
    assert got == {"000000000": 5, "000000001": 9, "000000002": 64, "000000003": 4, "000000006": 0}
    metas = {}
    for s in shards:
        with tarfile.open(s) as t:
            for m in t.getmembers():
                if m.name.endswith(".json"):
                    metas[m.name.split(".")[0]] = json.loads(t.extractfile(m).read())
    assert metas["000000001"]["assistant"] == "Clip number 1." and metas["000000001"]["frame_count"] == 9
    assert metas["000000001"]["extra"] == 1 and metas["000000006"]["frame_count"] == 0
    assert metas["000000007"]["chosen_assistant"] == "Good."
    row = [k.split("/")[1] for k in tb.keys].index("000000001")
    text = tokenizer.decode(
        tb.batch.prefix_ids[row][tb.batch.prefix_mask[row]].tolist()
        + tb.batch.suffix_ids[row][tb.batch.suffix_mask[row]].tolist()
    )
    assert "Describe clip 1." in text and text.endswith("Clip number 1.<|im_end|>\n")


def test_rerun_skips_finished_shards(tmp_path, raw_data):
    out = tmp_path / "shards"
    first = make_shards(raw_data, out, per_shard=3, workers=2, options=Options(size=16), progress=False)
    assert first["shards"] == 3 and first["samples"] == 6 and first["errors"] == 3
    stamp = (out / "shard-000000.tar").stat().st_mtime_ns
    (out / "shard-000002.tar").unlink()  # as if the first run died before this shard was renamed
    again = make_shards(raw_data, out, per_shard=3, options=Options(size=16), progress=False)
    assert again["skipped_shards"] == 2 and again["shards"] == 1 and again["samples"] == 2
    assert (out / "shard-000000.tar").stat().st_mtime_ns == stamp
    assert not list(out.glob(".*.tmp"))
