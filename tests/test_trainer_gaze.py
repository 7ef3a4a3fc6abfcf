"""Gaze supervision (trainer/gaze.py): the target's rows, the mass inside its box, gradients that reach
the query, config refusals, and a trainer run with loss.gaze_weight > 0."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_model import make_sample
from test_trainer_helpers import run_trainer, tiny_config, train_and_read, write_config
from test_trainer_objects import _at_32px, _shapes_shards

from fvlm.batch import collate
from fvlm.encoder import FoveatedEncoder, attention_parts
from fvlm.errors import ConfigError
from fvlm.hub import load_pretrained
from fvlm.tiny import tiny_vision_config
from trainer import config as C
from trainer.gaze import gaze_loss, gaze_mass, target_rows, visible_targets
from trainer.objects import FIELDS, ObjectHead


def _probs(maps: torch.Tensor, heads: int = 2, layers: int = 1) -> torch.Tensor:
    """Patch maps [n, g*g] -> probs [n, L, H, 1 + g*g] with a CLS key that holds a quarter of the mass
    (the loss drops it and renormalises)."""
    maps = maps / maps.sum(-1, keepdim=True)
    full = torch.cat([torch.full_like(maps[:, :1], 0.25), 0.75 * maps], dim=-1)
    return full[:, None, None].expand(-1, layers, heads, -1).clone()


def test_target_rows_pick_the_asked_about_object():
    objects = torch.arange(2 * 3 * 2 * FIELDS, dtype=torch.float32).view(2, 3, 2, FIELDS)
    rows = target_rows(objects, torch.tensor([1, -1]))
    assert rows.shape == (2, 3, FIELDS)
    torch.testing.assert_close(rows[0], objects[0, :, 1])
    assert (rows[1] == -1).all()  # no target (count / caption questions): no signal
    assert (target_rows(objects, torch.tensor([5, 0]))[0] == -1).all()  # out of range: none


def test_gaze_mass_on_hand_made_maps():
    g, p = 4, 8  # 4 x 4 patches of 8 px
    box = torch.tensor([[0.0, 0.0, 8.0, 8.0]])  # exactly patch 0
    on = torch.zeros(1, g * g)
    on[0, 0] = 1
    assert gaze_mass(_probs(on), box, p).item() == pytest.approx(1.0)
    uniform = torch.ones(1, g * g)
    assert gaze_mass(_probs(uniform), box, p).item() == pytest.approx(1 / 16)
    half = torch.tensor([[4.0, 0.0, 12.0, 8.0]])  # half of patch 0 and half of patch 1
    two = torch.zeros(1, g * g)
    two[0, 1] = 1
    assert gaze_mass(_probs(two), half, p).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="square patch grid"):
        gaze_mass(torch.ones(1, 1, 1, 6), box, p)


def test_gaze_loss_skips_frames_without_a_visible_target():
    g, p = 4, 8
    maps = torch.rand(3, g * g, generator=torch.Generator().manual_seed(0)) + 0.05  # no mass under the loss's floor
    rows = torch.tensor([[0.0, 0.0, 8.0, 8.0, 1, 2], [-1.0] * FIELDS, [0.0, 0.0, 1.0, 1.0, 3, 0]])  # tiny box
    loss, stats = gaze_loss(_probs(maps), rows, p)
    assert stats["frames"] == 1  # only the first: the second has no target, the third covers 1/64 patch
    expected = -gaze_mass(_probs(maps[:1]), rows[:1, :4], p).log().mean()
    torch.testing.assert_close(loss, expected)
    none, stats = gaze_loss(_probs(maps), rows[1:2].expand(3, -1), p)
    assert float(none) == 0.0 and stats == {"frames": 0.0}


def test_gaze_loss_pulls_a_query_onto_the_box():
    """Optimising only the query vectors (torch backend, through every DINO layer's probabilities)
    must move the attention mass into one-patch boxes that started with little of it. The q/k
    projections get a larger init than DINO's 0.02 so that a query can sharpen its attention at all."""
    torch.manual_seed(0)
    enc = FoveatedEncoder(tiny_vision_config(image_size=32), query_dim=16).eval()
    for layer in enc.layers:
        q_proj, k_proj, _, _ = attention_parts(layer)
        for w in (q_proj.weight, k_proj.weight):
            torch.nn.init.normal_(w, std=0.5)
    enc.attention_backend = "torch"
    with torch.no_grad():
        cache = enc.encode_patches(torch.randn(2, 3, 32, 32))
    rows = torch.tensor([[8.0, 16.0, 16.0, 24.0, 0, 0], [24.0, 0.0, 32.0, 8.0, 0, 0]])
    query = torch.randn(2, 16, requires_grad=True)
    opt = torch.optim.Adam([query], lr=0.3)
    with torch.no_grad():
        before = gaze_mass(enc.query_attend(query, cache, True)[1], rows[:, :4], 8)  # [2 frames, 2 layers]
    for _ in range(60):
        loss, _ = gaze_loss(enc.query_attend(query, cache, True)[1], rows, 8)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = gaze_mass(enc.query_attend(query, cache, True)[1], rows[:, :4], 8)
    assert before.mean() < 0.2 and after.mean() > 0.4 and after.mean() > 4 * before.mean(), (before, after)
    assert (after[:, 0] > 0.9).all()  # the first layer, which the query drives directly, lands on the box


@pytest.mark.parametrize("mode", ["coarse_fine", "autoregressive"])
def test_gaze_loss_reaches_the_llm_that_makes_the_query(make_model, mode):
    model = make_model(seed=2)
    batch = collate([make_sample(model, 3, seed=1), make_sample(model, 2, seed=2)])
    out = model(batch, mode=mode, return_attention=True)
    rows = torch.tensor([[0.0, 0.0, 16.0, 16.0, 0, 0]] * 5)
    loss, stats = gaze_loss(out.attention, rows, model.config.vision["patch_size"])
    assert stats["frames"] == 5 and 0 < stats["mass"] < 1
    loss.backward()
    assert model.llm_to_query.weight.grad.abs().sum() > 0  # the question can learn to steer the gaze


@pytest.mark.parametrize(
    "loss, train, message",
    [
        ({"gaze_weight": -1.0}, {}, "must be >= 0"),
        ({"gaze_weight": 1.0}, {"modes": "coarse_only"}, "no query to steer"),
        ({"token_weight": 1.0}, {}, "set loss.object_weight > 0 too"),
        ({"token_weight": -1.0}, {}, "must be >= 0"),
        ({"token_weight": 1.0, "object_weight": 1.0}, {"modes": "coarse_only"}, "no question-steered token"),
        ({"object_position": True}, {}, "set loss.object_weight > 0 too"),
    ],
)
def test_gaze_config_refusals(tmp_path, loss, train, message):
    raw = tiny_config(tmp_path / "r", "x/*.tar", steps=2, loss=loss)
    raw["train"].update(train)
    with pytest.raises(ConfigError, match=message):
        C.load_config(write_config(tmp_path / "c.yaml", raw))


def test_token_loss_names_the_target_and_skips_frames_without_one():
    torch.manual_seed(0)
    head = ObjectHead(dim=8, patch_size=8)
    tokens = torch.randn(4, 8)
    rows = torch.tensor([[0.0, 0.0, 8.0, 8.0, 2, 1]] * 3 + [[-1.0] * FIELDS])
    loss, stats = head.token_loss(tokens, rows)
    expected = (F.cross_entropy(head.shape(tokens[:3]), torch.tensor([2] * 3))
                + F.cross_entropy(head.color(tokens[:3]), torch.tensor([1] * 3))) / 2
    torch.testing.assert_close(loss, expected)
    assert stats["frames"] == 3 and 0 <= stats["shape_acc"] <= 1
    none, stats = head.token_loss(tokens, rows[3:].expand(4, -1))
    assert float(none) == 0.0 and stats == {"frames": 0.0}


def test_visible_targets_drops_targets_too_small_to_look_at():
    rows = torch.tensor([[0.0, 0.0, 8.0, 8.0, 1, 1], [0.0, 0.0, 2.0, 2.0, 1, 1], [-9.0, 0, -1.0, 8.0, 1, 1]])
    out = visible_targets(rows, grid=4, patch=8)
    assert out[:, 4].tolist() == [1, -1, -1] and rows[1, 4] == 1  # a copy, input untouched


@pytest.mark.parametrize("mode", ["coarse_only", "coarse_fine", "autoregressive"])
def test_forward_returns_the_tokens_the_llm_read(make_model, mode):
    model = make_model(seed=3)
    batch = collate([make_sample(model, 3, seed=1), make_sample(model, 2, "How many?", "two", seed=2)])
    out = model(batch, mode=mode, return_tokens=True)
    assert out.tokens.shape == (5, model.encoder.dino.config.hidden_size)
    assert model(batch, mode=mode).tokens is None
    if mode != "autoregressive":  # the same tokens, built from the model's public building blocks
        with torch.no_grad():
            cache = model.encode_frames(batch)
            z, _ = model.encoder.query_attend(model.static_queries(cache.num_frames), cache)
            if mode == "coarse_fine":
                visual = model.scatter_frames(model.project(z), batch.frame_mask)
                inp = model.llm_input(batch, visual, with_suffix=False)
                hidden = model.decoder(inp.embeds, inp.mask, inp.position_ids)
                z, _ = model.encoder.query_attend(model.fine_queries(hidden, batch)[batch.frame_mask], cache)
        torch.testing.assert_close(out.tokens, z, rtol=1e-4, atol=1e-5)
    else:  # row-major over [B, T], as every other per-frame tensor: sample 0's frames first
        alone = model(collate([make_sample(model, 2, "How many?", "two", seed=2)]), mode=mode, return_tokens=True)
        torch.testing.assert_close(out.tokens[3:], alone.tokens, rtol=1e-4, atol=1e-5)


def test_training_with_gaze_and_token_supervision_logs_both(tmp_path):
    shards = _shapes_shards(tmp_path / "shapes")
    loss = {"gaze_weight": 1.0, "object_weight": 1.0, "token_weight": 1.0}
    raw = _at_32px(tiny_config(tmp_path / "run", shards, steps=4, batch_size=2, loss=loss,
                               data={"num_workers": 1, "shuffle_buffer": 4}))
    out, rows = train_and_read(tmp_path / "run.yaml", raw, "loss_gaze")
    for r in rows:
        assert float(r["loss_gaze"]) > 0 and 0 < float(r["gaze_mass"]) < 1
        assert float(r["loss_token"]) > 0 and 0 <= float(r["token_shape_acc"]) <= 1
        extra = float(r["loss_objects"]) + float(r["loss_gaze"]) + float(r["loss_token"])
        assert float(r["loss"]) == pytest.approx(float(r["loss_fine"]) + extra, rel=1e-4)  # all in the loss
    assert "gaze" in out.stdout and "token" in out.stdout
    assert load_pretrained(tmp_path / "run" / "final").architecture == "foveated"


def test_gaze_embedding_and_position_supervision_train_from_a_model_without_them(tmp_path):
    """init_from a model without a gaze embedding gives it a fresh one that trains, and
    loss.object_position logs where the object and the token's object are."""
    shards = _shapes_shards(tmp_path / "shapes")
    data = {"num_workers": 1, "shuffle_buffer": 4}
    first = _at_32px(tiny_config(tmp_path / "plain", shards, steps=2, batch_size=2, data=data))
    assert run_trainer(write_config(tmp_path / "plain.yaml", first)).returncode == 0
    loss = {"gaze_weight": 1.0, "object_weight": 1.0, "token_weight": 1.0, "object_position": True}
    raw = _at_32px(tiny_config(tmp_path / "run", shards, steps=4, batch_size=2, loss=loss, data=data))
    raw["model"].update(init_from=str(tmp_path / "plain" / "final"), tokenizer=str(tmp_path / "plain" / "final"))
    raw["model"]["fvlm"]["gaze_embedding"] = True
    out, rows = train_and_read(tmp_path / "run.yaml", raw, "token_position_acc")
    assert "no gaze embedding: it starts fresh" in out.stdout
    assert all(0 <= float(r["object_position_acc"]) <= 1 for r in rows)
    model = load_pretrained(tmp_path / "run" / "final")
    assert model.config.gaze_embedding
    fresh = load_pretrained(tmp_path / "plain" / "final")  # what a fresh embedding would be: seeded
    assert set(model.state_dict()) - set(fresh.state_dict()) == {f"gaze_embed.{k}" for k in model.gaze_embed.state_dict()}
