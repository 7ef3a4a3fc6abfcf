"""End-to-end trainer runs on CPU: the tiny config learns, best-on-validation, atomic checkpoints,
exact resume after SIGKILL, and 2-process torchrun (gloo) == single-process training."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_trainer_helpers import (
    REPO,
    dpo_sample,
    read_csv,
    read_keys,
    replay_shard,
    run_trainer,
    subprocess_env,
    tiny_config,
    video_sample,
    video_shards,
    write_config,
    write_tar,
)

from fvlm.hub import load_pretrained, read_weights
from trainer import checkpoint as ckpt
from trainer.build import build_model, build_tokenizer
from trainer.config import from_dict
from trainer.run import main, pick_mode

pytestmark = pytest.mark.usefixtures("one_thread")




def test_tiny_config_loss_decreases_and_the_final_model_loads(tmp_path):
    data = tmp_path / "data"
    video_shards(data, 2, 16, text_every=5)
    corrupt = video_sample("corrupt", "red", 2)
    corrupt["000.jpg"] = b"garbage"
    write_tar(data / "train-900.tar", [corrupt, video_sample("ok", "red", 2)])
    val = video_shards(tmp_path / "val", 1, 6, prefix="val")
    run = tmp_path / "run"
    sets = [
        f"data.train_shards={data}/*.tar",
        f"data.val_shards={val[0]}",
        f"model.tokenizer.train_on={data}/*.tar",
        f"run.out_dir={run}",
        "train.total_samples=240",
        "eval.every_steps=15",
        "log.every_steps=1",
        "data.num_workers=0",
    ]
    assert (
        main(
            [
                "--config",
                str(REPO / "trainer/configs/tiny.yaml"),
                "--no-wandb",
                *[x for s in sets for x in ("--set", s)],
            ]
        )
        == 0
    )

    rows = read_csv(run / "metrics.csv")
    losses = [float(r["loss"]) for r in rows]
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:3]), losses
    assert int(rows[0]["skipped_samples"]) >= 0 and int(rows[-1]["skipped_samples"]) >= 1  # the corrupt JPEG
    epochs = int(rows[-1]["epoch"]) + 1
    assert int(rows[-1]["skipped_samples"]) <= epochs  # counted once per epoch it is read in
    assert sum(int(r["text_batches"]) for r in rows) == 0
    for key in (
        "loss_coarse",
        "loss_ratio",
        "grad_norm",
        "lr_connector",
        "lr_dino",
        "lr_llm",
        "samples_per_s",
    ):
        assert rows[-1][key] != ""
    evals = read_csv(run / "metrics.csv", "eval")
    assert [int(r["step"]) for r in evals] == [15, 30]
    for key in ("val_loss_fine", "val_loss_coarse", "val_entropy_fine", "val_entropy_coarse"):
        assert float(evals[-1][key]) > 0  # coarse is measured although lambda_coarse is 0
    assert len(list((run / "heatmaps" / "step_0000030").glob("*.png"))) == 6  # every val clip (<= 10)

    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["steps"] == 30 and summary["samples"] == 240
    assert summary["final"]["loss"] == losses[-1] and summary["best"]["metric"] == "val_loss"
    assert (run / "config.yaml").read_text().startswith("stage: 2")

    model = load_pretrained(run / "final")  # what `fvlm generate --model RUN/final` loads
    last = read_weights(run / "checkpoints" / "step_0000030" / "model.safetensors")
    for name, tensor in model.state_dict().items():
        if name in last:
            assert torch.equal(tensor, last[name]), name
    frames = np.stack([np.full((16, 16, 3), 200, np.uint8)] * 3)
    out = model.generate(frames, "What color is the square?", max_new_tokens=4)
    assert isinstance(out.text, str) and out.attention.shape[0] == 3


def test_best_checkpoint_is_chosen_on_validation_only(tmp_path):
    """Upstream picked 'best' on the last training micro-batch loss when there was no val set."""
    data = tmp_path / "data"
    video_shards(data, 2, 8)
    val = video_shards(tmp_path / "val", 1, 4, prefix="val")
    with_val = tiny_config(
        tmp_path / "a",
        f"{data}/*.tar",
        str(val[0]),
        steps=12,
        eval={"every_steps": 3, "max_samples": 8, "heatmap_clips": 0},
        checkpoint={"every_steps": 100, "keep_last": 1},
    )
    assert main(["--config", str(write_config(tmp_path / "a.yaml", with_val))]) == 0
    evals = read_csv(tmp_path / "a" / "metrics.csv", "eval")
    values = [float(r["val_loss"]) for r in evals]
    best_step = int(evals[int(np.argmin(values))]["step"])
    link = tmp_path / "a" / "checkpoints" / "best"
    assert link.is_symlink() and os.readlink(link) == ckpt.step_name(best_step)
    assert ckpt.load_state(link).best_metric == min(values)
    kept = {p.name for p in ckpt.list_checkpoints(tmp_path / "a")}
    assert kept == {ckpt.step_name(12), ckpt.step_name(best_step)}  # keep_last 1 + best

    # the next stage starts from the best checkpoint (init_from), not from fresh weights
    stage2 = from_dict(tiny_config(tmp_path / "s2", f"{data}/*.tar",
                                   model={"init_from": str(link), "tokenizer": str(link)}))
    model = build_model(stage2, build_tokenizer(stage2))
    best = read_weights(link / "model.safetensors")
    assert all(torch.equal(t, best[n]) for n, t in model.state_dict().items() if n in best)

    no_val = tiny_config(tmp_path / "b", f"{data}/*.tar", None, steps=4)
    assert main(["--config", str(write_config(tmp_path / "b.yaml", no_val))]) == 0
    assert not (tmp_path / "b" / "checkpoints" / "best").exists()
    summary = json.loads((tmp_path / "b" / "run_summary.json").read_text())
    assert summary["best"]["value"] is None and summary["final"]["loss"] is not None


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    data = tmp_path / "data"
    video_shards(data, 1, 4)
    raw = tiny_config(tmp_path / "run", f"{data}/*.tar", steps=7, batch_size=2, grad_accum=3)
    assert main(["--config", str(write_config(tmp_path / "c.yaml", raw)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "pixel_values  [2, 3, 3, 16, 16]" in out or "pixel_values  [2, 2, 3, 16, 16]" in out
    assert "total steps 7" in out and "warmup steps 0" in out
    assert "effective batch 6 = 2 x grad_accum 3 x 1 ranks" in out
    for group in ("connector", "dino", "llm"):
        assert f"params {group}" in out
    assert "forward FLOPs per sample" in out
    assert not (tmp_path / "run").exists()


def test_bad_config_is_reported_with_the_key(tmp_path, capsys):
    raw = tiny_config(tmp_path / "run", "x.tar")
    raw["data"]["batch_sise"] = 3
    assert main(["--config", str(write_config(tmp_path / "bad.yaml", raw))]) == 2
    assert "data.batch_sise" in capsys.readouterr().err
    raw = tiny_config(tmp_path / "run", "x.tar")
    assert (
        main(["--config", str(write_config(tmp_path / "ok.yaml", raw)), "--set", "optim.lr.dino=fast"]) == 2
    )
    assert "optim.lr.dino" in capsys.readouterr().err
    missing = tmp_path / "earlier_stage" / "final"  # a stage whose previous one has not run yet
    raw["model"].update(init_from=str(missing), tokenizer=str(missing))
    assert main(["--config", str(write_config(tmp_path / "next.yaml", raw))]) == 2
    err = capsys.readouterr().err
    assert "config key 'model.tokenizer'" in err and "run that stage first" in err and "Traceback" not in err


def test_a_crash_while_saving_leaves_no_half_written_checkpoint(tmp_path, monkeypatch):
    from fvlm.tiny import tiny_model

    model = tiny_model(image_size=16)
    opt = torch.optim.AdamW(model.parameters())
    run = tmp_path / "run"
    rng = torch.get_rng_state()
    first = ckpt.save(run, model, opt, ckpt.TrainState(step=1), [{"cpu": rng}], keep_last=2)

    def crash(obj, path, *a, **k):
        Path(path).write_bytes(b"half")  # part of the file is on disk when the process dies
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(run, model, opt, ckpt.TrainState(step=2), [], keep_last=2)
    assert ckpt.latest(run) == first  # the half-written step 2 is invisible to resume
    assert (ckpt.checkpoint_dir(run) / ".tmp-step_0000002").is_dir()
    ckpt.remove_partial(run)
    assert [p.name for p in ckpt.checkpoint_dir(run).iterdir()] == [first.name]
    monkeypatch.undo()
    state, rngs = ckpt.restore(first, model, opt)
    assert state.step == 1 and torch.equal(rngs[0]["cpu"], rng)


def test_resume_after_sigkill_is_exact(tmp_path):
    """Killed (SIGKILL) at step 8 with checkpoints every 5 steps, resumed with resume: auto: the
    CSV has the same per-step losses as an uninterrupted run, and the samples of every step are the
    same ones (no replay, no skip: epoch 0 = each sample exactly once)."""
    data = tmp_path / "data"
    paths = video_shards(data, 4, 6, frames=(1, 2, 3))
    raw = tiny_config(
        tmp_path / "full",
        f"{data}/*.tar",
        steps=16,
        batch_size=2,
        data={"num_workers": 2, "shuffle_buffer": 4},
        checkpoint={"every_steps": 5, "keep_last": 2},
    )
    full = write_config(tmp_path / "full.yaml", raw)
    raw["run"]["out_dir"] = str(tmp_path / "killed")
    killed = write_config(tmp_path / "killed.yaml", raw)

    ref = run_trainer(full)
    assert ref.returncode == 0, ref.stderr[-3000:]
    crash = run_trainer(killed, env=subprocess_env(FVLM_TRAINER_KILL_AT_STEP="8"))
    assert crash.returncode == -9, crash.stderr[-3000:]
    assert [int(r["step"]) for r in read_csv(tmp_path / "killed" / "metrics.csv")] == list(range(1, 9))
    assert ckpt.latest(tmp_path / "killed").name == ckpt.step_name(5)
    assert not (tmp_path / "killed" / "final").exists()
    resumed = run_trainer(killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout

    a, b = read_csv(tmp_path / "full" / "metrics.csv"), read_csv(tmp_path / "killed" / "metrics.csv")
    assert [int(r["step"]) for r in b] == list(range(1, 17))
    for key in ("loss", "loss_fine", "grad_norm", "lr_connector", "samples"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    keys_a, keys_b = (
        read_keys(tmp_path / "full" / "samples_rank0.jsonl"),
        read_keys(tmp_path / "killed" / "samples_rank0.jsonl"),
    )
    assert keys_a == keys_b
    epoch0 = [k for row in keys_b[:12] for k in row["keys"]]  # 24 samples / batch 2 = 12 steps
    expected = set()
    for p in paths:
        with tarfile.open(p) as tar:
            expected |= {f"{p.name}/{m.name.split('.')[0]}" for m in tar.getmembers()}
    assert sorted(epoch0) == sorted(expected)
    assert torch.equal(
        read_weights(tmp_path / "full" / "final" / "model.safetensors")["q_static"],
        read_weights(tmp_path / "killed" / "final" / "model.safetensors")["q_static"],
    )


@pytest.mark.parametrize("loss", ["ce", "dpo"])
def test_two_process_gloo_run_equals_single_process_training(tmp_path, loss):
    """torchrun --nproc_per_node=2 (gloo, CPU): the ranks read disjoint shards, and training equals
    a single process fed the same global batch (rank 0's then rank 1's micro-batches, grad_accum x2).
    For DPO this only holds if the loss goes through the DDP module's forward."""
    data = tmp_path / "data"
    if loss == "dpo":
        sources = [
            write_tar(
                data / f"train-{s}.tar",
                [
                    dpo_sample(f"p{s}x{i}", ["red", "blue", "green"][i % 3], 1 + i % 3, seed=i)
                    for i in range(6)
                ],
            )
            for s in range(4)
        ]
        extra = {"stage": 3, "loss": {"type": "dpo", "beta": 0.1}}
    else:
        sources = video_shards(data, 4, 6, frames=(1, 2, 3), text_every=4)
        sources += video_shards(data, 2, 4, prefix="text", text_every=1)
        extra = {
            "data": {"text_shards": f"{data}/text-*.tar", "text_ratio": 0.3},  # whole text-only batches
            "train": {"modes": {"coarse_fine": 0.5, "coarse_only": 0.5}},
        }  # and steps leaving params unused
    base = tiny_config(
        tmp_path / "ddp",
        f"{data}/train-*.tar",
        steps=5,
        batch_size=2,
        grad_accum=2,
        checkpoint={"every_steps": 100, "keep_last": 1},
    )
    base["data"].update(num_workers=1, **extra.pop("data", {}))
    base["train"].update(extra.pop("train", {}))
    base["train"]["total_samples"] = 5 * 2 * 2 * 2  # 5 steps of 2 ranks x batch 2 x grad_accum 2
    base.update(extra)
    ddp = run_trainer(write_config(tmp_path / "ddp.yaml", base), nproc=2)
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    rank_keys = [read_keys(tmp_path / "ddp" / f"samples_rank{r}.jsonl") for r in (0, 1)]
    shards_of = [
        {k.split("/")[0] for row in keys if row["kind"] == "train" for k in row["keys"]} for keys in rank_keys
    ]
    assert shards_of[0] and shards_of[1] and not shards_of[0] & shards_of[1]

    replay_shard(tmp_path / "replay" / "replay.tar", sources, rank_keys, accum=2)
    single = dict(base, run={**base["run"], "out_dir": str(tmp_path / "single")})
    single["data"] = {
        **base["data"],
        "train_shards": str(tmp_path / "replay" / "replay.tar"),
        "text_shards": None,
        "text_ratio": 0.0,
        "shuffle_buffer": 1,
        "num_workers": 0,
    }
    single["train"] = {**base["train"], "grad_accum": 4}
    single["model"] = {**base["model"], "tokenizer": {"train_on": f"{data}/train-*.tar", "vocab_size": 300}}
    one = run_trainer(write_config(tmp_path / "single.yaml", single))
    assert one.returncode == 0, one.stderr[-4000:]

    a, b = read_csv(tmp_path / "ddp" / "metrics.csv"), read_csv(tmp_path / "single" / "metrics.csv")
    assert len(a) == len(b) == 5
    if loss == "ce":  # the run did have text-only batches and coarse_only steps
        assert sum(int(r["text_batches"]) for r in a) > 0
        cfg = from_dict(base)
        assert {pick_mode(cfg, step) for step in range(5)} == {"coarse_fine", "coarse_only"}
    key = "loss"
    np.testing.assert_allclose([float(r[key]) for r in a], [float(r[key]) for r in b], rtol=2e-5)
    assert [r["samples"] for r in a] == [r["samples"] for r in b]
    wa = read_weights(tmp_path / "ddp" / "final" / "model.safetensors")
    wb = read_weights(tmp_path / "single" / "final" / "model.safetensors")
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=1e-5, msg=name)


def test_dpo_stage_validates_on_pairs_and_picks_best_on_val_dpo_loss(tmp_path):
    data = tmp_path / "data"
    colors = ["red", "blue", "green"]
    for s in range(2):
        write_tar(
            data / f"train-{s}.tar",
            [dpo_sample(f"p{s}x{i}", colors[i % 3], 1 + i % 3, seed=i) for i in range(6)],
        )
    val = write_tar(tmp_path / "val.tar", [dpo_sample(f"v{i}", "red", 2, seed=100 + i) for i in range(4)])
    raw = tiny_config(
        tmp_path / "run",
        f"{data}/*.tar",
        str(val),
        steps=6,
        stage=3,
        loss={"type": "dpo", "beta": 0.1},
        eval={"every_steps": 3, "max_samples": 8, "heatmap_clips": 1},
    )
    assert main(["--config", str(write_config(tmp_path / "dpo.yaml", raw))]) == 0
    train, evals = (
        read_csv(tmp_path / "run" / "metrics.csv"),
        read_csv(tmp_path / "run" / "metrics.csv", "eval"),
    )
    assert all(r["dpo_reward_acc"] != "" and r["dpo_margin"] != "" for r in train)
    assert [int(r["val_samples"]) for r in evals] == [4, 4]
    values = [float(r["val_dpo_loss"]) for r in evals]
    assert all(0 < v < 1 for v in values) and all(0 <= float(r["val_reward_acc"]) <= 1 for r in evals)
    summary = json.loads((tmp_path / "run" / "run_summary.json").read_text())
    assert summary["best"] == {
        "metric": "val_dpo_loss",
        "value": min(values),
        "step": int(evals[int(np.argmin(values))]["step"]),
    }
