"""Raw videos / images / chat text -> webdataset shards in the trainer's format (docs/data.md).

    python -m trainer.make_shards --manifest ann.jsonl --out DIR [--size 224] [--per-shard 1000]
                                  [--workers 4] [--fps 1] [--max-frames 64] [--quality 90]

The manifest has one JSON object per line:

    {"video": "clips/a.mp4", "user": "Describe the video.", "assistant": "...", "source": "openvid"}
    {"image": "images/b.jpg", "user": "...", "assistant": "...", "source": "cauldron/ai2d"}
    {"user": "...", "assistant": "...", "source": "smoltalk"}                       (text only)
    + DPO rows: "chosen_assistant", "rejected_assistant" ("assistant" may then be left out)

Relative paths are relative to the manifest's folder; other fields are copied into the JSON.
Videos are sampled with fvlm's own sampler (fvlm.video: 1 fps, at most 64 frames, uniform over the
whole video); frames and images are short-side resized and center-cropped to --size and stored as
JPEG: KEY.000.jpg, KEY.001.jpg, ... for a video, KEY.jpg for an image (the trainer replicates it),
only KEY.json for text. KEY is the manifest row number.

Shard i holds manifest rows [i * per_shard, (i + 1) * per_shard) as DIR/shard-{i:06d}.tar; it is
written under a temporary name and renamed, so a re-run skips every finished shard. Rows whose
file is unreadable are skipped, logged to DIR/errors.jsonl and counted in the summary.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fvlm.progress import track

SHARD_PATTERN = "shard-{:06d}.tar"


@dataclass
class Options:
    size: int = 224
    fps: float = 1.0
    max_frames: int = 64
    quality: int = 90


@dataclass
class ShardJob:
    index: int
    rows: list[tuple[int, str]]  # (row number, raw manifest line)
    root: Path  # the manifest's folder
    out: Path
    options: Options


@dataclass
class ShardResult:
    index: int
    samples: int
    errors: list[dict]  # {"row", "file", "reason"}
    skipped_existing: bool = False


def _encode(frame: np.ndarray, size: int, quality: int) -> bytes:
    """[H, W, 3] uint8 RGB -> JPEG bytes of the centre square resized to size x size."""
    import cv2

    from fvlm.video import center_crop

    square = center_crop(frame[None])[0]
    interp = cv2.INTER_AREA if square.shape[0] > size else cv2.INTER_CUBIC
    img = cv2.resize(np.ascontiguousarray(square), (size, size), interpolation=interp)
    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def sample_members(row: dict, root: Path, opt: Options) -> tuple[dict[str, bytes], int]:
    """The tar members (minus the JSON) of one manifest row, and its frame count."""
    from fvlm.video import load_video

    if "video" in row:
        clip = load_video(root / row["video"], fps=opt.fps, max_frames=opt.max_frames, max_side=opt.size)
        frames = {f"{i:03d}.jpg": _encode(f, opt.size, opt.quality) for i, f in enumerate(clip.frames)}
        return frames, len(frames)
    if "image" in row:
        clip = load_video(root / row["image"], image_frames=1, max_side=opt.size)
        return {"jpg": _encode(clip.frames[0], opt.size, opt.quality)}, 1
    return {}, 0


def _check_row(row: object) -> dict:
    if not isinstance(row, dict):
        raise TypeError("a manifest line must be a JSON object")
    if not isinstance(row.get("user"), str):
        raise TypeError("missing 'user' text")
    has_answer = isinstance(row.get("assistant"), str)
    has_pair = isinstance(row.get("chosen_assistant"), str) and isinstance(row.get("rejected_assistant"), str)
    if not (has_answer or has_pair):
        raise ValueError("needs 'assistant' (or 'chosen_assistant' and 'rejected_assistant')")
    if "video" in row and "image" in row:
        raise ValueError("give 'video' or 'image', not both")
    return row


def write_shard(job: ShardJob) -> ShardResult:
    """Write one shard (rows that fail are skipped and reported)."""
    import webdataset as wds

    from fvlm.errors import FVLMError

    final = job.out / SHARD_PATTERN.format(job.index)
    if final.exists():
        return ShardResult(job.index, 0, [], skipped_existing=True)
    tmp = final.with_name(f".{final.name}.tmp")
    errors, written = [], 0
    with open(tmp, "wb") as f:
        writer = wds.TarWriter(f, encoder=False, mtime=0)
        for number, text in job.rows:
            try:
                row = _check_row(json.loads(text))
                members, count = sample_members(row, job.root, job.options)
            except (json.JSONDecodeError, TypeError, ValueError, FVLMError, OSError) as e:
                errors.append({"row": number, "file": _file_of(text), "reason": str(e)[:300]})
                continue
            meta = {**row, "source": row.get("source", ""), "frame_count": count}
            writer.write({"__key__": f"{number:09d}", "json": json.dumps(meta).encode(), **members})
            written += 1
        writer.close()
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return ShardResult(job.index, written, errors)


def _file_of(text: str) -> str | None:
    try:
        row = json.loads(text)
    except json.JSONDecodeError:
        return None
    return row.get("video") or row.get("image") if isinstance(row, dict) else None


def make_shards(
    manifest: str | Path,
    out: str | Path,
    per_shard: int = 1000,
    workers: int = 1,
    options: Options | None = None,
    progress: bool = True,
) -> dict:
    """Build the shards of a manifest; returns a summary (shards written/skipped, samples, errors)."""
    manifest, out = Path(manifest), Path(out)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest} not found")
    if per_shard < 1 or workers < 1:
        raise ValueError("--per-shard and --workers must be >= 1")
    lines = [(i, t) for i, t in enumerate(manifest.read_text().splitlines()) if t.strip()]
    out.mkdir(parents=True, exist_ok=True)
    opts = options or Options()
    jobs = [
        ShardJob(i // per_shard, lines[i : i + per_shard], manifest.parent, out, opts)
        for i in range(0, len(lines), per_shard)
    ]
    summary = {"shards": 0, "skipped_shards": 0, "samples": 0, "errors": 0, "out": str(out)}
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 1 and len(jobs) > 1 else None
    results = pool.imap_unordered(write_shard, jobs) if pool else map(write_shard, jobs)
    try:
        with open(out / "errors.jsonl", "a") as log:
            for res in track(results, "shards", total=len(jobs), unit="shards", disable=not progress):
                if res.skipped_existing:
                    summary["skipped_shards"] += 1
                    continue
                summary["shards"] += 1
                summary["samples"] += res.samples
                summary["errors"] += len(res.errors)
                for err in res.errors:
                    log.write(json.dumps({"shard": SHARD_PATTERN.format(res.index), **err}) + "\n")
                    print(
                        f"[make_shards] skipped row {err['row']} ({err['file']}): {err['reason']}",
                        file=sys.stderr,
                    )
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trainer.make_shards",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    p.add_argument("--manifest", required=True, help="JSONL file, one sample per line")
    p.add_argument("--out", required=True, help="output folder for shard-NNNNNN.tar")
    p.add_argument("--per-shard", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="worker processes")
    p.add_argument("--size", type=int, default=224, help="frame side in px (default 224)")
    p.add_argument("--fps", type=float, default=1.0, help="frames per second sampled (default 1)")
    p.add_argument("--max-frames", type=int, default=64, help="frame cap per video (default 64)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    try:
        summary = make_shards(
            a.manifest,
            a.out,
            a.per_shard,
            a.workers,
            Options(a.size, a.fps, a.max_frames, a.quality),
            progress=not a.quiet,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{summary['shards']} shards written ({summary['skipped_shards']} already done), "
        f"{summary['samples']} samples, {summary['errors']} unreadable rows skipped"
        + (f" (see {Path(a.out) / 'errors.jsonl'})" if summary["errors"] else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
