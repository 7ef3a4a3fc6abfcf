"""Training configuration: YAML -> typed dataclasses, `--set a.b=v` overrides, strict checking.

Every key is typed; an unknown key, a wrong type or a bad value is a ConfigError that names the
key (`data.batch_size`). Every key is read by the trainer (tests/test_trainer_config.py checks).
`load_config(path, overrides)` returns a `Config`; `to_yaml(cfg)` gives the resolved YAML that is
saved with every run.

Sections: stage, run, model (model.fvlm = FVLMConfig fields), data, optim, train, loss, eval,
checkpoint, log, flops. See trainer/README.md for what each key does.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from fvlm.config import MODES, FVLMConfig
from fvlm.errors import ConfigError

SCHEDULES = ("cosine", "constant", "converging")
DTYPES = ("auto", "bf16", "fp16", "fp32")
PARALLEL = ("ddp", "fsdp")
LOSSES = ("ce", "dpo")
GROUPS = ("connector", "dino", "llm")
INIT_PARTS = ("vision", "llm", "connector")  # model.init_parts: what trainer/build.py can load alone


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "runs/run"  # config.yaml, metrics.csv, checkpoints/, final/, run_summary.json
    seed: int = 42


@dataclass
class TokenizerSpec:
    train_on: list[str]  # shard globs: their JSON text trains a byte-BPE ChatML tokenizer
    vocab_size: int = 512


@dataclass
class ModelConfig:
    vision: str | dict[str, Any] = "facebook/dinov2-small"  # HF id / dir, or a config dict
    llm: str | dict[str, Any] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    tokenizer: str | TokenizerSpec | None = None  # None: the LLM's own (llm must be an id/dir)
    fvlm: dict[str, Any] = field(default_factory=dict)  # FVLMConfig fields: layout, query_dim, ...
    init_from: str | None = None  # a saved model dir (a previous stage's final/ or checkpoint)
    init_parts: list[str] | None = None  # with init_from: load only these (vision, llm, connector) from it,
    # from either architecture; the rest keeps its fresh init (e.g. a B1 baseline from a foveated model)
    freeze_dino: bool = False
    freeze_llm: bool = False
    gradient_checkpointing: bool = False
    compile: bool = False


@dataclass
class DynamicBatch:
    max_frames: int = 256  # frames per batch (sum over its samples)
    max_batch_size: int = 32


@dataclass
class DataConfig:
    train_shards: str | list[str]  # globs / brace patterns / URLs of webdataset tars
    val_shards: str | list[str] | None = None
    text_shards: str | list[str] | None = None  # text-only chat data for text retention
    text_ratio: float = 0.0  # fraction of batches drawn from text_shards
    batch_size: int = 8  # per rank and micro-step (nominal size with dynamic_batch)
    dynamic_batch: DynamicBatch | None = None  # frame-budget batches instead of fixed ones
    shuffle_buffer: int = 1000  # samples; 1 = no sample shuffle
    num_workers: int = 2
    prefetch_factor: int = 2


@dataclass
class LRConfig:
    connector: float = 1e-4
    dino: float = 1e-5
    llm: float = 1e-5


@dataclass
class OptimConfig:
    lr: LRConfig = field(default_factory=LRConfig)
    schedule: str = "cosine"  # cosine | constant | converging
    target_lr: float | None = None  # converging: every group ends at this LR
    min_lr_ratio: float = 0.1  # cosine: the LR decays to this fraction of the peak
    warmup_ratio: float = 0.03
    weight_decay: float = 0.01
    grad_clip: float = 1.0


@dataclass
class TrainConfig:
    total_samples: int | None = None  # per run, all ranks together (or set flops.budget)
    grad_accum: int = 1
    modes: str | dict[str, float] = "coarse_fine"  # a mode, or {mode: probability} per batch
    dtype: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU
    parallel: str = "ddp"  # ddp (replicate the model) | fsdp (shard it: trainer/fsdp.py)


@dataclass
class LossConfig:
    type: str = "ce"  # ce (stage 1: all tokens, 2-3: answer only) | dpo (stage 3)
    beta: float = 0.1
    object_weight: float = 0.0  # > 0: object supervision of the encoder (trainer/objects.py)
    gaze_weight: float = 0.0  # > 0: pull the fine query's attention onto the asked-about object (trainer/gaze.py)
    token_weight: float = 0.0  # > 0: the token must name the asked-about object (trainer/objects.py)
    object_position: bool = False  # the object (and token) loss also names where the object is (trainer/objects.py)
    look_weight: float = 0.0  # > 0: the answer must attend to the frames (coarse_fine steps; trainer/look.py)


@dataclass
class EvalConfig:
    every_steps: int = 500
    max_samples: int = 1000
    heatmap_clips: int = 10


@dataclass
class CheckpointConfig:
    every_steps: int = 1000
    keep_last: int = 2
    resume: str = "auto"  # auto (latest in out_dir, if any) | never | a checkpoint dir


@dataclass
class WandbConfig:
    enabled: bool = True
    project: str = "fvlm"
    name: str | None = None  # default: run.name
    mode: str | None = None  # online | offline | disabled; default: $WANDB_MODE or online


@dataclass
class LogConfig:
    every_steps: int = 10
    wandb: WandbConfig = field(default_factory=WandbConfig)
    sample_keys: bool = False  # write samples_rank<r>.jsonl: the keys of every step's samples


@dataclass
class FlopsConfig:
    budget: float | None = None  # iso-FLOP: total_samples = budget / (3 * forward FLOPs/sample)
    avg_frames: float = 8.0  # the sample the FLOP count assumes
    avg_text_tokens: int = 128
    avg_prefix_tokens: int = 32  # of those, before the video in text_first layout (system + question)


@dataclass
class Config:
    stage: int  # 0: vision pretraining (objects only) | 1: all-token CE | 2: answer-only SFT | 3: SFT or DPO
    data: DataConfig
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    flops: FlopsConfig = field(default_factory=FlopsConfig)

    # ---- derived ----------------------------------------------------------------------------
    @property
    def text_loss(self) -> str:
        """fvlm.batch loss kind: 'all' in stage 1, 'answer' (incl. the closing <|im_end|>) after."""
        return "all" if self.stage == 1 else "answer"

    @property
    def mode_probs(self) -> dict[str, float]:
        m = self.train.modes
        return {m: 1.0} if isinstance(m, str) else dict(m)

    @property
    def main_mode(self) -> str:
        """The mode with the largest probability: its val loss picks the best checkpoint."""
        probs = self.mode_probs
        return max(probs, key=lambda k: (probs[k], k == "coarse_fine"))


# ---- YAML -> dataclasses --------------------------------------------------------------------------
def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML file (and its `base:` chain), apply `a.b=value` overrides, check everything."""
    raw = read_yaml(Path(path))
    for item in overrides:
        apply_override(raw, item)
    return from_dict(raw)


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as a dict. `base: other.yaml` (relative to this file) is read first and this
    file's keys are merged over it, mapping by mapping; lists and values replace."""
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    if path.resolve() in seen:
        raise ConfigError(f"config key 'base': {path} includes itself")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"config key 'base' in {path}: expected a file name, got {_show(base)}")
    return _merge(read_yaml(path.parent / base, (*seen, path.resolve())), raw)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def from_dict(raw: dict[str, Any]) -> Config:
    cfg = _build(Config, raw, "")
    validate(cfg)
    return cfg


def apply_override(raw: dict[str, Any], item: str) -> None:
    """`a.b.c=value` -> raw['a']['b']['c'] = yaml(value)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. data.batch_size=4")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(value) if value.strip() else None


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


SECTIONS = ("stage", "run", "model", "data", "optim", "train", "loss", "eval", "checkpoint", "log", "flops")


def to_yaml(cfg: Config) -> str:
    """The resolved config (every key, defaults filled in), as saved with each run."""
    d = to_dict(cfg)
    return yaml.safe_dump({k: d[k] for k in SECTIONS}, sort_keys=False)


def _build(cls: type, raw: Any, path: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"config key {path or '<top>'!r}: expected a mapping, got {_show(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {_join(path, near[0])!r}?)" if near else ""
            raise ConfigError(f"unknown config key {_join(path, key)!r}{hint}; valid keys: {names}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = _join(path, f.name)
        if f.name in raw:
            kwargs[f.name] = _convert(raw[f.name], hints[f.name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"config key {key!r} is required")
    return cls(**kwargs)


def _convert(value: Any, tp: Any, key: str) -> Any:
    """`value` checked against (and converted to) type `tp`, or a ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"config key {key!r} must be set (got null)")
        specs = [o for o in options if dataclasses.is_dataclass(o)]
        if isinstance(value, dict) and specs:  # a mapping where a spec fits: its own errors count
            return _build(specs[0], value, key)
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r}: {_show(value)} is none of {_type_name(tp)}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is list:
        if isinstance(value, str):  # one item may be written without brackets
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r}: expected a list, got {_show(value)}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping, got {_show(value)}")
        _, item = typing.get_args(tp)
        return {str(k): _convert(v, item, _join(key, k)) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected true/false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config key {key!r}: expected an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r}: expected a number, got {_show(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r}: expected a string, got {_show(value)}")
        return value
    raise TypeError(f"config type {tp} of {key} is not supported")  # a bug in this file


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:80]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


# ---- value checks -------------------------------------------------------------------------------
def validate(cfg: Config) -> None:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"config key {key!r}: {why}")

    if cfg.stage not in (0, 1, 2, 3):
        raise bad("stage", f"must be 0, 1, 2 or 3, got {cfg.stage}")
    if cfg.stage == 0:  # vision pretraining: the encoder and the object head alone, no text
        if cfg.loss.object_weight <= 0:
            raise bad("loss.object_weight", "stage 0 trains the encoder on object supervision only: set it > 0")
        for key in ("gaze_weight", "token_weight", "look_weight"):
            if getattr(cfg.loss, key) > 0:
                raise bad(f"loss.{key}", "stage 0 runs no query and no LLM; set it to 0 (use it from stage 1)")
        if cfg.loss.type != "ce" or cfg.data.text_ratio > 0:
            raise bad("loss.type" if cfg.loss.type != "ce" else "data.text_ratio",
                      "stage 0 has no text: use loss.type ce and data.text_ratio 0")
    _check_fvlm_keys(cfg.model.fvlm)
    parts = cfg.model.init_parts
    if parts is not None:
        if cfg.model.init_from is None:
            raise bad("model.init_parts", "names the parts of model.init_from to load: set model.init_from too")
        unknown = sorted(set(parts) - set(INIT_PARTS))
        if not parts or unknown or len(set(parts)) != len(parts):
            raise bad("model.init_parts", f"{parts}: give some of {list(INIT_PARTS)}, each once "
                      "(or leave it null to load every weight of model.init_from)")
    if cfg.model.init_from is not None and isinstance(cfg.model.tokenizer, TokenizerSpec):
        # a new tokenizer would not match the embeddings of the weights being loaded
        raise bad("model.tokenizer", "with model.init_from, use the tokenizer saved with those weights: "
                  f"model.tokenizer: {cfg.model.init_from}")
    for key, shards in (
        ("data.train_shards", cfg.data.train_shards),
        ("data.val_shards", cfg.data.val_shards),
        ("data.text_shards", cfg.data.text_shards),
    ):
        if shards is not None and not shards:
            raise bad(key, "is empty")
    d = cfg.data
    if not 0.0 <= d.text_ratio < 1.0:
        raise bad("data.text_ratio", f"must be in [0, 1), got {d.text_ratio}")
    if d.text_ratio > 0 and d.text_shards is None:
        raise bad("data.text_shards", f"data.text_ratio is {d.text_ratio} but no text shards are given")
    for key, value, low in (
        ("data.batch_size", d.batch_size, 1),
        ("data.shuffle_buffer", d.shuffle_buffer, 1),
        ("data.num_workers", d.num_workers, 0),
        ("data.prefetch_factor", d.prefetch_factor, 1),
        ("train.grad_accum", cfg.train.grad_accum, 1),
        ("log.every_steps", cfg.log.every_steps, 1),
        ("eval.every_steps", cfg.eval.every_steps, 1),
        ("eval.max_samples", cfg.eval.max_samples, 1),
        ("eval.heatmap_clips", cfg.eval.heatmap_clips, 0),
        ("checkpoint.every_steps", cfg.checkpoint.every_steps, 1),
        ("checkpoint.keep_last", cfg.checkpoint.keep_last, 1),
    ):
        if value < low:
            raise bad(key, f"must be >= {low}, got {value}")
    if d.dynamic_batch is not None and (d.dynamic_batch.max_frames < 1 or d.dynamic_batch.max_batch_size < 1):
        raise bad("data.dynamic_batch", "max_frames and max_batch_size must be >= 1")
    o = cfg.optim
    if o.schedule not in SCHEDULES:
        raise bad("optim.schedule", f"{o.schedule!r} is not one of {SCHEDULES}")
    if o.schedule == "converging" and (o.target_lr is None or o.target_lr <= 0):
        raise bad("optim.target_lr", "the converging schedule needs a target_lr > 0")
    if o.schedule != "converging" and o.target_lr is not None:
        raise bad("optim.target_lr", f"is only used by the converging schedule (schedule is {o.schedule!r})")
    for g in GROUPS:
        if getattr(o.lr, g) < 0:
            raise bad(f"optim.lr.{g}", "must be >= 0")
    if not 0.0 <= o.warmup_ratio < 1.0:
        raise bad("optim.warmup_ratio", f"must be in [0, 1), got {o.warmup_ratio}")
    if not 0.0 <= o.min_lr_ratio <= 1.0:
        raise bad("optim.min_lr_ratio", f"must be in [0, 1], got {o.min_lr_ratio}")
    if o.weight_decay < 0 or o.grad_clip <= 0:
        raise bad("optim.weight_decay" if o.weight_decay < 0 else "optim.grad_clip", "out of range")
    t = cfg.train
    probs = cfg.mode_probs
    for mode, p in probs.items():
        if mode not in MODES:
            raise bad("train.modes", f"{mode!r} is not one of {MODES}")
        if p < 0:
            raise bad(f"train.modes.{mode}", f"probability must be >= 0, got {p}")
    if abs(sum(probs.values()) - 1.0) > 1e-6:
        raise bad("train.modes", f"probabilities must sum to 1, got {sum(probs.values())}")
    if t.dtype not in DTYPES:
        raise bad("train.dtype", f"{t.dtype!r} is not one of {DTYPES}")
    if t.parallel not in PARALLEL:
        raise bad("train.parallel", f"{t.parallel!r} is not one of {PARALLEL}")
    if t.parallel == "fsdp" and t.dtype == "fp16":
        raise bad("train.dtype", "fp16 (a gradient scaler) is not supported with train.parallel fsdp; use bf16")
    if (t.total_samples is None) == (cfg.flops.budget is None):
        raise bad("train.total_samples", "set exactly one of train.total_samples and flops.budget")
    if t.total_samples is not None and t.total_samples < 1:
        raise bad("train.total_samples", f"must be >= 1, got {t.total_samples}")
    if cfg.flops.budget is not None and cfg.flops.budget <= 0:
        raise bad("flops.budget", "must be > 0")
    if cfg.loss.type not in LOSSES:
        raise bad("loss.type", f"{cfg.loss.type!r} is not one of {LOSSES}")
    if cfg.loss.object_weight < 0:
        raise bad("loss.object_weight", f"{cfg.loss.object_weight} must be >= 0")
    if cfg.loss.object_weight > 0 and cfg.loss.type == "dpo":
        raise bad("loss.object_weight", "object supervision works with the ce loss, not dpo")
    if cfg.loss.gaze_weight < 0:
        raise bad("loss.gaze_weight", f"{cfg.loss.gaze_weight} must be >= 0")
    if cfg.loss.gaze_weight > 0 and cfg.loss.type == "dpo":
        raise bad("loss.gaze_weight", "gaze supervision works with the ce loss, not dpo")
    if cfg.loss.gaze_weight > 0 and set(cfg.mode_probs) == {"coarse_only"}:
        raise bad("loss.gaze_weight", "coarse_only training has no query to steer (the static query sees "
                  "no question); train coarse_fine or autoregressive, or set it to 0")
    if cfg.loss.object_position and cfg.loss.object_weight <= 0:
        raise bad("loss.object_position", "position is a third class of the object head: set "
                  "loss.object_weight > 0 too")
    if cfg.loss.token_weight < 0:
        raise bad("loss.token_weight", f"{cfg.loss.token_weight} must be >= 0")
    if cfg.loss.token_weight > 0 and cfg.loss.object_weight <= 0:
        raise bad("loss.token_weight", "the token loss uses the object head's classifiers: set "
                  "loss.object_weight > 0 too")
    if cfg.loss.token_weight > 0 and set(cfg.mode_probs) == {"coarse_only"}:
        raise bad("loss.token_weight", "coarse_only training has no question-steered token; train "
                  "coarse_fine or autoregressive, or set it to 0")
    if cfg.loss.look_weight < 0:
        raise bad("loss.look_weight", f"{cfg.loss.look_weight} must be >= 0")
    if cfg.loss.look_weight > 0 and cfg.loss.type == "dpo":
        raise bad("loss.look_weight", "the look term works with the ce loss, not dpo")
    if cfg.loss.look_weight > 0 and "coarse_fine" not in cfg.mode_probs:
        raise bad("loss.look_weight", "the look term applies to coarse_fine steps: add coarse_fine to "
                  "train.modes, or set it to 0")
    architecture = cfg.model.fvlm.get("architecture", "foveated")
    if architecture != "foveated":  # B1 has no query: nothing to steer, no token, no stage-0 encoder
        for key in ("gaze_weight", "token_weight"):
            if getattr(cfg.loss, key) > 0:
                raise bad(f"loss.{key}", f"needs the foveated architecture's query, which {architecture!r} "
                          "does not have; set it to 0")
        if cfg.loss.look_weight > 0:
            raise bad("loss.look_weight", f"reads one visual token per frame (the foveated architecture), "
                      f"not {architecture!r}'s; set it to 0")
        if cfg.stage == 0:
            raise bad("stage", f"vision pretraining (stage 0) trains the foveated encoder, not the "
                      f"{architecture!r} architecture's; give stage 0 a foveated model and take its "
                      "encoder later with model.init_parts: [vision]")
    if cfg.loss.type == "dpo" and cfg.stage != 3:
        raise bad("loss.type", f"dpo is a stage-3 loss (stage is {cfg.stage})")
    if cfg.loss.type == "dpo" and d.text_ratio > 0:
        raise bad("data.text_ratio", "DPO has no text retention; set it to 0")
    if cfg.loss.beta <= 0:
        raise bad("loss.beta", "must be > 0")
    if cfg.log.wandb.mode not in (None, "online", "offline", "disabled"):
        raise bad("log.wandb.mode", f"{cfg.log.wandb.mode!r} is not online, offline or disabled")
    if cfg.model.tokenizer is None and isinstance(cfg.model.llm, dict):
        raise bad(
            "model.tokenizer", "an inline llm config has no tokenizer: give an id/dir or {train_on: ...}"
        )


def _check_fvlm_keys(fvlm: dict[str, Any]) -> None:
    """model.fvlm holds FVLMConfig fields (except vision/llm): names and types checked here."""
    hints = typing.get_type_hints(FVLMConfig)
    allowed = [f.name for f in dataclasses.fields(FVLMConfig) if f.name not in ("vision", "llm")]
    for key, value in fvlm.items():
        if key not in allowed:
            near = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean 'model.fvlm.{near[0]}'?)" if near else ""
            raise ConfigError(f"unknown config key 'model.fvlm.{key}'{hint}; valid keys: {allowed}")
        tp = hints[key]
        if typing.get_origin(tp) is tuple:  # image_mean / image_std
            fvlm[key] = _convert(value, list[float], f"model.fvlm.{key}")
        else:
            fvlm[key] = _convert(value, tp, f"model.fvlm.{key}")
    try:  # FVLMConfig's own range checks, with the trainer's key names
        FVLMConfig(vision={"model_type": "dinov2"}, llm={"model_type": "llama"}, **fvlm)
    except ConfigError as e:
        raise ConfigError(str(e).replace("config key '", "config key 'model.fvlm.", 1)) from e
