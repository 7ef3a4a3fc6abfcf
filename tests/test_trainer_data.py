"""trainer.data: shard splitting, decoding (video / image / mp4 / text-only / corrupt), batching,
text interleave and exact resume of the stream."""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from test_trainer_helpers import (
    IMAGE,
    frames_of,
    image_sample,
    jpeg,
    text_sample,
    video_sample,
    video_shards,
    write_tar,
)

from fvlm.config import FVLMConfig
from fvlm.sequence import IGNORE_INDEX
from trainer.config import DataConfig, DynamicBatch
from trainer.data import (
    Batcher,
    Decoder,
    EvalStream,
    SplitStream,
    TrainStream,
    advance,
    expand_shards,
    loader,
    split_part,
)


@pytest.fixture
def model_config(tokenizer) -> FVLMConfig:
    from fvlm.tiny import tiny_llm_config, tiny_vision_config

    return FVLMConfig(
        vision=tiny_vision_config(image_size=IMAGE).to_dict(),
        llm=tiny_llm_config(len(tokenizer)).to_dict(),
        image_size=IMAGE,
        query_dim=16,
        max_frames=8,
        image_frames=4,
        tokens_per_frame=4,
    )


@pytest.fixture
def decoder(model_config, tokenizer) -> Decoder:
    return Decoder(model_config, tokenizer, loss="answer", dpo=False)


def stream_batches(
    data: DataConfig,
    decoder: Decoder,
    n: int,
    rank: int = 0,
    world: int = 1,
    position: dict | None = None,
    pad_id: int = 2,
):
    ds = TrainStream(data, decoder, pad_id, seed=7, rank=rank, world=world, position=position)
    it = iter(loader(ds, data.num_workers, 2, False))
    return [next(it) for _ in range(n)]


def all_keys(paths) -> set[str]:
    keys = set()
    for p in paths:
        with tarfile.open(p) as t:
            keys |= {f"{Path(p).name}/{m.name.split('.')[0]}" for m in t.getmembers()}
    return keys


# ---- splitting ------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_shards", [7, 2])  # >= splits: whole shards; < splits: by sample index
def test_split_by_rank_then_worker_reads_every_sample_once_per_epoch(tmp_path, n_shards):
    """Upstream split shards by worker twice (only ~1/W of the data was ever read) and never by
    rank. Every sample must be read exactly once per epoch across all ranks x workers."""
    paths = [str(p) for p in video_shards(tmp_path, n_shards, 5, frames=(1,))]
    world, workers = 2, 3
    for epoch in (0, 1):
        seen: list[str] = []
        per_rank: list[set[str]] = []
        for rank in range(world):
            rank_keys = set()
            for worker in range(workers):
                s = SplitStream(paths, 3, rank, world, worker, workers, buffer=4, epoch=epoch, loop=False)
                keys = [raw.key for raw in s]
                seen += keys
                rank_keys |= set(keys)
            per_rank.append(rank_keys)
        assert Counter(seen) == Counter(all_keys(paths)), "a sample was read twice or never"
        assert not per_rank[0] & per_rank[1]
    if n_shards >= world * workers:  # ranks read disjoint shard files
        shards = [{k.split("/")[0] for k in r} for r in per_rank]
        assert not shards[0] & shards[1]


def test_shard_order_changes_with_the_epoch_and_is_the_same_on_every_rank(tmp_path):
    shards = [f"s{i}.tar" for i in range(20)]
    a = split_part(shards, 0, 1, 0, 1, 0, 1).shards
    assert a == split_part(shards, 0, 1, 0, 1, 0, 1).shards
    assert a != split_part(shards, 1, 1, 0, 1, 0, 1).shards
    r0, r1 = split_part(shards, 0, 1, 0, 2, 0, 1).shards, split_part(shards, 0, 1, 1, 2, 0, 1).shards
    assert sorted(r0 + r1) == sorted(shards) and not set(r0) & set(r1)


def test_expand_shards_globs_braces_and_missing(tmp_path, monkeypatch):
    video_shards(tmp_path, 3, 1)
    assert len(expand_shards(str(tmp_path / "*.tar"))) == 3
    assert len(expand_shards(str(tmp_path / "train-{000..001}.tar"))) == 2
    monkeypatch.setenv("SHARDS_ROOT", str(tmp_path))
    assert len(expand_shards("${SHARDS_ROOT}/train-*.tar")) == 3
    with pytest.raises(ValueError, match="data.val_shards"):
        expand_shards(str(tmp_path / "nope-*.tar"), "data.val_shards")
    monkeypatch.delenv("SHARDS_ROOT")
    with pytest.raises(ValueError, match="environment variable"):
        expand_shards("${SHARDS_ROOT}/x.tar")


# ---- decoding -------------------------------------------------------------------------------------
def test_decode_video_image_text_and_frame_cap(tmp_path, decoder):
    samples = [
        video_sample("v", "red", 3),
        image_sample("i", "blue"),
        text_sample("t"),
        video_sample("long", "green", 12),
    ]
    path = write_tar(tmp_path / "a.tar", samples)
    out = {
        raw.key.split("/")[1]: decoder(raw) for raw in SplitStream([str(path)], 0, 0, 1, 0, 1, 1, loop=False)
    }
    assert out["v"].frames == 3
    assert out["i"].frames == 4  # image replicated to model.fvlm.image_frames
    px = out["i"].samples[0].pixel_values
    assert torch.equal(px[0], px[3])
    assert out["t"].frames == 0 and out["t"].samples[0].pixel_values.shape == (0, 3, IMAGE, IMAGE)
    assert out["long"].frames == 8  # capped at max_frames, uniformly
    assert out["v"].samples[0].pixel_values.shape == (3, 3, IMAGE, IMAGE)


def test_text_only_samples_reach_the_model(tmp_path, decoder, tokenizer):
    """Upstream's decoder returned None for samples without frames, so text retention was empty."""
    from fvlm.tiny import tiny_model

    path = video_shards(tmp_path, 1, 8, text_every=2)[0]
    data = DataConfig(train_shards=str(path), batch_size=8, shuffle_buffer=1, num_workers=0)
    tb = stream_batches(data, decoder, 1)[0]
    frames = tb.batch.num_frames.tolist()
    assert frames.count(0) == 4 and tb.size == 8
    model = tiny_model(tokenizer=tokenizer, image_size=IMAGE, max_frames=8, image_frames=4)
    out = model(tb.batch, mode="coarse_fine")
    assert torch.isfinite(out.loss)
    text_rows = [i for i, f in enumerate(frames) if f == 0]
    assert all(out.text.num_targets[i] > 0 for i in text_rows)  # their answers are in the loss


def test_answer_loss_keeps_the_closing_im_end(tmp_path, decoder, tokenizer):
    """Upstream ignored the pad id in the loss; SmolLM2's pad is <|im_end|>, so every closing
    <|im_end|> was dropped. Here it is a target, although it equals the pad id."""
    from fvlm.tiny import tiny_model

    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.pad_token_id == im_end
    path = write_tar(tmp_path / "a.tar", [video_sample("v", "red", 2), text_sample("t")])
    decoded = [decoder(raw) for raw in SplitStream([str(path)], 0, 0, 1, 0, 1, 1, loop=False)]
    model = tiny_model(tokenizer=tokenizer, image_size=IMAGE)
    batch = model.collate([d.samples[0] for d in decoded])
    out = model(batch, mode="coarse_fine", return_hidden=True)
    answer = tokenizer("The square is red.", add_special_tokens=False)["input_ids"]
    labels = out.labels[0][out.labels[0] != IGNORE_INDEX].tolist()
    assert labels[: len(answer) + 1] == answer + [im_end]  # (the template's trailing newline follows)
    assert int(out.text.num_targets[0]) == len(labels)


def test_corrupt_members_are_skipped_and_counted(tmp_path, decoder):
    good = [video_sample(f"g{i}", "red", 2) for i in range(4)]
    bad_jpeg = video_sample("badjpg", "red", 2)
    bad_jpeg["001.jpg"] = b"\xff\xd8 not a jpeg"
    bad_json = video_sample("badjson", "red", 2)
    bad_json["json"] = b"{not json"
    no_answer = {"__key__": "noanswer", "json": json.dumps({"user": "hi", "frame_count": 0}).encode()}
    lost_frames = {
        "__key__": "lost",
        "json": json.dumps({"user": "a", "assistant": "b", "frame_count": 3}).encode(),
    }
    partial = video_sample("partial", "red", 3)
    del partial["002.jpg"]  # frame_count says 3
    a = write_tar(
        tmp_path / "a.tar", [good[0], bad_jpeg, good[1], bad_json, no_answer, lost_frames, partial, good[2]]
    )
    b = write_tar(tmp_path / "b.tar", [good[3]] + [video_sample(f"t{i}", "blue", 2) for i in range(6)])
    data = b.read_bytes()
    b.write_bytes(data[: len(data) // 2 + 300])  # truncated tar: the samples before the damage survive
    stream = SplitStream([str(a), str(b)], 0, 0, 1, 0, 1, buffer=1, loop=False, shuffle=False)
    batcher = Batcher(stream, decoder, 2, pad_id=2)
    keys = []
    while batch := batcher.next_batch():
        keys += [d.key.split("/")[1] for d in batch]
    assert keys[:4] == ["g0", "g1", "g2", "g3"] and len(keys) >= 5  # b.tar's first samples survive
    assert not set(keys) & {"badjpg", "badjson", "noanswer", "lost", "partial"}
    assert stream.skipped == {"bad_image": 1, "bad_json": 2, "missing_frames": 2, "bad_tar": 1}


def test_mp4_members_are_decoded_with_fvlm_sampler(tmp_path, decoder, video_file):
    good = {
        "__key__": "clip",
        "json": json.dumps({"user": "u", "assistant": "a", "frame_count": 0}).encode(),
        "mp4": Path(video_file).read_bytes(),
    }
    broken = {**good, "__key__": "broken", "mp4": Path(video_file).read_bytes()[:500]}
    path = write_tar(tmp_path / "v.tar", [good, broken])
    stream = SplitStream([str(path)], 0, 0, 1, 0, 1, 1, loop=False)
    raws = list(stream)
    out = decoder(raws[0])
    assert out.frames == 8  # 8 s at 1 fps (fvlm.video.sample_indices), capped at max_frames 8
    with pytest.raises(Exception) as e:
        decoder(raws[1])
    assert getattr(e.value, "reason", None) == "bad_video"


# ---- batching -------------------------------------------------------------------------------------
def test_dynamic_batches_respect_the_frame_budget(tmp_path, decoder):
    paths = [str(p) for p in video_shards(tmp_path, 2, 10, frames=(1, 3, 5))]
    data = DataConfig(
        train_shards=paths,
        batch_size=4,
        dynamic_batch=DynamicBatch(max_frames=7, max_batch_size=4),
        shuffle_buffer=4,
        num_workers=0,
    )
    batches = stream_batches(data, decoder, 12)
    for tb in batches:
        assert tb.size <= 4
        assert tb.batch.num_frames.sum() <= 7 or tb.size == 1
    keys = [k for tb in batches[:6] for k in tb.keys]
    assert len(keys) == len(set(keys))


def test_text_interleave_ratio(tmp_path, decoder):
    train = [str(p) for p in video_shards(tmp_path / "v", 2, 10, frames=(1,))]
    text = [str(p) for p in video_shards(tmp_path / "t", 2, 10, prefix="text", text_every=1)]
    data = DataConfig(
        train_shards=train, text_shards=text, text_ratio=0.3, batch_size=2, shuffle_buffer=4, num_workers=0
    )
    batches = stream_batches(data, decoder, 300)
    kinds = Counter(tb.kind for tb in batches)
    assert 0.22 < kinds["text"] / 300 < 0.38
    for tb in batches:
        from_text = {k.startswith("text") for k in tb.keys}
        assert from_text == {tb.kind == "text"}
        if tb.kind == "text":
            assert tb.batch.num_frames.sum() == 0


@pytest.mark.parametrize("workers,dynamic", [(2, False), (0, True)])
def test_resume_position_continues_the_stream_exactly(tmp_path, decoder, workers, dynamic):
    """Upstream's resume restarted the data stream (replaying seen samples). A saved position
    must continue with exactly the batches an uninterrupted stream would give."""
    train = [str(p) for p in video_shards(tmp_path / "v", 4, 7, frames=(1, 2, 4))]
    text = [str(p) for p in video_shards(tmp_path / "t", 2, 5, prefix="text", text_every=1)]
    data = DataConfig(
        train_shards=train,
        text_shards=text,
        text_ratio=0.2,
        batch_size=3,
        shuffle_buffer=5,
        num_workers=workers,
        dynamic_batch=DynamicBatch(max_frames=6, max_batch_size=3) if dynamic else None,
    )
    full = stream_batches(data, decoder, 30)
    ds = TrainStream(data, decoder, 2, seed=7, rank=0, world=1)
    position = ds.position
    it = iter(loader(ds, workers, 2, False))
    for _ in range(11):  # stop at an odd count: resume must continue with the next worker
        advance(position, next(it))
    del it
    resumed = stream_batches(data, decoder, 19, position=json.loads(json.dumps(position)))
    assert [tb.keys for tb in full[11:]] == [tb.keys for tb in resumed]
    for a, b in zip(full[11:], resumed):
        assert torch.equal(a.batch.pixel_values, b.batch.pixel_values)
        assert torch.equal(a.batch.suffix_ids, b.batch.suffix_ids)


def test_resume_with_other_worker_count_is_an_error(tmp_path, decoder):
    train = [str(p) for p in video_shards(tmp_path, 2, 3)]
    data = DataConfig(train_shards=train, batch_size=1, num_workers=2)
    position = TrainStream(data, decoder, 2, 0, 0, 1).position
    data.num_workers = 1
    with pytest.raises(ValueError, match="data.num_workers"):
        TrainStream(data, decoder, 2, 0, 0, 1, position=position)


def test_eval_stream_is_one_ordered_pass_split_by_rank(tmp_path, decoder):
    paths = [str(p) for p in video_shards(tmp_path, 1, 9)]
    ranks = []
    for rank in range(2):
        ds = EvalStream(paths, decoder, 2, 2, rank, 2, workers=0, max_samples=100)
        ranks.append([k for tb in ds for k in tb.keys])
    assert not set(ranks[0]) & set(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == sorted(all_keys(paths))
    limited = EvalStream(paths, decoder, 2, 2, 0, 1, workers=0, max_samples=5)
    assert sum(tb.size for tb in limited) == 5


def test_frames_of_different_sizes_are_corrupt(tmp_path, decoder):
    s = video_sample("v", "red", 2)
    s["001.jpg"] = jpeg(frames_of("red", 1, size=IMAGE * 2)[0])
    path = write_tar(tmp_path / "a.tar", [s])
    raw = next(iter(SplitStream([str(path)], 0, 0, 1, 0, 1, 1, loop=False)))
    with pytest.raises(Exception) as e:
        decoder(raw)
    assert getattr(e.value, "reason", None) == "bad_image"
    assert np.all(frames_of("red", 1)[0] >= 0)
