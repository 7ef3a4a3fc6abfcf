"""trainer.config: strict typed YAML, --set overrides, the shipped configs and their recipe values,
and no config key that nobody reads."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml
from test_trainer_helpers import REPO, tiny_config, write_config

from fvlm.errors import ConfigError
from trainer import config as C

CONFIGS = sorted([*(REPO / "trainer" / "configs").glob("*.yaml"),
                  *(REPO / "experiments" / "shapesqa" / "configs").glob("*.yaml")])
TRAINER_SOURCES = [p for p in (REPO / "trainer").glob("*.py") if p.name != "config.py"]


def load(raw: dict, tmp_path: Path, *sets: str) -> C.Config:
    return C.load_config(write_config(tmp_path / "c.yaml", raw), list(sets))


@pytest.mark.parametrize(
    "mutate,key",
    [
        (lambda r: r["data"].update(batch_sise=2), "data.batch_sise"),
        (lambda r: r.update(optimizer={}), "optimizer"),
        (lambda r: r["model"]["fvlm"].update(querry_dim=8), "model.fvlm.querry_dim"),
        (lambda r: r["log"]["wandb"].update(projekt="x"), "log.wandb.projekt"),
        (lambda r: r["model"]["tokenizer"].update(vocab=3), "model.tokenizer.vocab"),
    ],
)
def test_unknown_keys_are_errors_naming_the_key(tmp_path, mutate, key):
    raw = tiny_config(tmp_path, "x.tar")
    mutate(raw)
    with pytest.raises(ConfigError, match=re.escape(repr(key))):
        load(raw, tmp_path)


@pytest.mark.parametrize(
    "mutate,key",
    [
        (lambda r: r["data"].update(batch_size="two"), "data.batch_size"),
        (lambda r: r["data"].update(batch_size=2.5), "data.batch_size"),
        (lambda r: r["optim"]["lr"].update(dino=[1]), "optim.lr.dino"),
        (lambda r: r["model"].update(freeze_llm="yes"), "model.freeze_llm"),
        (lambda r: r["model"]["fvlm"].update(query_dim="big"), "model.fvlm.query_dim"),
        (lambda r: r["model"]["fvlm"].update(layout="sideways"), "model.fvlm.layout"),
        (lambda r: r["train"].update(modes={"fine_only": 1.0}), "train.modes"),
        (lambda r: r["train"].update(modes={"coarse_fine": 0.5}), "train.modes"),
        (lambda r: r["optim"].update(schedule="linear"), "optim.schedule"),
        (lambda r: r["optim"].update(schedule="converging"), "optim.target_lr"),
        (lambda r: r.update(stage=4), "stage"),
        (lambda r: r.update(stage=0), "loss.object_weight"),  # vision pretraining needs the object loss
        (lambda r: r.update(stage=0, loss={"object_weight": 1.0, "gaze_weight": 1.0}), "loss.gaze_weight"),
        (lambda r: r.update(stage=0, loss={"object_weight": 1.0, "token_weight": 1.0}), "loss.token_weight"),
        (lambda r: r["data"].update(text_ratio=0.2), "data.text_shards"),
        (lambda r: r.update(loss={"type": "dpo"}), "loss.type"),
        (lambda r: r["flops"].update(budget=1e16), "train.total_samples"),
        (lambda r: r["model"].update(init_from="runs/x/final"), "model.tokenizer"),  # new vocab, old weights
        (lambda r: r["model"].update(init_parts=["llm"]), "model.init_parts"),  # parts of nothing
        (lambda r: r["model"].update(init_from="r/final", tokenizer="r/final", init_parts=["query"]), "model.init_parts"),
        (lambda r: r["model"].update(init_from="r/final", tokenizer="r/final", init_parts=[]), "model.init_parts"),
        (lambda r: r.update(loss={"gaze_weight": 1.0}) or r["model"]["fvlm"].update(architecture="multi_token"),
         "loss.gaze_weight"),  # B1 has no query
        (lambda r: r.update(loss={"object_weight": 1.0, "token_weight": 1.0})
         or r["model"]["fvlm"].update(architecture="multi_token"), "loss.token_weight"),
        (lambda r: r.update(stage=0, loss={"object_weight": 1.0})
         or r["model"]["fvlm"].update(architecture="multi_token"), "stage"),  # stage 0 trains the foveated encoder
    ],
)
def test_wrong_types_and_values_are_errors_naming_the_key(tmp_path, mutate, key):
    raw = tiny_config(tmp_path, "x.tar")
    raw.setdefault("flops", {})
    mutate(raw)
    with pytest.raises(ConfigError, match=re.escape(repr(key))):
        load(raw, tmp_path)


def test_set_overrides_parse_yaml_values_and_reject_unknown_keys(tmp_path):
    raw = tiny_config(tmp_path, "x.tar")
    cfg = load(
        raw,
        tmp_path,
        "data.batch_size=5",
        "optim.lr.connector=1e-3",
        "model.freeze_dino=true",
        "train.modes={coarse_fine: 0.75, coarse_only: 0.25}",
        "data.val_shards=[a.tar, b.tar]",
        "model.fvlm.layout=video_first",
    )
    assert cfg.data.batch_size == 5 and cfg.optim.lr.connector == 1e-3 and cfg.model.freeze_dino is True
    assert cfg.mode_probs == {"coarse_fine": 0.75, "coarse_only": 0.25} and cfg.main_mode == "coarse_fine"
    assert cfg.data.val_shards == ["a.tar", "b.tar"] and cfg.model.fvlm["layout"] == "video_first"
    with pytest.raises(ConfigError, match="'data.bach_size'"):
        load(raw, tmp_path, "data.bach_size=5")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load(raw, tmp_path, "data.batch_size")


def test_base_files_merge_and_the_resolved_config_round_trips(tmp_path):
    raw = tiny_config(tmp_path, "x.tar")
    write_config(tmp_path / "base.yaml", raw)
    (tmp_path / "child.yaml").write_text(
        "base: base.yaml\ndata: {batch_size: 7}\nmodel: {fvlm: {layout: video_first}}\n"
    )
    cfg = C.load_config(tmp_path / "child.yaml")
    assert cfg.data.batch_size == 7 and cfg.data.shuffle_buffer == 8  # merged, not replaced
    assert cfg.model.fvlm["layout"] == "video_first" and cfg.model.fvlm["query_dim"] == 16
    resolved = yaml.safe_load(C.to_yaml(cfg))
    assert C.from_dict(resolved) == cfg
    assert list(resolved) == list(C.SECTIONS)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_loads(path):
    cfg = C.load_config(path)
    assert cfg.optim.weight_decay == 0.01 and cfg.optim.grad_clip == 1.0
    assert cfg.run.out_dir.startswith("runs/")


def test_recipe_values_of_the_stage_configs():
    s1, s2, s3 = (C.load_config(REPO / f"trainer/configs/stage{i}_135M.yaml") for i in (1, 2, 3))
    assert (s1.stage, s1.text_loss, s1.optim.schedule, s1.optim.target_lr, s1.optim.warmup_ratio) == (
        1,
        "all",
        "converging",
        3e-5,
        0.03,
    )
    assert (s1.optim.lr.connector, s1.optim.lr.dino, s1.optim.lr.llm) == (1e-3, 1e-5, 1e-5)
    assert s1.data.text_ratio == 0.14 and s1.model.llm == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert s1.model.vision == "facebook/dinov2-small"
    assert (s2.stage, s2.text_loss, s2.optim.schedule, s2.optim.min_lr_ratio, s2.data.text_ratio) == (
        2,
        "answer",
        "cosine",
        0.1,
        0.14,
    )
    assert {s2.optim.lr.connector, s2.optim.lr.dino, s2.optim.lr.llm} == {3e-5}
    assert s2.model.fvlm["image_frames"] == 8 and s2.model.init_from.startswith("runs/stage1_135M")
    assert (s3.loss.type, s3.loss.beta, s3.optim.schedule, s3.data.text_ratio) == ("dpo", 0.1, "cosine", 0.0)
    assert {s3.optim.lr.connector, s3.optim.lr.dino, s3.optim.lr.llm} == {1e-6}
    assert s3.data.val_shards is not None  # best on validation in every stage
    for size in ("360M", "1.7B"):
        for i in (1, 2, 3):
            cfg = C.load_config(REPO / f"trainer/configs/stage{i}_{size}.yaml")
            assert cfg.model.llm == f"HuggingFaceTB/SmolLM2-{size}-Instruct" and cfg.stage == i
            assert cfg.run.name == f"stage{i}_{size}"


def test_ablations_change_what_they_name():
    base = C.to_dict(C.load_config(REPO / "trainer/configs/ablation_base.yaml"))

    def diff(name: str) -> dict:
        d = C.to_dict(C.load_config(REPO / f"trainer/configs/{name}.yaml"))
        out = {}
        for section in d:
            if section == "run":
                continue
            if isinstance(d[section], dict):
                out.update(
                    {
                        f"{section}.{k}": v
                        for k, v in _flat(d[section]).items()
                        if _flat(base[section]).get(k) != v
                    }
                )
            elif d[section] != base[section]:
                out[section] = d[section]
        return out

    assert diff("F1") == {"model.freeze_dino": True, "model.freeze_llm": True}
    assert diff("F2") == {"model.freeze_llm": True}
    ratios = {
        n: lr_ratio(C.load_config(REPO / f"trainer/configs/{n}.yaml")) for n in ("LR1", "LR2", "LR3", "LR4")
    }
    assert {k: round(v) for k, v in ratios.items()} == {"LR1": 10, "LR2": 100, "LR3": 3, "LR4": 1}
    assert diff("A1") == {"model.fvlm.deep_query": False}
    assert diff("A6") == {"train.modes": "coarse_only"}
    for n in (1, 4, 8, 16):
        cfg = C.load_config(REPO / f"trainer/configs/A8_{n}.yaml")
        assert cfg.model.fvlm["image_frames"] == n and cfg.stage == 2 and "cauldron" in cfg.data.train_shards
    assert (
        diff("B1")["model.fvlm.architecture"] == "multi_token"
        and diff("B1")["model.fvlm.tokens_per_frame"] == 16
    )
    assert len(C.load_config(REPO / "trainer/configs/D1.yaml").data.train_shards) == 3
    assert [C.load_config(REPO / f"trainer/configs/T{i}.yaml").data.text_ratio for i in (1, 2, 3)] == [
        0,
        0.07,
        0.28,
    ]


def lr_ratio(cfg: C.Config) -> float:
    return cfg.optim.lr.connector / cfg.optim.lr.dino


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "modes":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _fields(cls: type, path: str = "") -> list[tuple[str, str]]:
    """(dotted key, attribute name) of every leaf field of a config dataclass."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        nested = [t for t in (hints[f.name], *typing.get_args(hints[f.name])) if dataclasses.is_dataclass(t)]
        if nested:
            out += [(f"{path}{f.name}", f.name)] + _fields(nested[0], f"{path}{f.name}.")
        else:
            out.append((f"{path}{f.name}", f.name))
    return out


# Local names the trainer gives a config section (`d = cfg.data`, `def f(cfg: OptimConfig)`, ...).
ALIASES = {
    "data": {"d"},
    "dynamic_batch": {"dynamic"},
    "optim": {"o", "cfg"},
    "tokenizer": {"spec"},
    "wandb": {"w"},
    "flops": {"f"},
    "model": {"m"},
    "train": {"t"},
    "lr": set(),
    "": {"cfg", "self"},
}


def test_every_config_key_is_read_by_the_trainer():
    """Upstream had keys nobody read (frame_size, keep_best, query_bias, ...): ablations that were
    no-ops. Every key of ours must be read, as `<section>.<key>`, somewhere outside config.py."""
    source = "\n".join(p.read_text() for p in TRAINER_SOURCES)
    unread = []
    for key, name in _fields(C.Config):
        parent = key.split(".")[-2] if "." in key else ""
        owners = ({parent} if parent else set()) | ALIASES.get(parent, set())
        if not any(re.search(rf"\b{o}\.{name}\b", source) for o in owners):
            unread.append(key)
    assert unread == []
