"""Object supervision (trainer/objects.py): targets from ShapesQA JSON, box pooling, the head, a
trainer run with loss.object_weight > 0 (logged, resumable, never saved into the final model), and
stage 0 (vision pretraining: the encoder and the head alone)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_trainer_helpers import (
    image_sample,
    read_csv,
    run_trainer,
    subprocess_env,
    tiny_config,
    write_config,
)

from fvlm.hub import load_pretrained, read_weights
from fvlm.shapesqa.generate import SHAPES, make_shapes
from trainer import checkpoint as ckpt
from trainer.objects import (
    COLOR_NAMES,
    FIELDS,
    ObjectHead,
    ObjectLabelError,
    collate_targets,
    object_targets,
)

META = {
    "boxes": [[[10.0, 20.0, 30.0, 40.0], None], [[12.0, 22.0, 32.0, 42.0], [0.0, 0.0, 8.0, 8.0]]],
    "visible": [[True, False], [True, True]],
    "objects": [{"shape": "triangle", "color": "red"}, {"shape": "cross", "color": "cyan"}],
}


def test_object_targets_map_boxes_through_the_centre_crop():
    # frames 40 high x 60 wide: the centre crop drops 10 px left and right, then 40 -> 20 px (x 0.5)
    t = object_targets(META, [1], (40, 60), 20)
    assert t.shape == (1, 2, FIELDS)
    np.testing.assert_allclose(t[0, 0], [1.0, 11.0, 11.0, 21.0, SHAPES.index("triangle"), COLOR_NAMES.index("red")])
    np.testing.assert_allclose(t[0, 1, :4], [-5.0, 0.0, -1.0, 4.0])  # outside the crop: no weight later
    assert t[0, 1, 4:].tolist() == [SHAPES.index("cross"), COLOR_NAMES.index("cyan")]
    hidden = object_targets(META, [0], (40, 40), 40)
    assert (hidden[0, 1] == -1).all() and hidden[0, 0, 4] >= 0  # an invisible object is no target


@pytest.mark.parametrize(
    "meta, frames",
    [
        ({}, [0]),
        ({**META, "objects": [{"shape": "hexagon", "color": "red"}, META["objects"][1]]}, [0]),
        ({**META, "visible": META["visible"][:1]}, [0]),
        (META, [2]),
        ({**META, "boxes": [META["boxes"][0][:1], META["boxes"][1]]}, [0]),
    ],
)
def test_object_targets_reject_bad_json(meta, frames):
    with pytest.raises(ObjectLabelError):
        object_targets(meta, frames, (40, 40), 40)


def test_collate_targets_pads_frames_and_objects():
    rows = [np.ones((2, 1, FIELDS), np.float32), None, np.zeros((1, 3, FIELDS), np.float32)]
    out = collate_targets(rows, frames=3)
    assert out.shape == (3, 3, 3, FIELDS)
    assert (out[0, :2, 0] == 1).all() and (out[0, 2] == -1).all() and (out[0, :, 1:] == -1).all()
    assert (out[1] == -1).all() and (out[2, 0] == 0).all() and (out[2, 1:] == -1).all()


def test_head_pools_its_box_and_learns_the_classes():
    """Features carry each object's class only at the patches under its box: a head trained on
    them must reach full accuracy, and a head that pooled the wrong patches could not."""
    torch.manual_seed(0)
    F_, g, p, D = 64, 4, 8, 16
    proto = torch.randn(len(SHAPES), D) * 3
    features = torch.randn(F_, 1 + g * g, D) * 0.5
    targets = torch.full((F_, 2, FIELDS), -1.0)
    for f in range(F_):
        cls, (i, j) = f % len(SHAPES), divmod(f % (g * g), g)
        features[f, 1 + i * g + j] += proto[cls]
        features[f, 1 + ((i + 2) % g) * g + j] += proto[(cls + 1) % len(SHAPES)]  # a distractor elsewhere
        targets[f, 0] = torch.tensor([j * p, i * p, (j + 1) * p, (i + 1) * p, cls, cls])
    head = ObjectHead(D, p)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    first = float(head(features, targets).detach())
    for _ in range(150):
        opt.zero_grad()
        loss = head(features, targets)
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.2 * first
    assert head.stats["objects"] == F_ and head.stats["shape_acc"] == 1.0 and head.stats["color_acc"] == 1.0
    empty = torch.full((F_, 1, FIELDS), -1.0)
    assert float(head(features, empty)) == 0.0 and head.stats == {"objects": 0.0}


def _at_32px(raw: dict) -> dict:
    """The tiny model at 32-px input (4 x 4 patches of 8): the 16-px default makes every object
    smaller than the quarter patch the head needs."""
    raw["model"]["vision"]["image_size"] = raw["model"]["fvlm"]["image_size"] = 32
    return raw


def _shapes_shards(root, seconds: float = 2.0):
    make_shapes(root, n=12, seed=0, split="easy", subset="train", size=32, seconds=seconds, fps=4, max_frames=4,
                per_clip=2, videos=False, shard_size=8, progress=False)
    return f"{root}/train/*.tar"


def test_training_with_object_supervision_logs_resumes_and_ships_no_head(tmp_path):
    shards = _shapes_shards(tmp_path / "shapes")
    raw = _at_32px(tiny_config(tmp_path / "full", shards, steps=8, batch_size=2, loss={"object_weight": 1.0},
                               data={"num_workers": 1, "shuffle_buffer": 4},
                               checkpoint={"every_steps": 3, "keep_last": 1}))
    full = write_config(tmp_path / "full.yaml", raw)
    raw["run"]["out_dir"] = str(tmp_path / "killed")
    killed = write_config(tmp_path / "killed.yaml", raw)

    ref = run_trainer(full)
    assert ref.returncode == 0, ref.stderr[-3000:]
    rows = read_csv(tmp_path / "full" / "metrics.csv")
    assert len(rows) == 8
    for r in rows:
        assert float(r["loss_objects"]) > 0 and 0 <= float(r["object_shape_acc"]) <= 1
        assert float(r["loss"]) > float(r["loss_fine"])  # the object term is in the loss
    assert "objects" in ref.stdout
    saved = read_weights(tmp_path / "full" / "final" / "model.safetensors")
    assert not any(k.startswith("object_head.") for k in saved)
    last = ckpt.latest(tmp_path / "full")
    assert not any(k.startswith("object_head.") for k in read_weights(last / "model.safetensors"))
    assert set(read_weights(last / ckpt.HEAD_NAME)) == {"shape.weight", "shape.bias", "color.weight", "color.bias"}
    load_pretrained(tmp_path / "full" / "final")
    load_pretrained(last)  # a checkpoint is a loadable model too
    final_files = {p.name for p in (tmp_path / "full" / "final").iterdir()}
    assert {"config.json", "model.safetensors"} <= final_files  # the model alone, no trainer state:
    assert not final_files & {ckpt.HEAD_NAME, ckpt.OPTIMIZER_NAME, ckpt.RNG_NAME, ckpt.STATE_NAME}
    from fvlm.model import FoveatedVLM

    final = FoveatedVLM.from_pretrained(tmp_path / "full" / "final")
    assert set(saved) <= set(final.state_dict())  # every saved tensor is a model weight (tied ones once)

    crash = run_trainer(killed, env=subprocess_env(FVLM_TRAINER_KILL_AT_STEP="5"))
    assert crash.returncode == -9, crash.stderr[-3000:]
    plain = run_trainer(killed, "--set", "loss.object_weight=0")
    assert plain.returncode == 2 and "same loss.object_weight" in plain.stderr, plain.stderr[-3000:]
    resumed = run_trainer(killed)
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout, resumed.stderr[-3000:]
    again = read_csv(tmp_path / "killed" / "metrics.csv")
    for key in ("loss", "loss_objects", "object_shape_acc", "grad_norm"):
        assert [r[key] for r in rows] == [r[key] for r in again], key
    torch.testing.assert_close(saved["q_static"], read_weights(tmp_path / "killed" / "final" / "model.safetensors")["q_static"],
                               rtol=0, atol=0)


def test_stage_0_trains_the_encoder_alone_and_validates_the_head(tmp_path):
    from trainer.run import main

    shards = _shapes_shards(tmp_path / "shapes")
    make_shapes(tmp_path / "shapes", n=4, seed=1, split="easy", subset="val", size=32, seconds=2.0, fps=4,
                max_frames=4, per_clip=2, videos=False, shard_size=8, progress=False)
    first = _at_32px(tiny_config(tmp_path / "init", shards, steps=1))
    assert main(["--config", str(write_config(tmp_path / "init.yaml", first))]) == 0
    init = tmp_path / "init" / "final"
    raw = _at_32px(tiny_config(tmp_path / "s0", shards, f"{tmp_path}/shapes/val/*.tar", steps=6, stage=0,
                               loss={"object_weight": 2.0}, model={"init_from": str(init), "tokenizer": str(init)},
                               eval={"every_steps": 3, "max_samples": 8, "heatmap_clips": 2}))
    assert main(["--config", str(write_config(tmp_path / "s0.yaml", raw))]) == 0

    rows = read_csv(tmp_path / "s0" / "metrics.csv")
    assert len(rows) == 6
    for r in rows:  # the loss is the weighted object loss and nothing else
        assert float(r["loss"]) == pytest.approx(float(r["loss_objects"]), rel=1e-6) and r["loss_fine"] == ""
    evals = read_csv(tmp_path / "s0" / "metrics.csv", "eval")
    assert [int(r["step"]) for r in evals] == [3, 6]
    for r in evals:
        assert float(r["val_loss"]) > 0 and int(r["val_samples"]) == 8
        assert 0 <= float(r["val_object_shape_acc"]) <= 1 and 0 <= float(r["val_object_color_acc"]) <= 1
    assert not (tmp_path / "s0" / "heatmaps").exists()  # no query ran, so no attention to draw

    before, after = read_weights(init / "model.safetensors"), read_weights(tmp_path / "s0" / "final" / "model.safetensors")
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("encoder.dino.") for k in changed), sorted(changed)[:5]
    load_pretrained(tmp_path / "s0" / "final")


def test_decoder_gives_targets_for_the_kept_frames_and_skips_samples_without_objects(tokenizer, tmp_path):
    from fvlm.config import FVLMConfig
    from fvlm.tiny import tiny_llm_config, tiny_vision_config
    from trainer.data import CorruptSample, Decoder, RawSample, read_shard

    config = FVLMConfig(vision=tiny_vision_config(image_size=32).to_dict(), llm=tiny_llm_config(len(tokenizer)).to_dict(),
                        image_size=32, query_dim=16, max_frames=3, image_frames=2)
    decoder = Decoder(config, tokenizer, loss="answer", dpo=False, objects=True)
    _shapes_shards(tmp_path / "s", seconds=4.0)
    raw = next(read_shard(str(min((tmp_path / "s" / "train").glob("*.tar")))))
    meta = json.loads(raw.members["json"])
    assert meta["frame_count"] == 4  # thinned to max_frames 3: frames 0, 2, 3 (np.linspace(0, 3, 3).round())
    got = decoder(raw)
    assert got.objects.shape == (3, len(meta["objects"]), FIELDS)
    np.testing.assert_array_equal(got.objects, object_targets(meta, [0, 2, 3], (32, 32), 32))
    assert Decoder(config, tokenizer, loss="answer", dpo=False)(raw).objects is None  # off by default
    plain = image_sample("img", "red")
    with pytest.raises(CorruptSample, match="numbered frame members"):
        decoder(RawSample("x/img", plain))
    broken = dict(raw.members, json=json.dumps({**meta, "objects": []}).encode())
    with pytest.raises(CorruptSample, match="loss.object_weight / gaze_weight need them"):
        decoder(RawSample("x/broken", broken))


def test_b1_starts_from_a_foveated_models_parts_and_trains_with_object_supervision(tmp_path):
    """model.init_parts: a multi-token (B1) run from a foveated model's DINO, LLM and connector (the
    rest fresh), with the object loss on B1's own DINO features; stage 0 refuses B1."""
    from trainer.build import build_model, build_tokenizer
    from trainer.config import load_config
    from trainer.run import main

    shards = _shapes_shards(tmp_path / "shapes")
    first = _at_32px(tiny_config(tmp_path / "init", shards, steps=2, loss={"object_weight": 1.0}))
    assert main(["--config", str(write_config(tmp_path / "init.yaml", first))]) == 0
    init = tmp_path / "init" / "final"
    foveated = read_weights(init / "model.safetensors")

    raw = _at_32px(tiny_config(tmp_path / "b1", shards, steps=3, loss={"object_weight": 1.0},
                               model={"init_from": str(init), "tokenizer": str(init),
                                      "init_parts": ["vision", "llm", "connector"]}))
    raw["model"]["fvlm"] = {**raw["model"]["fvlm"], "architecture": "multi_token", "tokens_per_frame": 4}
    config = write_config(tmp_path / "b1.yaml", raw)
    cfg = load_config(config)
    b1 = build_model(cfg, build_tokenizer(cfg)).state_dict()
    for key, value in foveated.items():
        if key.startswith(("llm.", "dino_to_llm.")):
            torch.testing.assert_close(b1[key], value, rtol=0, atol=0)
        elif key.startswith("encoder.dino."):
            torch.testing.assert_close(b1[key.removeprefix("encoder.")], value, rtol=0, atol=0)
        else:  # the query's own weights have no place in B1
            assert key.startswith(("encoder.", "q_", "llm_to_query.")) and key not in b1, key
    cfg.model.init_parts = ["llm"]  # the DINO encoder keeps its fresh init
    fresh = build_model(cfg, build_tokenizer(cfg)).state_dict()
    torch.testing.assert_close(fresh["llm.lm_head.weight"], foveated["llm.lm_head.weight"], rtol=0, atol=0)
    key = "dino.encoder.layer.0.mlp.fc1.weight"
    assert not torch.equal(fresh[key], foveated[f"encoder.{key}"])

    assert main(["--config", str(config)]) == 0
    rows = read_csv(tmp_path / "b1" / "metrics.csv")
    assert len(rows) == 3
    for r in rows:  # the object term is in the loss
        assert float(r["loss_objects"]) > 0 and float(r["loss"]) > float(r["loss_fine"])
    assert not any(k.startswith("object_head.") for k in read_weights(tmp_path / "b1" / "final" / "model.safetensors"))
    assert load_pretrained(tmp_path / "b1" / "final").architecture == "multi_token"

    out = run_trainer(config, "--set", "stage=0", "--set", f"run.out_dir={tmp_path / 'b1_s0'}")
    assert out.returncode == 2 and "error: config key 'stage'" in out.stderr, out.stderr[-2000:]


def test_init_parts_names_a_part_the_checkpoint_lacks(tmp_path):
    from fvlm.errors import ConfigError
    from fvlm.tiny import tiny_model
    from trainer.build import load_parts

    model = tiny_model()
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.dino.")}
    with pytest.raises(ConfigError, match="has no vision weights"):
        load_parts(model, sd, ["vision"], source="x")


def test_position_cells_and_a_head_that_learns_where():
    """loss.object_position: the box centre's cell on a POSITION_CELLS grid, learnt like shape and colour."""
    from trainer.objects import POSITION_CELLS

    head = ObjectHead(8, patch_size=8, image_size=32)
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [28.0, 0.0, 32.0, 6.0], [10.0, 20.0, 14.0, 30.0], [30.0, 30.0, 40.0, 40.0]])
    assert head.cell(boxes).tolist() == [0, POSITION_CELLS - 1, 3 * POSITION_CELLS + 1, POSITION_CELLS**2 - 1]
    torch.manual_seed(0)
    where = torch.randn(POSITION_CELLS**2, 8) * 2  # each cell gives the token a direction
    cells = torch.arange(64) % POSITION_CELLS**2
    cx, cy = (cells % POSITION_CELLS + 0.5) * 8, (cells // POSITION_CELLS + 0.5) * 8
    rows = torch.stack([cx - 2, cy - 2, cx + 2, cy + 2, torch.zeros(64), torch.zeros(64)], 1)
    tokens = where[cells] + 0.1 * torch.randn(64, 8)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        loss, stats = head.token_loss(tokens, rows)
        loss.backward()
        opt.step()
    assert stats["position_acc"] == 1.0 and stats["shape_acc"] == 1.0
    assert set(ObjectHead(8, 8).state_dict()) == {"shape.weight", "shape.bias", "color.weight", "color.bias"}
