"""Shared helpers of the trainer tests: tiny shards written on the spot, tiny configs, subprocess runs.

No tests here; the test_trainer_*.py files import these functions.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 80, 240), "yellow": (240, 220, 20)}
IMAGE = 16  # frame side of the test model


def frames_of(color: str, n: int, size: int = IMAGE, seed: int = 0) -> list[np.ndarray]:
    """n frames [size, size, 3] uint8: a coloured square over noise."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n):
        f = rng.integers(0, 50, size=(size, size, 3), dtype=np.uint8)
        x = (t * 2) % (size // 2)
        f[size // 4 : size // 4 + size // 2, x : x + size // 2] = COLORS[color]
        out.append(f)
    return out


def jpeg(frame: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", frame[..., ::-1])
    assert ok
    return buf.tobytes()


def video_sample(key: str, color: str, n_frames: int, seed: int = 0, **json_extra) -> dict[str, bytes]:
    meta = {
        "user": "What color is the square?",
        "assistant": f"The square is {color}.",
        "source": "test",
        "frame_count": n_frames,
        **json_extra,
    }
    s = {"__key__": key, "json": json.dumps(meta).encode()}
    for i, f in enumerate(frames_of(color, n_frames, seed=seed)):
        s[f"{i:03d}.jpg"] = jpeg(f)
    return s


def image_sample(key: str, color: str) -> dict[str, bytes]:
    meta = {"user": "Name the color.", "assistant": color, "source": "test/image", "frame_count": 1}
    return {"__key__": key, "json": json.dumps(meta).encode(), "jpg": jpeg(frames_of(color, 1)[0])}


def text_sample(key: str, i: int = 0) -> dict[str, bytes]:
    words = list(COLORS)
    meta = {
        "user": f"Say the word {words[i % 4]}.",
        "assistant": f"{words[i % 4]}",
        "source": "test/text",
        "frame_count": 0,
    }
    return {"__key__": key, "json": json.dumps(meta).encode()}


def dpo_sample(key: str, color: str, n_frames: int = 2, seed: int = 0) -> dict[str, bytes]:
    other = "blue" if color != "blue" else "red"
    meta = {
        "user": "What color is the square?",
        "chosen_assistant": f"It is {color}.",
        "rejected_assistant": f"It is {other}.",
        "source": "test/dpo",
        "frame_count": n_frames,
    }
    s = {"__key__": key, "json": json.dumps(meta).encode()}
    for i, f in enumerate(frames_of(color, n_frames, seed=seed)):
        s[f"{i:03d}.jpg"] = jpeg(f)
    return s


def write_tar(path: Path, samples: list[dict[str, bytes]]) -> Path:
    """A webdataset tar: members KEY.EXT in sample order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for s in samples:
            for ext, data in s.items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def video_shards(
    root: Path, n_shards: int, per_shard: int, prefix: str = "train", frames=(2, 3), text_every: int = 0
) -> list[Path]:
    """Shards of video samples (frame counts cycling through `frames`); every text_every-th sample
    is text-only when text_every > 0. Keys are unique: {prefix}{shard}x{index}."""
    paths = []
    colors = list(COLORS)
    for s in range(n_shards):
        samples = []
        for i in range(per_shard):
            key = f"{prefix}{s:02d}x{i:03d}"
            j = s * per_shard + i
            if text_every and j % text_every == text_every - 1:
                samples.append(text_sample(key, j))
            else:
                samples.append(video_sample(key, colors[j % 4], frames[j % len(frames)], seed=j))
        paths.append(write_tar(root / f"{prefix}-{s:03d}.tar", samples))
    return paths


def tiny_model_section(tokenizer_shards: str | list[str], **fvlm) -> dict:
    return {
        "vision": {
            "model_type": "dinov2",
            "hidden_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "mlp_ratio": 2,
            "image_size": IMAGE,
            "patch_size": 8,
            "layerscale_value": 1.0,
        },
        "llm": {
            "model_type": "llama",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 256,
            "tie_word_embeddings": True,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 2,
        },
        "tokenizer": {"train_on": tokenizer_shards, "vocab_size": 300},
        "fvlm": {"image_size": IMAGE, "query_dim": 16, "max_frames": 8, "image_frames": 4, **fvlm},
    }


def tiny_config(
    out_dir: Path,
    train: str | list[str],
    val: str | list[str] | None = None,
    *,
    steps: int = 10,
    batch_size: int = 2,
    grad_accum: int = 1,
    stage: int = 2,
    **sections,
) -> dict:
    """A raw trainer config (dict) for the tiny test model; `sections` are merged over it."""
    raw = {
        "stage": stage,
        "run": {"name": "t", "out_dir": str(out_dir), "seed": 0},
        "model": tiny_model_section(train),
        "data": {
            "train_shards": train,
            "val_shards": val,
            "batch_size": batch_size,
            "shuffle_buffer": 8,
            "num_workers": 0,
        },
        "optim": {
            "lr": {"connector": 3e-3, "dino": 1e-3, "llm": 3e-3},
            "schedule": "cosine",
            "warmup_ratio": 0.1,
        },
        "train": {"total_samples": steps * batch_size * grad_accum, "grad_accum": grad_accum},
        "eval": {"every_steps": 5, "max_samples": 16, "heatmap_clips": 2},
        "checkpoint": {"every_steps": 5, "keep_last": 2},
        "log": {"every_steps": 1, "wandb": {"enabled": False}, "sample_keys": True},
    }
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(raw.get(section), dict):
            raw[section] = {**raw[section], **values}
        else:
            raw[section] = values
    return raw


def write_config(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        **extra,
    }
    return env


def run_trainer(
    config: Path, *args: str, nproc: int = 1, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess:
    """`python -m trainer.run` (or torchrun with gloo when nproc > 1) in a subprocess."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [*launcher, "-m", "trainer.run", "--config", str(config), *args]
    return subprocess.run(
        cmd,
        check=False,
        cwd=REPO,
        env=env or subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_csv(path: Path, event: str = "train") -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r["event"] == event]


def train_and_read(config: Path, raw: dict, column: str) -> tuple[subprocess.CompletedProcess, list[dict[str, str]]]:
    """Write `raw` to `config`, train it (it must succeed) -> (the trainer's process, the training rows
    of its metrics.csv that logged `column`, at least one)."""
    out = run_trainer(write_config(config, raw))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [r for r in read_csv(Path(raw["run"]["out_dir"]) / "metrics.csv") if r[column]]
    assert rows, f"no step logged {column}"
    return out, rows


def read_keys(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def replay_shard(path: Path, sources: list[Path], rank_keys: list[list[dict]], accum: int) -> None:
    """One shard holding, step by step, rank 0's then rank 1's micro-batches (as the DDP run saw them)."""
    raw: dict[str, dict[str, bytes]] = {}
    for src in sources:
        with tarfile.open(src) as tar:
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                raw.setdefault(f"{src.name}/{key}", {})[ext] = tar.extractfile(m).read()
    samples = []
    steps = max(r["step"] for r in rank_keys[0])
    for step in range(1, steps + 1):
        for keys in rank_keys:
            for row in (r for r in keys if r["step"] == step):
                for k in row["keys"]:
                    samples.append({"__key__": f"r{len(samples):05d}", **raw[k]})
    write_tar(path, samples)
