"""fvlm.gaze: the gaze embedding (config gaze_embedding) -- where the query looked, added to each token.

Checks: the four gaze numbers on hand-made attention; each frame's move since its clip's previous
frame, in every mode; the embedding is added to the tokens and nothing else changes; the engine
equals the reference with it on (logits within 1e-4, identical greedy tokens, as
tests/test_engine.py); it saves and loads; gradients reach the query through the attention; the
config refuses it where there is no deep query.
"""

import pytest
import torch
from test_engine import assert_same, batch_of, run
from test_model import make_sample

from fvlm.batch import collate
from fvlm.config import MODES
from fvlm.errors import ConfigError
from fvlm.gaze import gaze_features, previous_centres, with_moves


def one_layer(p):
    """Patch probabilities [n, gh*gw] -> probs [n, L=1, H=2, 1 + gh*gw] with no mass on CLS."""
    cls = torch.zeros(p.shape[0], 1)
    return torch.cat([cls, p], 1)[:, None, None].expand(-1, 1, 2, -1)


def test_gaze_features_on_known_attention():
    gh = gw = 4
    peak = torch.zeros(2, gh * gw)
    peak[0, 0] = 1.0  # top-left patch
    peak[1, 2 * gw + 3] = 1.0  # row 2, column 3
    g = gaze_features(one_layer(peak), 0, (gh, gw))
    assert torch.allclose(g[0], torch.tensor([-0.75, -0.75, 0.0, 0.0]), atol=1e-3)
    assert torch.allclose(g[1], torch.tensor([0.75, 0.25, 0.0, 0.0]), atol=1e-3)
    flat = gaze_features(one_layer(torch.full((1, gh * gw), 1 / 16)), 0, (gh, gw))[0]
    spread = torch.tensor([-0.75, -0.25, 0.25, 0.75]).pow(2).mean().sqrt()
    assert torch.allclose(flat, torch.stack([torch.tensor(0.0), torch.tensor(0.0), spread, spread]), atol=1e-5)
    # CLS mass is ignored (renormalised over patches); the mean over layers when layer is None
    with_cls = one_layer(peak).clone()
    with_cls[:, :, :, 0] = 5.0
    assert torch.allclose(gaze_features(with_cls, None, (gh, gw)), g, atol=1e-5)
    with pytest.raises(ValueError, match="grid"):
        gaze_features(one_layer(peak), 0, (3, 3))


def test_moves_on_known_centres():
    gaze = torch.tensor([[0.1, 0.2, 0.3, 0.3], [0.4, 0.0, 0.3, 0.3], [-0.5, 0.5, 0.2, 0.2]])
    first = torch.tensor([True, False, True])  # two clips: rows 0-1 and row 2
    prev = previous_centres(gaze, first)
    assert torch.isnan(prev[0]).all() and torch.isnan(prev[2]).all()
    moves = with_moves(gaze, prev)
    assert torch.equal(moves[:, :4], gaze)
    assert torch.allclose(moves[:, 4:], torch.tensor([[0.0, 0.0], [0.3, -0.2], [0.0, 0.0]]))
    assert torch.equal(with_moves(gaze, None)[:, 4:], torch.zeros(3, 2))


@pytest.mark.parametrize("mode", MODES)
def test_each_frame_gets_its_move_since_the_previous_frame(make_model, mode):
    """What the gaze embedding reads, per frame of clips of 3 and 2 frames: the move is the centre's
    change since the same clip's previous frame (0 at a clip's first frame), whether the frames are
    read all at once (coarse modes) or one step at a time (autoregressive)."""
    model = make_model(seed=5, gaze_embedding=True)
    seen = []
    model.gaze_embed.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    batch = batch_of(model, [3, 2])
    with torch.no_grad():
        model(batch, mode=mode)
    if mode == "autoregressive":  # one call per frame step, rows = the clips with a frame at that step
        steps = seen
        clips = [torch.stack([s[b] for s in steps if b < len(s)]) for b in range(2)]
    else:  # the last call read every real frame, row-major over [B, T]
        clips = list(seen[-1].split([3, 2]))
    for rows in clips:  # [T_b, 6]
        assert torch.equal(rows[0, 4:], torch.zeros(2))
        assert torch.allclose(rows[1:, 4:], rows[1:, :2] - rows[:-1, :2], atol=1e-6)
        assert rows[1:, 4:].abs().sum() > 0  # the random model's gaze does move


def tokens(model, mode="coarse_fine"):
    batch = batch_of(model, [3, 2])
    with torch.no_grad():
        return model(batch, mode=mode, return_tokens=True, return_hidden=True).hidden


def test_the_gaze_embedding_is_added_to_the_tokens(make_model):
    """Same weights, gaze output layer at zero -> the model without it, in every mode; as built
    (small random output layer) it moves the tokens."""
    plain, gaze = make_model(seed=5), make_model(seed=5, gaze_embedding=True)
    missing = gaze.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("gaze_embed.") for k in missing)
    assert not torch.allclose(tokens(plain), tokens(gaze), atol=1e-6)
    with torch.no_grad():
        gaze.gaze_embed.out.weight.zero_()
    for mode in MODES:
        assert torch.allclose(tokens(plain, mode), tokens(gaze, mode), atol=1e-6), mode


def trained_gaze_model(make_model, **kw):
    """A gaze model in which the gaze matters: a fresh tiny model's query attention is nearly flat, so
    its gaze hardly moves; sharper keys and a larger embedding make a wrong centre or move show."""
    model = make_model(seed=3, gaze_embedding=True, **kw)
    with torch.no_grad():
        torch.nn.init.normal_(model.gaze_embed.out.weight, std=0.5)
        for name, p in model.encoder.dino.named_parameters():
            if name.endswith("k_proj.weight"):
                p.mul_(30)
    return model


@pytest.mark.parametrize("mode", MODES)
def test_engine_matches_the_reference_with_gaze(make_model, mode):
    model = trained_gaze_model(make_model)
    batch = batch_of(model, [4, 2, 1])
    for attention in (True, False):  # the engine must read the probs even when nobody asked for them
        ref = run(model, batch, mode, "off", return_attention=attention)
        assert_same(ref, run(model, batch, mode, "eager", return_attention=attention))


def test_gaze_model_saves_and_loads(make_model, tmp_path):
    from fvlm import load

    model = trained_gaze_model(make_model)
    model.save_pretrained(tmp_path / "m")
    back = load(tmp_path / "m")
    assert back.config.gaze_embedding
    assert torch.equal(back.gaze_embed.out.weight, model.gaze_embed.out.weight)
    assert torch.allclose(tokens(back), tokens(model), atol=1e-6)


def test_gradients_reach_the_query_through_the_gaze(make_model):
    """With the embedding trained, the query's gradient gets a part through the attention's centre."""
    model = trained_gaze_model(make_model).train()
    model.encoder.attention_backend = "torch"
    batch = collate([make_sample(model, 3, "What color is the triangle?", "red", seed=1)])

    def query_grad():
        model.zero_grad()
        model(batch, mode="coarse_fine").loss.backward()
        return model.llm_to_query.weight.grad.clone()

    with_gaze = query_grad()
    assert model.gaze_embed.inp.weight.grad.abs().sum() > 0
    with torch.no_grad():
        model.gaze_embed.out.weight.zero_()
    assert not torch.allclose(with_gaze, query_grad(), atol=1e-7)


def test_config_refuses_gaze_without_a_deep_query(make_model):
    with pytest.raises(ConfigError, match="gaze_embedding"):
        make_model(gaze_embedding=True, deep_query=False)
    with pytest.raises(ConfigError, match="gaze_embedding"):
        make_model(gaze_embedding="yes")
