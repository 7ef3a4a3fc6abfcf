"""train.parallel fsdp on CPU (torchrun, gloo, 2 processes): the same per-step losses as one process fed
the same global batch, exact resume after SIGKILL, sharded checkpoints whose model loads, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_trainer_helpers import (
    dpo_sample,
    read_csv,
    read_keys,
    replay_shard,
    run_trainer,
    subprocess_env,
    tiny_config,
    video_shards,
    write_config,
    write_tar,
)

from fvlm.errors import CheckpointError, ConfigError
from fvlm.hub import load_pretrained, read_weights
from trainer import checkpoint as ckpt
from trainer.config import from_dict


def fsdp_config(tmp_path, data, name: str, steps: int, **sections) -> dict:
    """Tiny model, 2 ranks x batch 2 x grad_accum 2, text-only batches and coarse_only steps mixed
    in: micro-batches that leave DINO or the fine-query path unused on one rank."""
    raw = tiny_config(tmp_path / name, f"{data}/train-*.tar", steps=steps, batch_size=2, grad_accum=2,
                      **sections)
    raw["data"].update(num_workers=1, text_shards=f"{data}/text-*.tar", text_ratio=0.3)
    raw["train"].update(modes={"coarse_fine": 0.5, "coarse_only": 0.5}, parallel="fsdp",
                        total_samples=steps * 2 * 2 * 2)
    return raw


def shards(tmp_path):
    data = tmp_path / "data"
    sources = video_shards(data, 4, 6, frames=(1, 2, 3), text_every=4)
    sources += video_shards(data, 2, 4, prefix="text", text_every=1)
    return data, sources


def test_two_process_fsdp_equals_single_process_training_and_the_final_model_loads(tmp_path):
    data, sources = shards(tmp_path)
    val = video_shards(tmp_path / "val", 1, 6, prefix="val")  # validation runs on the gathered weights
    base = fsdp_config(tmp_path, data, "fsdp", 5, checkpoint={"every_steps": 100, "keep_last": 1},
                       eval={"every_steps": 3, "max_samples": 16, "heatmap_clips": 1})
    base["data"]["val_shards"] = str(val[0])
    run = run_trainer(write_config(tmp_path / "fsdp.yaml", base), nproc=2)
    assert run.returncode == 0, run.stderr[-4000:]
    rank_keys = [read_keys(tmp_path / "fsdp" / f"samples_rank{r}.jsonl") for r in (0, 1)]
    assert any(row["kind"] == "text" for keys in rank_keys for row in keys)

    # the same global batches in one process: rank 0's then rank 1's micro-batches, grad_accum x2
    replay_shard(tmp_path / "replay" / "replay.tar", sources, rank_keys, accum=2)
    single = dict(base, run={**base["run"], "out_dir": str(tmp_path / "single")})
    single["data"] = {**base["data"], "train_shards": str(tmp_path / "replay" / "replay.tar"),
                      "text_shards": None, "text_ratio": 0.0, "shuffle_buffer": 1, "num_workers": 0}
    single["train"] = {**base["train"], "grad_accum": 4}
    single["model"] = {**base["model"], "tokenizer": {"train_on": f"{data}/train-*.tar", "vocab_size": 300}}
    one = run_trainer(write_config(tmp_path / "single.yaml", single))
    assert one.returncode == 0, one.stderr[-4000:]

    a, b = read_csv(tmp_path / "fsdp" / "metrics.csv"), read_csv(tmp_path / "single" / "metrics.csv")
    assert len(a) == len(b) == 5
    # the same tolerance as DDP against one process: only the order of float sums differs
    np.testing.assert_allclose([float(r["loss"]) for r in a], [float(r["loss"]) for r in b], rtol=2e-5)
    np.testing.assert_allclose([float(r["grad_norm"]) for r in a], [float(r["grad_norm"]) for r in b],
                               rtol=1e-4)
    assert [r["samples"] for r in a] == [r["samples"] for r in b]
    va, vb = (read_csv(tmp_path / name / "metrics.csv", "eval") for name in ("fsdp", "single"))
    assert [r["step"] for r in va] == [r["step"] for r in vb] == ["3", "5"]
    for key in ("val_loss", "val_loss_coarse", "val_entropy_fine"):
        np.testing.assert_allclose([float(r[key]) for r in va], [float(r[key]) for r in vb], rtol=2e-5)
    assert len(list((tmp_path / "fsdp" / "heatmaps" / ckpt.step_name(5)).glob("*.png"))) == 1

    last = tmp_path / "fsdp" / "checkpoints" / ckpt.step_name(5)
    assert sorted(p.name for p in (last / ckpt.SHARDS_NAME).iterdir()) == [".metadata", "__0_0.distcp",
                                                                           "__1_0.distcp"]
    assert not (last / ckpt.OPTIMIZER_NAME).exists()
    wa = read_weights(tmp_path / "fsdp" / "final" / "model.safetensors")
    wb = read_weights(tmp_path / "single" / "final" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=1e-5, msg=name)

    model = load_pretrained(tmp_path / "fsdp" / "final")  # a single safetensors model, as fvlm.load reads
    in_checkpoint = load_pretrained(last)  # every checkpoint is a loadable model too (init_from, generate)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, in_checkpoint.state_dict()[name]), name
    frames = np.stack([np.full((16, 16, 3), 200, np.uint8)] * 2)
    out = model.generate(frames, "What color is the square?", max_new_tokens=3)
    assert isinstance(out.text, str) and out.attention.shape[0] == 2


def test_fsdp_resume_after_sigkill_is_exact(tmp_path):
    """As the DDP test: both ranks killed (SIGKILL) at step 6 with checkpoints every 4 steps, resumed
    with resume: auto: every per-step number and every rank's samples equal an uninterrupted run."""
    data, _ = shards(tmp_path)
    raw = fsdp_config(tmp_path, data, "full", 9, checkpoint={"every_steps": 4, "keep_last": 2})
    full = write_config(tmp_path / "full.yaml", raw)
    raw["run"]["out_dir"] = str(tmp_path / "killed")
    killed = write_config(tmp_path / "killed.yaml", raw)

    ref = run_trainer(full, nproc=2)
    assert ref.returncode == 0, ref.stderr[-3000:]
    crash = run_trainer(killed, nproc=2, env=subprocess_env(FVLM_TRAINER_KILL_AT_STEP="6"))
    assert crash.returncode != 0
    assert [int(r["step"]) for r in read_csv(tmp_path / "killed" / "metrics.csv")] == list(range(1, 7))
    assert ckpt.latest(tmp_path / "killed").name == ckpt.step_name(4)
    assert not (tmp_path / "killed" / "final").exists()
    resumed = run_trainer(killed, nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout

    a, b = read_csv(tmp_path / "full" / "metrics.csv"), read_csv(tmp_path / "killed" / "metrics.csv")
    assert [int(r["step"]) for r in b] == list(range(1, 10))
    for key in ("loss", "loss_fine", "grad_norm", "lr_connector", "samples", "text_batches"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    for rank in (0, 1):
        name = f"samples_rank{rank}.jsonl"
        assert read_keys(tmp_path / "full" / name) == read_keys(tmp_path / "killed" / name)
    wa = read_weights(tmp_path / "full" / "final" / "model.safetensors")
    wb = read_weights(tmp_path / "killed" / "final" / "model.safetensors")
    assert all(torch.equal(wa[n], wb[n]) for n in wa)


def test_fsdp_trains_dpo_with_a_frozen_dino(tmp_path):
    """Stage 3 DPO (a reference model beside the sharded policy) with freeze_dino: DINO's weights
    stay those of the first checkpoint, the LLM's move, and the final model loads."""
    data = tmp_path / "data"
    for s in range(2):
        write_tar(data / f"train-{s}.tar", [dpo_sample(f"p{s}x{i}", ["red", "blue"][i % 2], 1 + i % 2, seed=i)
                                             for i in range(4)])
    raw = tiny_config(tmp_path / "run", f"{data}/*.tar", steps=3, stage=3, loss={"type": "dpo", "beta": 0.1},
                      checkpoint={"every_steps": 1, "keep_last": 3})
    raw["model"]["freeze_dino"] = True
    raw["train"].update(parallel="fsdp", total_samples=3 * 2 * 2)
    run = run_trainer(write_config(tmp_path / "dpo.yaml", raw), nproc=2)
    assert run.returncode == 0, run.stderr[-4000:]
    assert all(r["dpo_reward_acc"] != "" for r in read_csv(tmp_path / "run" / "metrics.csv"))
    first = read_weights(tmp_path / "run" / "checkpoints" / ckpt.step_name(1) / "model.safetensors")
    final = load_pretrained(tmp_path / "run" / "final").state_dict()
    dino = [n for n in first if n.startswith("encoder.dino.")]
    assert dino and all(torch.equal(first[n], final[n]) for n in dino)
    assert not torch.equal(first["llm.model.layers.0.mlp.up_proj.weight"], final["llm.model.layers.0.mlp.up_proj.weight"])


def test_fsdp_trains_the_object_head_beside_the_model(tmp_path):
    """loss.object_weight > 0: the head is part of the sharded TrainModule, saved gathered beside
    the model in every checkpoint, never in it."""
    from fvlm.shapesqa.generate import make_shapes

    make_shapes(tmp_path / "shapes", n=8, seed=0, split="easy", subset="train", size=32, seconds=2.0, fps=4,
                max_frames=4, per_clip=2, videos=False, shard_size=4, progress=False)
    raw = tiny_config(tmp_path / "run", f"{tmp_path}/shapes/train/*.tar", steps=3, loss={"object_weight": 1.0},
                      checkpoint={"every_steps": 100, "keep_last": 1})
    raw["model"]["vision"]["image_size"] = raw["model"]["fvlm"]["image_size"] = 32  # objects >= a quarter patch
    raw["train"].update(parallel="fsdp", total_samples=3 * 2 * 2)
    run = run_trainer(write_config(tmp_path / "objects.yaml", raw), nproc=2)
    assert run.returncode == 0, run.stderr[-4000:]
    assert all(float(r["loss_objects"]) > 0 for r in read_csv(tmp_path / "run" / "metrics.csv"))
    last = ckpt.latest(tmp_path / "run")
    assert set(read_weights(last / ckpt.HEAD_NAME)) == {"shape.weight", "shape.bias", "color.weight", "color.bias"}
    for weights in (last / "model.safetensors", tmp_path / "run" / "final" / "model.safetensors"):
        assert not any(k.startswith("object_head.") for k in read_weights(weights))


def test_fsdp_config_and_checkpoint_errors(tmp_path):
    raw = tiny_config(tmp_path / "run", "x.tar")
    raw["train"]["parallel"] = "zero3"
    with pytest.raises(ConfigError, match="train.parallel"):
        from_dict(raw)
    raw["train"].update(parallel="fsdp", dtype="fp16")
    with pytest.raises(ConfigError, match="train.dtype"):
        from_dict(raw)
    raw["train"]["dtype"] = "auto"
    assert from_dict(raw).train.parallel == "fsdp"

    ddp_checkpoint, fsdp_checkpoint = tmp_path / "a", tmp_path / "b"
    ddp_checkpoint.mkdir()
    (fsdp_checkpoint / ckpt.SHARDS_NAME).mkdir(parents=True)
    ckpt.check_parallel(ddp_checkpoint, sharded=False)
    ckpt.check_parallel(fsdp_checkpoint, sharded=True)
    with pytest.raises(CheckpointError, match="resume it with train.parallel ddp"):
        ckpt.check_parallel(ddp_checkpoint, sharded=True)
    with pytest.raises(CheckpointError, match="resume it with train.parallel fsdp"):
        ckpt.check_parallel(fsdp_checkpoint, sharded=False)
