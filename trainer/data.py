"""Webdataset shards -> model batches: deterministic, split once, resumable, corruption-tolerant.

Per rank r of R and DataLoader worker w of W, one *split* reads:

    shard list (globs/braces expanded, sorted)
      -> shuffled with Random(seed, epoch)              (the same order on every rank and worker)
      -> split by rank, then by worker                  (once each; with fewer shards than
                                                         splits, by sample index instead)
      -> raw samples: tar members grouped by key        (nothing decoded yet)
      -> shuffle buffer, Random(seed, epoch, r, w)
      -> decode: frames / image x N / mp4 / text-only   (a corrupt sample is skipped and counted)
      -> batches: fixed size or frame budget, and with probability text_ratio a text-only batch
         from the text shards (their own split stream)

Each split runs epoch after epoch without end (the trainer counts steps), so every DataLoader
worker always has data and batches arrive in strict round-robin order. A split's position is
(epoch, raw samples consumed in that epoch) for the train and the text stream; every batch
carries its split's position, and the trainer records the last one per worker. Resuming replays
the raw stream (tar reads and the shuffle buffer only, no decoding) up to that position, and the
DataLoader worker i plays logical worker (i + next_worker) % W so round-robin continues where
it stopped: the same batches, in the same order, no sample repeated or skipped.

Shard format (docs/data.md): KEY.json {"user", "assistant", "source", "frame_count"} (+ DPO
"chosen_assistant", "rejected_assistant"; extra fields ignored); frames KEY.000.jpg, KEY.001.jpg..;
an image KEY.jpg (replicated to model.fvlm.image_frames); a text-only sample has only the JSON;
an optional KEY.mp4 is decoded with fvlm.video (1 fps, <= max_frames, uniform).
"""

from __future__ import annotations

import copy
import glob
import hashlib
import json
import os
import random
import re
import sys
import tarfile
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fvlm.batch import Batch, Sample, collate, make_sample
from fvlm.config import FVLMConfig
from fvlm.errors import ConfigError, FVLMError, VideoError

from .config import DataConfig
from .objects import ObjectLabelError, collate_targets, object_targets

FRAME_MEMBER = re.compile(r"^(\d+)\.(jpg|jpeg|png)$")
IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")
VIDEO_MEMBERS = ("mp4", "webm", "mkv", "avi", "mov")
MAX_CONSECUTIVE_FAILURES = 10_000  # a split whose samples all fail stops with an error
MAX_WARNINGS = 20  # per split: the first corrupt samples are printed, all are counted


class DataError(FVLMError, ValueError):
    """The shards cannot feed training (no shards, an empty split, nothing decodable)."""


class CorruptSample(Exception):
    """One sample cannot be used; `reason` is the counter it is logged under."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# ---- shard lists ----------------------------------------------------------------------------------
def expand_shards(spec: str | list[str], key: str = "data.train_shards") -> list[str]:
    """Globs, brace patterns (`a-{000..009}.tar`), URLs and $ENV_VARS -> a sorted, de-duplicated list."""
    patterns = [spec] if isinstance(spec, str) else list(spec)
    urls: set[str] = set()
    for pattern in patterns:
        pattern = os.path.expandvars(pattern)
        if "$" in pattern:
            raise DataError(f"{key}: {pattern!r} names an environment variable that is not set")
        for url in wds.shardlists.expand_urls(pattern):
            if "://" in url or url.startswith("pipe:"):
                urls.add(url)
            elif glob.has_magic(url):
                urls.update(glob.glob(url))
            elif Path(url).exists():
                urls.add(url)
            else:
                raise DataError(f"{key}: shard {url} does not exist")
    if not urls:
        raise DataError(f"{key}: {spec!r} matches no shard")
    return sorted(urls)


@dataclass
class Part:
    """What one split reads: shards, and which sample indices of their stream it keeps."""

    shards: list[str]
    stride: int = 1  # keep raw sample i (counted over the part's shards) if i % stride == offset
    offset: int = 0


def split_part(
    shards: list[str],
    epoch: int,
    seed: int,
    rank: int,
    world: int,
    worker: int,
    workers: int,
    shuffle: bool = True,
) -> Part:
    """Shuffle the shard list with the epoch seed, split it by rank, then by worker (once each)."""
    order = list(shards)
    if shuffle:
        random.Random(f"shards-{seed}-{epoch}").shuffle(order)
    part = Part(order)
    for index, count in ((rank, world), (worker, workers)):
        if len(part.shards) >= count:  # enough shards: whole shards per split
            part = Part(part.shards[index::count], part.stride, part.offset)
        else:  # fewer shards than splits: every split reads them all and keeps every count-th sample
            part = Part(part.shards, part.stride * count, part.offset + part.stride * index)
    return part


# ---- raw samples ----------------------------------------------------------------------------------
@dataclass
class RawSample:
    key: str  # shard file name + "/" + sample key: unique over a data set
    members: dict[str, bytes]  # extension -> bytes: "json", "000.jpg", "jpg", "mp4", ...


def read_shard(url: str) -> Iterator[RawSample]:
    """A tar's members grouped by sample key (the name up to the first dot). May raise on a
    truncated or corrupt tar after yielding the samples before the damage."""
    name = Path(url).name
    with wds.gopen(url, "rb") as stream:
        key, members = None, {}
        for member in wds.tariterators.tar_file_iterator(stream):
            base = Path(member["fname"]).name
            sample_key, _, ext = base.partition(".")
            if sample_key != key:
                if key is not None:
                    yield RawSample(f"{name}/{key}", members)
                key, members = sample_key, {}
            members[ext.lower()] = member["data"]
        if key is not None:
            yield RawSample(f"{name}/{key}", members)


class SplitStream:
    """The raw samples of one split, epoch after epoch, starting at a saved position."""

    def __init__(
        self,
        shards: list[str],
        seed: int,
        rank: int,
        world: int,
        worker: int,
        workers: int,
        buffer: int,
        epoch: int = 0,
        consumed: int = 0,
        loop: bool = True,
        shuffle: bool = True,
    ):
        self.shards, self.seed, self.buffer, self.loop, self.shuffle = shards, seed, buffer, loop, shuffle
        self.rank, self.world, self.worker, self.workers = rank, world, worker, workers
        self.epoch, self.consumed = epoch, consumed  # position of the next sample to hand out
        self.skipped: Counter = Counter()  # reasons -> count (bad tars counted here, samples by decode)

    def _epoch_samples(self, epoch: int) -> Iterator[RawSample]:
        part = split_part(
            self.shards, epoch, self.seed, self.rank, self.world, self.worker, self.workers, self.shuffle
        )
        index = 0
        for url in part.shards:
            try:
                for raw in read_shard(url):
                    if index % part.stride == part.offset:
                        yield raw
                    index += 1
            except (tarfile.TarError, OSError, ValueError) as e:
                self.skipped["bad_tar"] += 1
                _warn(self.skipped, f"shard {url}: unreadable after {index} samples ({e}); skipping the rest")

    def _shuffled(self, epoch: int) -> Iterator[RawSample]:
        samples = self._epoch_samples(epoch)
        if not self.shuffle or self.buffer <= 1:
            yield from samples
            return
        rng = random.Random(f"samples-{self.seed}-{epoch}-{self.rank}-{self.worker}")
        pool: list[RawSample] = []
        for raw in samples:
            if len(pool) < self.buffer:
                pool.append(raw)
                continue
            i = rng.randrange(len(pool))
            yield pool[i]
            pool[i] = raw
        rng.shuffle(pool)
        yield from pool

    def __iter__(self) -> Iterator[RawSample]:
        """Yields samples from the saved position on; `self.epoch/consumed` point past each one."""
        skip = self.consumed
        while True:
            seen = 0
            for raw in self._shuffled(self.epoch):
                seen += 1
                if seen <= skip:  # fast-forward on resume: nothing is decoded
                    continue
                self.consumed = seen
                yield raw
            if seen == 0 and self.loop:
                raise DataError(
                    f"split (rank {self.rank}/{self.world}, worker {self.worker}/{self.workers}) "
                    f"of {len(self.shards)} shards has no samples in epoch {self.epoch}; use fewer "
                    "ranks/workers or more data"
                )
            if not self.loop:
                return
            self.epoch, self.consumed, skip = self.epoch + 1, 0, 0


# ---- decoding -------------------------------------------------------------------------------------
@dataclass
class Decoded:
    key: str
    samples: tuple[Sample, ...]  # (sample,) or, for DPO, (chosen, rejected)
    frames: int
    objects: np.ndarray | None = None  # [T, K, 6] object targets (loss.object_weight / gaze_weight > 0)
    target: int = -1  # the object the question is about (JSON `target`; -1 = none), for gaze_weight > 0


class Decoder:
    """Raw sample -> model Sample(s). Raises CorruptSample for anything unusable."""

    def __init__(self, model_config: FVLMConfig, tokenizer, loss: str, dpo: bool, objects: bool = False):
        self.config, self.tokenizer, self.loss, self.dpo = model_config, tokenizer, loss, dpo
        self.objects = objects  # also decode object targets (trainer/objects.py)
        self.per_frame = model_config.tokens_per_frame if model_config.architecture == "multi_token" else 1
        self.context = int(model_config.llm.get("max_position_embeddings", 2048))

    def __call__(self, raw: RawSample) -> Decoded:
        meta = self._json(raw)
        frames, numbers = self._frames(raw, meta)  # [T, H, W, 3] uint8 or None; kept frame numbers
        answers = [meta["chosen_assistant"], meta["rejected_assistant"]] if self.dpo else [meta["assistant"]]
        samples = tuple(
            make_sample(frames, meta["user"], a, tokenizer=self.tokenizer, config=self.config, loss=self.loss)
            for a in answers
        )
        n = samples[0].pixel_values.shape[0]
        longest = max(len(s.chat) for s in samples) + n * self.per_frame
        if longest > self.context:
            raise CorruptSample("too_long", f"{raw.key}: {longest} tokens > LLM context {self.context}")
        objects, target = None, -1
        if self.objects and frames is not None:
            if numbers is None:
                raise CorruptSample("no_objects", f"{raw.key}: object targets need numbered frame members")
            try:
                objects = object_targets(meta, numbers, frames.shape[1:3], self.config.image_size)
            except ObjectLabelError as e:
                raise CorruptSample("no_objects", f"{raw.key}: {e} (loss.object_weight / gaze_weight "
                                    "need them)") from e
            t = meta.get("target")
            if isinstance(t, int) and not isinstance(t, bool) and 0 <= t < objects.shape[1]:
                target = t
        return Decoded(raw.key, samples, n, objects, target)

    def _json(self, raw: RawSample) -> dict:
        if "json" not in raw.members:
            raise CorruptSample("bad_json", f"{raw.key}: no .json member")
        try:
            meta = json.loads(raw.members["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CorruptSample("bad_json", f"{raw.key}: invalid JSON ({e})") from e
        needed = ("user", "chosen_assistant", "rejected_assistant") if self.dpo else ("user", "assistant")
        if not isinstance(meta, dict) or any(not isinstance(meta.get(k), str) for k in needed):
            raise CorruptSample("bad_json", f"{raw.key}: JSON needs string fields {needed}")
        return meta

    def _frames(self, raw: RawSample, meta: dict) -> tuple[np.ndarray | None, list[int] | None]:
        """The frames [T, H, W, 3] uint8 (None: text only) and, for numbered frame members, the
        positions of the kept ones among all of them."""
        cfg = self.config
        numbered = sorted((int(m.group(1)), ext) for ext in raw.members if (m := FRAME_MEMBER.match(ext)))
        if numbered:
            stated = meta.get("frame_count")
            if isinstance(stated, int) and stated > 0 and stated != len(numbered):  # e.g. a truncated tar
                raise CorruptSample(
                    "missing_frames", f"{raw.key}: frame_count {stated}, {len(numbered)} frames"
                )
            kept = list(range(len(numbered)))
            if len(numbered) > cfg.max_frames:  # uniform thinning, as fvlm.video does for arrays
                kept = np.unique(np.linspace(0, len(numbered) - 1, cfg.max_frames).round().astype(int)).tolist()
                numbered = [numbered[i] for i in kept]
            frames = [_decode_image(raw.members[ext], f"{raw.key}.{ext}") for _, ext in numbered]
            if len({f.shape for f in frames}) > 1:
                raise CorruptSample("bad_image", f"{raw.key}: frames differ in size")
            return np.stack(frames), kept  # [T, H, W, 3]
        image = next((e for e in IMAGE_MEMBERS if e in raw.members), None)
        if image is not None:
            frame = _decode_image(raw.members[image], f"{raw.key}.{image}")
            return np.repeat(frame[None], cfg.image_frames, axis=0), None  # [image_frames, H, W, 3]
        video = next((e for e in VIDEO_MEMBERS if e in raw.members), None)
        if video is not None:
            return self._video(raw, video), None
        if int(meta.get("frame_count") or 0) > 0:
            raise CorruptSample(
                "missing_frames", f"{raw.key}: frame_count {meta['frame_count']} but no frames"
            )
        return None, None  # a text-only sample

    def _video(self, raw: RawSample, ext: str) -> np.ndarray:
        from fvlm.video import load_video

        cfg = self.config
        with tempfile.NamedTemporaryFile(suffix=f".{ext}") as f:
            f.write(raw.members[ext])
            f.flush()
            try:
                clip = load_video(f.name, fps=cfg.fps, max_frames=cfg.max_frames, max_side=cfg.image_size)
            except VideoError as e:
                raise CorruptSample("bad_video", f"{raw.key}.{ext}: {e}") from e
        return clip.frames


def _decode_image(data: bytes, name: str) -> np.ndarray:
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # [H, W, 3] BGR or None
    if img is None:
        raise CorruptSample("bad_image", f"{name}: not a decodable image")
    return np.ascontiguousarray(img[..., ::-1])


def _warn(skipped: Counter, message: str) -> None:
    if sum(skipped.values()) <= MAX_WARNINGS:
        print(f"[data] skipped: {message}", file=sys.stderr, flush=True)


# ---- batches --------------------------------------------------------------------------------------
@dataclass
class TrainBatch:
    batch: Batch  # for DPO: rows [0, B) chosen, [B, 2B) rejected, same frames
    keys: list[str]  # sample keys, in row order (DPO: one per pair)
    kind: str  # "train" | "text" (text retention) | "eval"
    worker: int = 0  # logical worker that made it
    state: dict = field(default_factory=dict)  # that worker's position after this batch
    objects: torch.Tensor | None = None  # [B, T, K, 6] object targets (loss.object_weight / gaze_weight > 0)
    target: torch.Tensor | None = None  # [B] long, the asked-about object (-1 = none), with `objects`

    @property
    def size(self) -> int:
        return len(self.keys)

    def pin_memory(self) -> TrainBatch:
        pinned = Batch(**{f.name: getattr(self.batch, f.name).pin_memory() for f in fields(Batch)})
        pin = lambda t: None if t is None else t.pin_memory()
        return TrainBatch(pinned, self.keys, self.kind, self.worker, self.state, pin(self.objects),
                          pin(self.target))


class Batcher:
    """Decoded samples from a stream, packed into fixed-size or frame-budget batches."""

    def __init__(
        self,
        stream: SplitStream,
        decoder: Decoder,
        batch_size: int,
        pad_id: int,
        max_frames: int | None = None,
    ):
        self.stream, self.decoder, self.pad_id = stream, decoder, pad_id
        self.batch_size, self.max_frames = batch_size, max_frames
        self.samples = iter(stream)
        self.pending: tuple[Decoded, tuple[int, int]] | None = None  # sample that overflowed a batch

    def _next(self) -> tuple[Decoded, tuple[int, int]] | None:
        """The next decodable sample and the stream position *before* it (None: stream ended)."""
        if self.pending is not None:
            item, self.pending = self.pending, None
            return item
        failures = 0
        while True:
            before = (self.stream.epoch, self.stream.consumed)
            raw = next(self.samples, None)
            if raw is None:
                return None
            try:
                return self.decoder(raw), before
            except CorruptSample as e:
                self.stream.skipped[e.reason] += 1
                _warn(self.stream.skipped, str(e))
                failures += 1
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    raise DataError(f"{failures} samples in a row could not be decoded; last: {e}") from e

    def next_batch(self) -> list[Decoded]:
        """Up to batch_size samples (or up to max_frames frames); [] when a finite stream ended."""
        batch: list[Decoded] = []
        frames = 0
        while len(batch) < self.batch_size:
            item = self._next()
            if item is None:
                break
            decoded, _ = item
            if self.max_frames is not None and batch and frames + decoded.frames > self.max_frames:
                self.pending = item  # starts the next batch
                break
            batch.append(decoded)
            frames += decoded.frames
        return batch

    @property
    def position(self) -> tuple[int, int]:
        """Where a resumed stream must start: before the pending sample, else after the last."""
        if self.pending is not None:
            return self.pending[1]
        return self.stream.epoch, self.stream.consumed

    def collate(self, decoded: list[Decoded]) -> Batch:
        rows = [d.samples[0] for d in decoded] + [d.samples[1] for d in decoded if len(d.samples) > 1]
        return collate(rows, self.pad_id)


def collate_objects(decoded: list[Decoded], frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """TrainBatch.objects [B, frames, K, 6] and TrainBatch.target [B] of samples decoded with objects."""
    return (collate_targets([x.objects for x in decoded], frames),
            torch.tensor([x.target for x in decoded], dtype=torch.long))


def _coin(seed: int, rank: int, worker: int, index: int) -> float:
    """A uniform number fixed by (seed, rank, worker, batch index): text or not, without state."""
    digest = hashlib.sha256(f"text-{seed}-{rank}-{worker}-{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def fresh_state() -> dict:
    return {"epoch": 0, "consumed": 0, "text_epoch": 0, "text_consumed": 0, "batches": 0, "skipped": {}}


class TrainStream(IterableDataset):
    """Endless training batches for one rank; see the module docstring for order and resume."""

    def __init__(
        self,
        data: DataConfig,
        decoder: Decoder,
        pad_id: int,
        seed: int,
        rank: int,
        world: int,
        position: dict | None = None,
    ):
        self.data, self.decoder, self.pad_id, self.seed = data, decoder, pad_id, seed
        self.rank, self.world = rank, world
        self.workers = max(1, data.num_workers)
        self.shards = expand_shards(data.train_shards, "data.train_shards")
        self.text_shards = (
            expand_shards(data.text_shards, "data.text_shards")
            if data.text_shards is not None and data.text_ratio > 0
            else None
        )
        position = copy.deepcopy(position) if position is not None else new_position(world, self.workers)
        check_position(position, world, self.workers)
        self.position = position  # where this run starts (the trainer keeps its own running copy)

    def __iter__(self) -> Iterator[TrainBatch]:
        info = get_worker_info()
        worker = ((info.id if info is not None else 0) + self.position["next_worker"]) % self.workers
        state = dict(self.position["workers"][worker])
        d = self.data
        stream = SplitStream(
            self.shards,
            self.seed,
            self.rank,
            self.world,
            worker,
            self.workers,
            d.shuffle_buffer,
            state["epoch"],
            state["consumed"],
        )
        stream.skipped.update(state["skipped"])
        dynamic = d.dynamic_batch
        vision = Batcher(
            stream,
            self.decoder,
            dynamic.max_batch_size if dynamic else d.batch_size,
            self.pad_id,
            dynamic.max_frames if dynamic else None,
        )
        text = None
        if self.text_shards is not None:
            text_stream = SplitStream(
                self.text_shards,
                self.seed + 1,
                self.rank,
                self.world,
                worker,
                self.workers,
                d.shuffle_buffer,
                state["text_epoch"],
                state["text_consumed"],
            )
            text_stream.skipped = stream.skipped  # one counter per worker
            text = Batcher(text_stream, self.decoder, d.batch_size, self.pad_id)
        index = state["batches"]
        while True:
            use_text = text is not None and _coin(self.seed, self.rank, worker, index) < d.text_ratio
            source = text if use_text else vision
            decoded = source.next_batch()
            index += 1
            (epoch, consumed) = vision.position
            (t_epoch, t_consumed) = text.position if text is not None else (0, 0)
            state = {
                "epoch": epoch,
                "consumed": consumed,
                "text_epoch": t_epoch,
                "text_consumed": t_consumed,
                "batches": index,
                "skipped": dict(stream.skipped),
            }
            batch = source.collate(decoded)
            objects = target = None
            if self.decoder.objects and not use_text:
                objects, target = collate_objects(decoded, batch.frame_mask.shape[1])
            yield TrainBatch(batch, [x.key for x in decoded], "text" if use_text else "train", worker,
                             state, objects, target)


def new_position(world: int, workers: int) -> dict:
    return {
        "world": world,
        "num_workers": workers,
        "next_worker": 0,
        "workers": [fresh_state() for _ in range(workers)],
    }


def check_position(position: dict, world: int, workers: int) -> None:
    if position["world"] != world:
        raise ConfigError(
            f"the checkpoint's data position is for {position['world']} ranks, this run has "
            f"{world}: resume with the same number of processes"
        )
    if position["num_workers"] != workers:
        raise ConfigError(
            f"config key 'data.num_workers': the checkpoint was written with "
            f"{position['num_workers']} workers per rank; resume with the same value"
        )


def advance(position: dict, batch: TrainBatch) -> None:
    """Record a consumed batch in the rank's data position (main process)."""
    position["workers"][batch.worker] = batch.state
    position["next_worker"] = (batch.worker + 1) % position["num_workers"]


def skipped_counts(position: dict) -> Counter:
    total: Counter = Counter()
    for state in position["workers"]:
        total.update(state["skipped"])
    return total


class EvalStream(IterableDataset):
    """One pass over the validation shards: sorted, unshuffled, split by rank and worker."""

    def __init__(
        self,
        shards: list[str],
        decoder: Decoder,
        batch_size: int,
        pad_id: int,
        rank: int,
        world: int,
        workers: int,
        max_samples: int,
    ):
        self.shards, self.decoder, self.batch_size, self.pad_id = shards, decoder, batch_size, pad_id
        self.rank, self.world, self.workers = rank, world, max(1, workers)
        self.limit = -(-max_samples // (world * self.workers))  # per split

    def __iter__(self) -> Iterator[TrainBatch]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        stream = SplitStream(
            self.shards, 0, self.rank, self.world, worker, self.workers, buffer=1, loop=False, shuffle=False
        )
        batcher = Batcher(stream, self.decoder, self.batch_size, self.pad_id)
        left = self.limit
        while left > 0:
            decoded = batcher.next_batch()[:left]
            if not decoded:
                return
            left -= len(decoded)
            batch = batcher.collate(decoded)
            objects = target = None
            if self.decoder.objects:  # stage 0 validates the object head
                objects, target = collate_objects(decoded, batch.frame_mask.shape[1])
            yield TrainBatch(batch, [x.key for x in decoded], "eval", worker,
                             {"skipped": dict(stream.skipped)}, objects, target)


def loader(dataset: IterableDataset, workers: int, prefetch: int, pin: bool) -> DataLoader:
    kw = {"prefetch_factor": prefetch, "persistent_workers": False} if workers > 0 else {}
    return DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pin, **kw)


def shard_texts(shards: list[str]) -> Iterator[str]:
    """Every chat string in the shards' JSON (for training a tokenizer); unreadable JSON skipped."""
    for url in shards:
        for raw in read_shard(url):
            try:
                meta = json.loads(raw.members.get("json", b"{}"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            for k in ("user", "assistant", "chosen_assistant", "rejected_assistant"):
                if isinstance(meta.get(k), str):
                    yield meta[k]
