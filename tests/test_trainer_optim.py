"""trainer.optim (parameter groups, schedules), trainer.build (freezing) and trainer.dpo (the loss)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from test_trainer_helpers import tiny_config

from trainer.build import freeze
from trainer.config import OptimConfig, from_dict
from trainer.dpo import dpo_loss, dpo_step, reference_model
from trainer.optim import build_optimizer, lr_at, param_groups, set_lrs


def names_in(groups: list[dict], model: torch.nn.Module) -> dict[str, set[str]]:
    ids = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: {ids[id(p)] for p in g["params"]} for g in groups}


def test_groups_put_every_connector_part_in_the_connector_group(make_model):
    """Upstream matched 'query_output_proj', which does not exist, so the encoder's output_proj
    trained at the backbone LR. Ours: the connector is q_static, q_init, query_input_proj,
    output_proj, dino_to_llm and llm_to_query."""
    model = make_model()
    groups = names_in(param_groups(model, OptimConfig()), model)
    connector = groups["connector"] | groups["connector/no_decay"]
    assert connector == {
        "q_static",
        "q_init",
        "encoder.query_input_proj.weight",
        "encoder.output_proj.weight",
        "encoder.output_proj.bias",
        "dino_to_llm.weight",
        "dino_to_llm.bias",
        "llm_to_query.weight",
        "llm_to_query.bias",
    }
    assert {"q_static", "q_init", "encoder.output_proj.bias"} <= groups[
        "connector/no_decay"
    ]  # queries keep std 1
    assert all(n.startswith("encoder.dino.") for n in groups["dino"] | groups["dino/no_decay"])
    assert all(n.startswith("llm.") for n in groups["llm"] | groups["llm/no_decay"])
    total = sum(len(v) for v in groups.values())
    assert total == len(list(model.parameters()))


def test_multi_token_groups(make_model):
    model = make_model(architecture="multi_token")
    groups = names_in(param_groups(model, OptimConfig()), model)
    assert groups["connector"] | groups["connector/no_decay"] == {"dino_to_llm.weight", "dino_to_llm.bias"}


@pytest.mark.parametrize("freeze_dino,freeze_llm", [(True, False), (False, True), (True, True)])
def test_frozen_parts_get_no_optimizer_group(tmp_path, make_model, freeze_dino, freeze_llm):
    model = make_model()
    cfg = from_dict(
        tiny_config(tmp_path, "x.tar", model={"freeze_dino": freeze_dino, "freeze_llm": freeze_llm})
    )
    freeze(model, cfg)
    opt = build_optimizer(model, cfg.optim)
    present = {g["group"] for g in opt.param_groups}
    assert ("dino" in present) != freeze_dino and ("llm" in present) != freeze_llm and "connector" in present


def test_converging_schedule_goes_from_100_to_1_to_1_to_1():
    cfg = OptimConfig(schedule="converging", target_lr=3e-5, warmup_ratio=0.1)
    S = 101
    conn = [lr_at(1e-3, s, S, cfg) for s in range(S)]
    back = [lr_at(1e-5, s, S, cfg) for s in range(S)]
    assert conn[0] == pytest.approx(1e-4) and conn[9] == pytest.approx(1e-3)  # linear warmup, 10 steps
    assert conn[10] / back[10] == pytest.approx(100)
    assert conn[-1] == pytest.approx(3e-5) and back[-1] == pytest.approx(3e-5)  # 1:1 at the end
    assert all(a >= b for a, b in itertools.pairwise(conn[10:]))  # connector falls
    assert all(a <= b for a, b in itertools.pairwise(back[10:]))  # backbone rises


def test_cosine_and_constant_schedules():
    cos = OptimConfig(schedule="cosine", min_lr_ratio=0.1, warmup_ratio=0.0)
    lrs = [lr_at(3e-5, s, 50, cos) for s in range(50)]
    assert lrs[0] == pytest.approx(3e-5) and lrs[-1] == pytest.approx(3e-6)
    assert lrs[24] == pytest.approx(3e-6 + 2.7e-5 * 0.5 * (1 + math.cos(math.pi * 24 / 49)))
    const = OptimConfig(schedule="constant", warmup_ratio=0.2)
    assert [lr_at(1.0, s, 10, const) for s in range(10)] == [0.5, 1.0] + [1.0] * 8


def test_set_lrs_reports_each_group(make_model):
    model = make_model()
    cfg = OptimConfig(schedule="constant", warmup_ratio=0.0)
    cfg.lr.connector, cfg.lr.dino, cfg.lr.llm = 1e-3, 1e-5, 2e-5
    opt = build_optimizer(model, cfg)
    assert set_lrs(opt, 0, 10, cfg) == {"connector": 1e-3, "dino": 1e-5, "llm": 2e-5}
    assert all(
        g["lr"] == {"connector": 1e-3, "dino": 1e-5, "llm": 2e-5}[g["group"]] for g in opt.param_groups
    )


def test_dpo_loss_matches_a_hand_computation():
    pc, pr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -2.5])
    s = dpo_loss(pc, pr, rc, rr, beta=0.1)
    # pair 0: r_c = 0.1 * 0.5 = 0.05, r_r = 0.1 * -1 = -0.1, diff 0.15
    # pair 1: r_c = 0.1 * -1 = -0.1, r_r = 0.1 * 0.5 = 0.05, diff -0.15
    want = -(math.log(1 / (1 + math.exp(-0.15))) + math.log(1 / (1 + math.exp(0.15)))) / 2
    assert float(s.loss) == pytest.approx(want, abs=1e-6)
    assert float(s.reward_acc) == 0.5 and float(s.margin) == pytest.approx(0.0, abs=1e-7)
    assert float(s.chosen_reward) == pytest.approx(-0.025) and float(s.rejected_reward) == pytest.approx(
        -0.025
    )


def test_dpo_step_goes_through_the_wrapper_forward(make_model):
    """DPO must call the (DDP-)wrapped module, not a bypass; at the start policy == reference, so
    the loss is log 2 and the gradient flows into the policy only."""
    from fvlm.batch import collate, make_sample

    model = make_model().train()
    ref = reference_model(model)
    calls = []

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.module = m

        def forward(self, *a, **k):
            calls.append(k["mode"])
            return self.module(*a, **k)

    frames = torch.randint(0, 255, (2, 32, 32, 3), dtype=torch.uint8).numpy()
    tok, cfg = model.tokenizer, model.config
    rows = [make_sample(frames, "What color?", a, tokenizer=tok, config=cfg) for a in ("red", "blue")]
    batch = collate(rows, tok.pad_token_id)
    stats = dpo_step(Wrapper(model), ref, batch, "coarse_fine", beta=0.1)
    assert calls == ["coarse_fine"] and stats.pairs == 1
    assert float(stats.loss.detach()) == pytest.approx(math.log(2), abs=1e-5)
    stats.loss.backward()
    assert model.dino_to_llm.weight.grad is not None and model.dino_to_llm.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in ref.parameters())
