"""trainer.logger (CSV, wandb offline / absent, resume truncation) and trainer.build speed-ups."""

from __future__ import annotations

import csv
import json
import sys

import pytest
import torch
from test_trainer_helpers import tiny_config

from trainer.build import speedups
from trainer.config import from_dict
from trainer.logger import COLUMNS, RunLogger, git_hash


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_has_one_header_and_resume_drops_rows_after_the_checkpoint(tmp_path):
    cfg = from_dict(tiny_config(tmp_path, "x.tar"))
    log = RunLogger(cfg, tmp_path, resume_step=None, use_wandb=False)
    for step in range(1, 6):
        log.log("train", step, {"loss": 1.0 / step, "samples": step * 2})
    log.log("eval", 5, {"val_loss": 0.5, "val_loss_coarse": None})
    with pytest.raises(KeyError, match="no_such_metric"):
        log.log("train", 6, {"no_such_metric": 1})
    RunLogger(cfg, tmp_path, resume_step=3, use_wandb=False).log("train", 4, {"loss": 9.0})
    text = (tmp_path / "metrics.csv").read_text()
    assert text.count("event,step") == 1 and text.splitlines()[0].split(",") == COLUMNS
    got = rows(tmp_path / "metrics.csv")
    assert [(r["event"], r["step"], r["loss"]) for r in got] == [
        ("train", "1", "1.0"),
        ("train", "2", "0.5"),
        ("train", "3", repr(1 / 3)),
        ("train", "4", "9.0"),
    ]


def test_wandb_offline_run_and_summary(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = from_dict(
        tiny_config(tmp_path, "x.tar", log={"wandb": {"enabled": True, "mode": "offline", "project": "p"}})
    )
    log = RunLogger(cfg, tmp_path, resume_step=None, use_wandb=True)
    assert log.wandb is not None
    log.log("train", 1, {"loss": 2.0, "loss_coarse": None})
    log.close()
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    assert (tmp_path / "wandb_id").read_text().strip() == log.wandb.id
    path = log.summary(
        "c.yaml", {"loss": 2.0}, {"metric": "val_loss", "value": None, "step": None}, 1, 2, 3.5
    )
    summary = json.loads(path.read_text())
    assert summary["git_hash"] == git_hash() and summary["config_path"] == "c.yaml"
    assert summary["steps"] == 1 and summary["samples"] == 2 and summary["wall_time_s"] == 3.5


def test_missing_or_disabled_wandb_is_not_an_error(tmp_path, monkeypatch, capsys):
    cfg = from_dict(tiny_config(tmp_path, "x.tar", log={"wandb": {"enabled": True}}))
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    monkeypatch.setenv("WANDB_MODE", "online")
    assert RunLogger(cfg, tmp_path, None, use_wandb=True).wandb is None
    assert "wandb is not installed" in capsys.readouterr().err
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert RunLogger(cfg, tmp_path, None, use_wandb=True).wandb is None


def test_gradient_checkpointing_keeps_the_loss_and_compile_is_wired(tmp_path, make_model):
    from fvlm.batch import collate, make_sample

    model = make_model().train()
    frames = torch.randint(0, 255, (3, 32, 32, 3), dtype=torch.uint8).numpy()
    batch = collate(
        [make_sample(frames, "What color?", "red", tokenizer=model.tokenizer, config=model.config)],
        model.tokenizer.pad_token_id,
    )
    plain = model(batch, mode="coarse_fine").loss
    cfg = from_dict(tiny_config(tmp_path, "x.tar", model={"gradient_checkpointing": True, "compile": True}))
    speedups(model, cfg)
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.llm.modules())
    assert model.llm.get_decoder()._compiled_call_impl is not None  # compiled lazily, on first call
    model.llm.get_decoder()._compiled_call_impl = None  # (compiling is too slow for a CPU test)
    calls = []
    model.llm.get_decoder().layers[0].input_layernorm.register_forward_pre_hook(lambda *_: calls.append(1))
    ckpt = model(batch, mode="coarse_fine").loss
    assert torch.allclose(plain, ckpt) and len(calls) == 2  # coarse + fine pass
    ckpt.backward()
    assert len(calls) == 4  # both recomputed in the backward: activations were not kept
    assert model.llm_to_query.weight.grad.abs().sum() > 0


def test_step_sums_become_the_logged_metrics(tmp_path):
    from trainer import objectives

    raw = tiny_config(tmp_path / "run", "unused/*.tar", loss={"object_weight": 1.0, "gaze_weight": 0.5})
    cfg = from_dict(raw)
    names = objectives.sum_names(cfg)
    assert "loss_objects" in names and "loss_gaze" in names and "loss_token" not in names
    sums = dict.fromkeys(names, 0.0)
    objectives.add(sums, {"loss": 3.0, "loss_fine": 2.0, "loss_coarse": 4.0, "coarse_batches": 1.0,
                          "loss_objects": 0.6, "object_shape_acc": 0.5, "object_color_acc": 1.0,
                          "objects_batches": 1.0})
    objectives.add(sums, {"loss": 1.0, "loss_fine": 1.0})  # a micro-batch without coarse / objects
    m = objectives.metrics(sums, n=2, stage=cfg.stage)
    assert m == {"loss": 2.0, "loss_fine": 1.5, "loss_coarse": 4.0, "loss_ratio": 1.5 / 4.0,
                 "loss_objects": 0.6, "object_shape_acc": 0.5, "object_color_acc": 1.0}  # no gaze batch
    assert set(m) <= set(COLUMNS)
    with pytest.raises(KeyError):
        objectives.add(sums, {"loss_token": 1.0})  # a term the configuration does not have
