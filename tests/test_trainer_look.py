"""The look term (trainer/look.py): the answer position's attention mass on the frames, its gradient,
config refusals, and a trainer run with loss.look_weight > 0."""

from __future__ import annotations

import pytest
import torch
from test_model import make_sample
from test_trainer_helpers import tiny_config, train_and_read, write_config
from test_trainer_objects import _at_32px, _shapes_shards

from fvlm.batch import collate
from fvlm.errors import ConfigError
from trainer import config as C
from trainer.config import LossConfig
from trainer.heads import TrainModule
from trainer.look import LookHooks, look_loss


def _batch(model):
    samples = [make_sample(model, 3, "What color is the triangle?", "red", seed=1),
               make_sample(model, 2, "How many?", "two", seed=2)]
    return collate(samples)


def test_look_mass_is_the_answer_positions_attention_on_the_real_frames(make_model):
    model = make_model(seed=3)
    hooks = LookHooks(model.llm)
    batch = _batch(model)
    with hooks.recording():
        out = model(batch, mode="coarse_fine", return_hidden=True)
        probs = hooks.last_pass()
    assert hooks.probs is None  # recording stops with the block: evaluation keeps nothing
    loss, stats = look_loss(probs, out.labels, batch)
    P, T = batch.prefix_ids.shape[1], batch.frame_mask.shape[1]
    expect = []
    for b in range(2):
        j = int((out.labels[b] != -100).nonzero()[0])  # predicts the first answer token
        real = batch.frame_mask[b].nonzero()[:, 0] + P
        expect.append(torch.stack([p[b, :, j, real].sum(-1).mean() for p in probs]).mean())
    expect = torch.stack(expect)
    assert stats["rows"] == 2 and stats["mass"] == pytest.approx(float(expect.detach().mean()), rel=1e-5)
    torch.testing.assert_close(loss, -(expect + 1e-6).log().mean())
    assert 0 < stats["mass"] < 1 and T == 3
    loss.backward()  # the gradient reaches the LLM's attention
    q = model.llm.get_decoder().layers[0].self_attn.q_proj.weight
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_look_loss_skips_rows_without_frames_or_targets(make_model):
    model = make_model(seed=4)
    hooks = LookHooks(model.llm)
    batch = collate([make_sample(model, 2, "What color?", "red", seed=1),
                     make_sample(model, 0, "Say hi.", "hi", seed=2)])  # a text-only row
    with hooks.recording():
        out = model(batch, mode="coarse_fine", return_hidden=True)
        _, stats = look_loss(hooks.last_pass(), out.labels, batch)
    assert stats["rows"] == 1
    with hooks.recording():
        out = model(batch, mode="coarse_fine", return_hidden=True)
        labels = torch.full_like(out.labels, -100)  # nothing to predict
        loss, stats = look_loss(hooks.last_pass(), labels, batch)
    assert stats["rows"] == 0 and loss.item() == 0.0
    with pytest.raises(RuntimeError, match="recording"):
        hooks.last_pass()


def test_train_module_adds_the_look_term_on_coarse_fine_steps_only(make_model):
    model = make_model(seed=5)
    net = TrainModule(model, LossConfig(look_weight=0.5))
    batch = _batch(model)
    step = net(batch, "coarse_fine")
    assert step.sums["look_batches"] == 1.0 and 0 < step.sums["look_mass"] < 1
    assert float(step.loss.detach()) == pytest.approx(float(step.out.loss.detach()) + 0.5 * step.sums["loss_look"], rel=1e-5)
    assert "look_batches" not in net(batch, "autoregressive").sums
    with torch.no_grad():  # generation after training records nothing
        model.eval()
        model.generate(torch.randint(0, 255, (2, 40, 48, 3), dtype=torch.uint8).numpy(), "What color?",
                       max_new_tokens=2)
    assert net.look.probs is None


@pytest.mark.parametrize(
    "loss, train, match",
    [
        ({"look_weight": -1.0}, {}, "must be >= 0"),
        ({"look_weight": 1.0}, {"modes": "autoregressive"}, "coarse_fine steps"),
    ],
)
def test_look_config_refusals(tmp_path, loss, train, match):
    raw = tiny_config(tmp_path / "run", "unused/*.tar", loss=loss)
    raw["train"].update(train)
    with pytest.raises(ConfigError, match=match):
        C.load_config(write_config(tmp_path / "c.yaml", raw))


def test_training_with_the_look_term_logs_it(tmp_path):
    shards = _shapes_shards(tmp_path / "shapes")
    raw = _at_32px(tiny_config(tmp_path / "run", shards, steps=4, batch_size=2, loss={"look_weight": 0.1},
                               data={"num_workers": 1, "shuffle_buffer": 4}))
    raw["train"]["modes"] = "coarse_fine"
    out, rows = train_and_read(tmp_path / "run.yaml", raw, "loss_look")
    for r in rows:
        assert float(r["loss_look"]) > 0 and 0 < float(r["look_mass"]) < 1
        assert float(r["loss"]) == pytest.approx(float(r["loss_fine"]) + 0.1 * float(r["loss_look"]), rel=1e-4)
    assert "look" in out.stdout
