"""FoveatedVLM / MultiTokenVLM forward modes, loss, layouts, padding, save/load (tiny random models)."""

import pytest
import torch

from fvlm.batch import Sample, collate
from fvlm.chat import encode_chat
from fvlm.errors import CheckpointError, ConfigError, InputError
from fvlm.sequence import IGNORE_INDEX

MODES = ["coarse_only", "coarse_fine", "autoregressive"]


def make_sample(model, T, question="What color is the triangle?", answer="red", loss="answer", seed=0):
    g = torch.Generator().manual_seed(seed)
    S = model.config.image_size
    pixels = torch.randn((T, 3, S, S), generator=g)
    chat = encode_chat(model.tokenizer, question, answer, layout=model.config.layout,
                       system=model.config.system_prompt, loss=loss, has_video=T > 0)
    return Sample(pixels, chat)


def target_logits(model, batch, mode, row=None):
    """Logits at every loss target, per sample: list of [n_i, V]."""
    out = model(batch, mode=mode, return_hidden=True)
    logits = model.llm.get_output_embeddings()(out.hidden)
    sel = out.labels != IGNORE_INDEX
    return [logits[b][sel[b]] for b in range(batch.batch_size)], out


def capture_queries(model):
    """Record every query passed to encoder.query_attend."""
    seen = []
    orig = model.encoder.query_attend

    def hook(query, cache, return_attention=False, backend=None):
        seen.append(query.detach().clone())
        return orig(query, cache, return_attention, backend=backend)

    model.encoder.query_attend = hook
    return seen


@pytest.mark.parametrize("mode", MODES)
def test_modes_give_finite_loss_and_gradients(make_model, mode):
    model = make_model().train()
    batch = collate([make_sample(model, 3, seed=1), make_sample(model, 2, "How many?", "two", seed=2)])
    out = model(batch, mode=mode)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    dino_grad = model.encoder.dino.encoder.layer[0].norm1.weight.grad
    assert dino_grad is not None and dino_grad.abs().sum() > 0  # DINO trains through K/V
    assert model.dino_to_llm.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", MODES)
def test_forward_returns_the_real_frames_final_features_and_leaves_the_loss_alone(make_model, mode):
    model = make_model()
    batch = collate([make_sample(model, 3, seed=1), make_sample(model, 2, "How many?", "two", seed=2)])
    plain = model(batch, mode=mode)
    out = model(batch, mode=mode, return_features=True)
    expected = model.encoder.encode_patches(batch.pixel_values[batch.frame_mask]).features
    assert out.features.shape == expected.shape and out.features.shape[0] == 5
    torch.testing.assert_close(out.features, expected)
    torch.testing.assert_close(out.loss, plain.loss)
    assert plain.features is None
    text_only = collate([make_sample(model, 0, seed=3)])
    assert model(text_only, mode=mode, return_features=True).features is None


def visual_tokens(model, batch, mode):
    """The mode's tokens z [n_real, D] from forward's outputs."""
    with torch.no_grad():
        return model(batch, mode=mode, return_tokens=True).tokens


def test_visual_tokens_follow_the_question_only_in_coarse_fine(make_model):
    model = make_model(seed=5)
    a = collate([make_sample(model, 3, seed=1)])
    b = collate([make_sample(model, 3, "What shape is the red object?", seed=1)])  # same frames
    both = collate([make_sample(model, 3, seed=1), make_sample(model, 2, "How many?", seed=2)])
    for mode in MODES:
        z = visual_tokens(model, a, mode)
        assert z.shape == (3, model.encoder.dino.config.hidden_size)
        alone = visual_tokens(model, collate([make_sample(model, 2, "How many?", seed=2)]), mode)
        torch.testing.assert_close(visual_tokens(model, both, mode), torch.cat([z, alone]),
                                   rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(visual_tokens(model, a, "coarse_only"), visual_tokens(model, b, "coarse_only"))
    for mode in ("coarse_fine", "autoregressive"):
        assert not torch.allclose(visual_tokens(model, a, mode), visual_tokens(model, b, mode))


def test_unknown_mode_is_an_error(make_model):
    model = make_model()
    batch = collate([make_sample(model, 2)])
    with pytest.raises(InputError, match="unknown mode"):
        model(batch, mode="fine_only")


def test_autoregressive_cache_matches_full_recompute(make_model):
    model = make_model(seed=3)
    batch = collate([make_sample(model, 4, seed=1), make_sample(model, 2, "How many?", "three", seed=2)])
    with torch.no_grad():
        cache = model.encode_frames(batch)
        fast = model.read_frames_autoregressive(batch, cache, use_cache=True)
        slow = model.read_frames_autoregressive(batch, cache, use_cache=False)
    mask = fast["input"].mask
    lm = model.llm.get_output_embeddings()
    diff = (lm(fast["hidden"]) - lm(slow["hidden"]))[mask].abs().max().item()
    assert diff < 1e-4, diff


@pytest.mark.parametrize("layout", ["video_first", "text_first"])
def test_coarse_fine_queries_come_from_previous_coarse_hidden_state(make_model, layout):
    model = make_model(seed=4, layout=layout)
    batch = collate([make_sample(model, 3, seed=5)])
    seen = capture_queries(model)
    with torch.no_grad():
        model(batch, mode="coarse_fine")
        coarse_q, fine_q = seen  # [3, qd] each
        assert torch.allclose(coarse_q, model.q_static.expand(3, -1))
        # the coarse pass, recomputed by hand: [prefix, static tokens] through the LLM
        cache = model.encode_frames(batch)
        z, _ = model.encoder.query_attend(model.q_static.expand(3, -1), cache)
        emb = torch.cat([model.embed(batch.prefix_ids), model.project(z)[None]], dim=1)
        h = model.llm.get_decoder()(inputs_embeds=emb).last_hidden_state[0]  # [P+3, d]
        P = batch.prefix_ids.shape[1]
        expect = model.llm_to_query(h[P - 1 : P + 2]) if P else None
    if layout == "video_first":
        assert P == 0
        assert torch.allclose(fine_q[0], model.q_init[0].detach())
        assert torch.allclose(fine_q[1:], model.llm_to_query(h[:2]).detach(), atol=1e-5)
    else:
        assert torch.allclose(fine_q, expect, atol=1e-5)


def test_different_queries_give_different_tokens_and_maps(make_model):
    model = make_model(seed=6)
    batch = collate([make_sample(model, 2, seed=7)])
    with torch.no_grad():
        cache = model.encode_frames(batch)
        g = torch.Generator().manual_seed(0)
        qa, qb = torch.randn((2, 2, model.config.query_dim), generator=g)
        za, pa = model.encoder.query_attend(qa, cache, return_attention=True)
        zb, pb = model.encoder.query_attend(qb, cache, return_attention=True)
    cos = torch.nn.functional.cosine_similarity(za, zb, dim=-1)
    assert (cos < 0.99).all(), cos
    assert (pa - pb).abs().max() > 1e-3


@pytest.mark.parametrize("mode", MODES)
def test_padding_is_invisible(make_model, mode):
    model = make_model(seed=8)
    short = make_sample(model, 2, "How many?", "two", seed=9)
    long_ = make_sample(model, 5, "What color is the triangle of the video?", "blue", seed=10)
    with torch.no_grad():
        alone, _ = target_logits(model, collate([short]), mode)
        together, _ = target_logits(model, collate([long_, short]), mode)
    assert alone[0].shape == together[1].shape
    assert (alone[0] - together[1]).abs().max() < 1e-4


def test_text_first_queries_depend_on_question_video_first_do_not(make_model):
    for layout, should_differ in [("text_first", True), ("video_first", False)]:
        model = make_model(seed=11, layout=layout)
        seen = capture_queries(model)
        with torch.no_grad():
            model(collate([make_sample(model, 3, "What color is the triangle?", seed=12)]), mode="coarse_fine")
            model(collate([make_sample(model, 3, "How many circles are there?", seed=12)]), mode="coarse_fine")
        fine_a, fine_b = seen[1], seen[3]
        differ = (fine_a - fine_b).abs().max().item() > 1e-5
        assert differ == should_differ, (layout, differ)


def test_loss_targets_answer_only_and_all_tokens(make_model):
    model = make_model()
    tok = model.tokenizer
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    ans = make_sample(model, 2, "What color?", "red", loss="answer")
    all_ = make_sample(model, 2, "What color?", "red", loss="all")
    with torch.no_grad():
        out_a = model(collate([ans]), mode="coarse_only", return_hidden=True)
        out_b = model(collate([all_]), mode="coarse_only", return_hidden=True)
    labels_a = out_a.labels[out_a.labels != IGNORE_INDEX].tolist()
    # answer-only: exactly "red<|im_end|>\n", the closing <|im_end|> (= the pad id!) included
    assert tok.decode(labels_a) == "red<|im_end|>\n"
    assert im_end in labels_a and im_end == tok.pad_token_id
    n_text = len(ans.chat)
    assert int(out_b.text.num_targets) == n_text - 1  # every text token but the very first
    assert int(out_a.text.num_targets) == len(labels_a)
    # the loss is the token mean of -log p over the targets
    logits = model.llm.get_output_embeddings()(out_a.hidden)[out_a.labels != IGNORE_INDEX]
    manual = torch.nn.functional.cross_entropy(logits, torch.tensor(labels_a))
    assert torch.allclose(out_a.loss, manual, atol=1e-5)


def test_text_only_samples(make_model):
    model = make_model()
    mixed = collate([make_sample(model, 0, "Say hi.", "hi"), make_sample(model, 2)])
    text_only = collate([make_sample(model, 0, "Say hi.", "hi"), make_sample(model, 0, "Count.", "one")])
    for batch in (mixed, text_only):
        losses = []
        for mode in MODES:
            out = model(batch, mode=mode, measure_coarse=True)
            assert torch.isfinite(out.loss) and (out.text.num_targets > 0).all()
            losses.append(out.loss.item())
        if batch is text_only:  # no frames: every mode is the same plain LLM pass
            assert max(losses) - min(losses) < 1e-5


def test_coarse_loss_is_measured_and_weighted(make_model):
    model = make_model(seed=13)
    batch = collate([make_sample(model, 3, seed=14)])
    with torch.no_grad():
        out = model(batch, mode="coarse_fine", measure_coarse=True)
        only = model(batch, mode="coarse_only")
    assert out.coarse is not None and torch.allclose(out.coarse.loss, only.loss, atol=1e-5)
    assert torch.allclose(out.loss, out.text.loss)  # lambda_coarse = 0
    weighted = make_model(seed=13, lambda_coarse=0.5)
    with torch.no_grad():
        w = weighted(batch, mode="coarse_fine")
    assert torch.allclose(w.loss, w.text.loss + 0.5 * w.coarse.loss, atol=1e-5)


def test_shallow_query_variant(make_model):
    model = make_model(seed=15, deep_query=False)
    batch = collate([make_sample(model, 2, seed=16)])
    out = model(batch, mode="coarse_fine", return_attention=True)
    assert torch.isfinite(out.loss)
    assert out.attention.shape[1] == 1  # one attention, not one per layer


def test_save_load_round_trip(make_model, tmp_path):
    model = make_model(seed=17)
    batch = collate([make_sample(model, 3, seed=18)])
    model.save_pretrained(tmp_path / "m")
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(n.startswith(".") for n in names)  # no temporary leftovers
    from fvlm.model import FoveatedVLM

    loaded = FoveatedVLM.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        for mode in MODES:
            assert torch.equal(model(batch, mode=mode).loss, loaded(batch, mode=mode).loss)
    assert loaded.tokenizer.encode("red triangle") == model.tokenizer.encode("red triangle")


def test_upstream_state_dict_loads(make_model, tmp_path):
    """A checkpoint with upstream key names (older DINOv2 attention names, tied lm_head omitted)."""
    from safetensors.torch import save_file

    src = make_model(seed=19, layout="video_first")
    sd = {k: v.clone() for k, v in src.state_dict().items() if k != "llm.lm_head.weight"}
    renamed = {}
    for k, v in sd.items():
        k = k.replace("attention.q_proj.", "attention.attention.query.")
        k = k.replace("attention.k_proj.", "attention.attention.key.")
        k = k.replace("attention.v_proj.", "attention.attention.value.")
        k = k.replace("attention.o_proj.", "attention.output.dense.")
        renamed[k] = v
    assert any(k.startswith("encoder.dino.encoder.layer.0.attention.attention.query") for k in renamed)
    for key in ["encoder.query_input_proj.weight", "encoder.output_proj.bias", "dino_to_llm.weight",
                "llm_to_query.weight", "q_static", "q_init", "llm.model.embed_tokens.weight"]:
        assert key in renamed
    save_file(renamed, str(tmp_path / "model.safetensors"))

    from fvlm.hub import load_upstream_weights

    dst = make_model(seed=99, layout="video_first")
    load_upstream_weights(dst, tmp_path / "model.safetensors")
    batch = collate([make_sample(src, 2)])
    with torch.no_grad():
        assert torch.equal(src(batch, mode="coarse_fine").loss, dst(batch, mode="coarse_fine").loss)
    with pytest.raises(ConfigError, match="video_first"):
        load_upstream_weights(make_model(layout="text_first"), tmp_path / "model.safetensors")
    renamed.pop("q_init")
    save_file(renamed, str(tmp_path / "broken.safetensors"))
    with pytest.raises(CheckpointError, match="q_init"):
        load_upstream_weights(dst, tmp_path / "broken.safetensors")


def test_pickle_weights_are_refused(tmp_path):
    from fvlm.hub import read_weights

    (tmp_path / "model.bin").write_bytes(b"not really")
    with pytest.raises(CheckpointError, match="safetensors"):
        read_weights(tmp_path / "model.bin")
    (tmp_path / "x.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable"):
        read_weights(tmp_path / "x.safetensors")


def test_multi_token_baseline(make_model):
    model = make_model(architecture="multi_token", tokens_per_frame=4)
    short = make_sample(model, 2, "How many?", "two", seed=1)
    long_ = make_sample(model, 4, seed=2)
    with torch.no_grad():
        alone, out = target_logits(model, collate([short]), "coarse_fine")
        together, _ = target_logits(model, collate([long_, short]), "coarse_only")
    assert torch.isfinite(out.loss)
    assert (alone[0] - together[1]).abs().max() < 1e-4
    assert model.visual_tokens_per_frame == 4
