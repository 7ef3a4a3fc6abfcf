"""fvlm.fast: the static-KV-cache / CUDA-graph inference path gives the eager (DynamicCache) results.

CPU tests run the fast path without graphs (mode "eager"): the same functions a CUDA graph
captures. Tolerances (fp32): prefill and decode logits within 1e-4 absolute (measured ~1e-7),
attention probabilities within 1e-5, identical greedy tokens. GPU tests (graph replay and
torch.compile against eager) skip without CUDA.
"""

import copy

import numpy as np
import pytest
import torch
from test_model import make_sample

from fvlm import fast
from fvlm.batch import collate
from fvlm.config import MODES
from fvlm.errors import ConfigError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def no_tf32(monkeypatch):
    """fp32 comparisons on CUDA: no TF32 in convolutions (the patch embedding) or matmuls."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def batch_of(model, sizes, seed=1):
    """A generation batch (suffix left-padded) of videos with `sizes` frames and different prompts."""
    questions = ["What color is the triangle?", "How many?", "Where does the red circle end up at last?"]
    samples = [make_sample(model, T, questions[i % 3], None, seed=seed + i) for i, T in enumerate(sizes)]
    return collate(samples, suffix_left=True)


def run(model, batch, mode, path, steps=6, return_attention=True):
    """Prefill under `path`, then `steps` greedy tokens through model.decoder: (prefill, logits list, ids)."""
    fast.set_mode(model, path)
    with torch.inference_mode():
        pre = model.prefill(batch, mode, return_attention) if path == "off" or mode == "autoregressive" \
            else fast.prefill(model, batch, mode, return_attention=return_attention)
        logits, mask, pos, ids = [pre.logits], pre.mask, pre.next_position, []
        lm = model.llm.get_output_embeddings()
        for _ in range(steps):
            ids.append(logits[-1].argmax(-1))
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            h = model.decoder(model.embed(ids[-1][:, None]), mask, pos[:, None], pre.cache)
            pos = pos + 1
            logits.append(lm(h[:, -1]))
    return pre, logits, torch.stack(ids, 1)


def assert_same(ref, got, atol=1e-4):
    (pre_r, logits_r, ids_r), (pre_g, logits_g, ids_g) = ref, got
    assert isinstance(pre_g.cache, fast.FastCache)
    assert torch.equal(pre_r.next_position, pre_g.next_position)
    assert torch.equal(pre_r.mask.sum(1), pre_g.mask.sum(1))
    for a, b in zip(logits_r, logits_g):
        assert (a - b).abs().max().item() < atol
    assert torch.equal(ids_r, ids_g)
    for name in ("attention", "coarse_attention"):
        a, b = getattr(pre_r, name), getattr(pre_g, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.shape == b.shape and (a - b).abs().max().item() < 1e-5, name


@pytest.mark.parametrize("layout", ["text_first", "video_first"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sizes", [[3], [4, 2, 1]], ids=["B1", "B3-padded"])
def test_static_path_matches_dynamic_cache(make_model, layout, mode, sizes):
    model = make_model(seed=3, layout=layout)
    batch = batch_of(model, sizes)
    assert_same(run(model, batch, mode, "off"), run(model, batch, mode, "eager"))


def test_patch_passes_in_chunks(make_model, monkeypatch):
    """Autoregressive mode encodes FRAME_CHUNK frame slots at a time, right before reading them."""
    monkeypatch.setattr(fast, "FRAME_CHUNK", 2)
    model = make_model(seed=12)
    passes = []
    encode = model.encoder.encode_patches
    monkeypatch.setattr(model.encoder, "encode_patches", lambda px: passes.append(len(px)) or encode(px))
    batch = batch_of(model, [5, 2, 3])
    ref = run(model, batch, "autoregressive", "off")
    assert passes == [10]  # the eager path: one batched pass over every real frame
    passes.clear()
    assert_same(ref, run(model, batch, "autoregressive", "eager"))
    assert passes == [6, 3, 1]  # real frames in slots 0-1 (2 + 2 + 2), 2-3 (2 + 0 + 1), 4 (1 + 0 + 0)


def test_generate_dispatches_autoregressive_to_the_fast_path(make_model, monkeypatch):
    model = make_model(seed=4)
    video = np.random.default_rng(0).integers(0, 255, (5, 40, 48, 3), dtype=np.uint8)  # (no decoder)
    ref = model.generate(video, "What color is the square?", max_new_tokens=6)
    ref_events = []
    model.generate(video, "What color is the square?", max_new_tokens=6, callback=ref_events.append)

    def fail(*a, **k):
        raise AssertionError("the DynamicCache path ran")

    monkeypatch.setattr(model, "read_frames_autoregressive", fail)
    fast.set_mode(model, "eager")
    out = model.generate(video, "What color is the square?", max_new_tokens=6)
    assert out.token_ids == ref.token_ids
    assert np.allclose(out.attention, ref.attention, atol=1e-5)
    assert np.allclose(out.entropy, ref.entropy, atol=1e-5)
    events = []  # live frame events (on_step) and text events, as on the eager path
    model.generate(video, "What color is the square?", max_new_tokens=6, callback=events.append)
    assert [type(e).__name__ for e in events] == [type(e).__name__ for e in ref_events]
    for a, b in zip(events, ref_events):
        if hasattr(a, "attention"):
            assert a.index == b.index and np.allclose(a.attention, b.attention, atol=1e-5)


def test_cache_grows_past_its_slots_while_decoding(make_model, monkeypatch):
    monkeypatch.setattr(fast, "DECODE_ROOM", 1)
    monkeypatch.setattr(fast, "SLOT_MULTIPLE", 8)
    model = make_model(seed=5)
    batch = batch_of(model, [3, 2])
    ref = run(model, batch, "autoregressive", "off", steps=20)
    got = run(model, batch, "autoregressive", "eager", steps=20)
    assert got[0].cache.state.capacity >= got[0].cache.get_seq_length() > 20
    assert_same(ref, got)


def test_live_caches_never_share_slots(make_model):
    model = make_model(seed=6)
    a, b = batch_of(model, [3], seed=1), batch_of(model, [2], seed=7)
    ref_a, ref_b = run(model, a, "autoregressive", "off"), run(model, b, "autoregressive", "off")
    fast.set_mode(model, "eager")
    with torch.inference_mode():  # two prefills alive at once, decoded interleaved
        pa, pb = model.prefill(a, "autoregressive", True), model.prefill(b, "autoregressive", True)
        assert pa.cache.state is not pb.cache.state
        lm = model.llm.get_output_embeddings()
        for pre, (_, logits_r, _) in ((pa, ref_a), (pb, ref_b)):
            assert (pre.logits - logits_r[0]).abs().max() < 1e-4
        for step in range(3):
            for pre, (_, logits_r, ids_r) in ((pa, ref_a), (pb, ref_b)):
                mask = torch.ones((1, pre.cache.get_seq_length() + 1), dtype=torch.bool)
                h = model.decoder(model.embed(ids_r[:, step : step + 1]), mask, None, pre.cache)
                assert (lm(h[:, -1]) - logits_r[step + 1]).abs().max() < 1e-4
        states = len(fast.runner(model).states)
        del pa, pb  # released: the next prefill reuses a state
        model.prefill(a, "autoregressive", False)
        assert len(fast.runner(model).states) == states


def test_weights_moved_or_copied(make_model):
    model = make_model(seed=7)
    batch = batch_of(model, [2])
    run(model, batch, "autoregressive", "eager")
    twin = copy.deepcopy(model)  # the runners (graphs, compiled code) are not copied
    assert not twin.__dict__["_fast_runners"]
    assert_same(run(twin, batch, "autoregressive", "off"), run(twin, batch, "autoregressive", "eager"))
    first = fast.runner(model)
    model.double()  # new parameter storage: a new runner
    batch64 = batch_of(model, [2])
    batch64.pixel_values = batch64.pixel_values.double()
    assert_same(run(model, batch64, "autoregressive", "off"), run(model, batch64, "autoregressive", "eager"),
                atol=1e-6)  # (transformers' RMSNorm computes in fp32 even for fp64 weights; fast's does not)
    assert fast.runner(model) is not first
    fast.release(model)
    assert not fast.runner(model).states


def test_modes_and_fallbacks(make_model, monkeypatch):
    model = make_model(seed=8)
    batch = batch_of(model, [2])
    assert fast.mode_of(model) == "off"  # the default (opt-in until validated on a GPU)
    monkeypatch.setenv("FVLM_FAST", "eager")
    assert fast.mode_of(model) == "eager" and fast.enabled(model, batch)
    monkeypatch.setenv("FVLM_FAST", "fastest")
    with pytest.raises(ConfigError, match="FVLM_FAST"):
        fast.mode_of(model)
    with pytest.raises(ConfigError, match="unknown fast-path mode"):
        fast.set_mode(model, "turbo")
    fast.set_mode(model, "eager")  # an explicit mode wins over the environment
    assert fast.unsupported(model) is None
    assert not fast.enabled(model, batch_of(model, [0]))  # no real frame: the plain path
    model.train()
    assert "training" in fast.unsupported(model)
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "autocast" in fast.unsupported(model)
    assert "shallow" in fast.unsupported(make_model(seed=8, deep_query=False))
    fast.set_mode(model, "off")
    assert not fast.enabled(model, batch)
    fast.set_mode(model, None)
    assert [fast.bucket(n) for n in (1, 2, 8, 9, 33)] == [1, 8, 8, 16, 64]


# ---- CUDA only ------------------------------------------------------------------------------------
@cuda
@pytest.mark.parametrize("mode", MODES)
def test_cuda_graphs_match_eager(make_model, mode, no_tf32):
    """fp32: graph replay == the static path run eagerly == the DynamicCache path (no TF32)."""
    model = make_model(seed=9).cuda()
    batch = batch_of(model, [4, 2]).to("cuda")
    ref = run(model, batch, mode, "off")
    assert_same(ref, run(model, batch, mode, "eager"))
    got = run(model, batch, mode, "graph")
    assert_same(ref, got)
    assert got[0].cache.state.graphs  # graphs were captured (and replayed)
    assert_same(ref, run(model, batch, mode, "graph"))  # replayed again on a reused state


@cuda
def test_cuda_graphs_bf16_close_to_eager(make_model):
    model = make_model(seed=10).cuda().to(torch.bfloat16)
    batch = batch_of(model, [4]).to("cuda", torch.bfloat16)
    (pre_r, logits_r, _), (pre_g, logits_g, _) = (run(model, batch, "autoregressive", path)
                                                  for path in ("off", "graph"))
    rel = (logits_g[0].float() - logits_r[0].float()).norm() / logits_r[0].float().norm()
    assert rel < 3e-2, rel
    assert (pre_g.attention.float() - pre_r.attention.float()).abs().max() < 2e-2


@cuda
def test_compiled_step_matches_eager(make_model, no_tf32):
    model = make_model(seed=11).cuda()
    batch = batch_of(model, [3]).to("cuda")
    assert_same(run(model, batch, "autoregressive", "off"), run(model, batch, "autoregressive", "compile"),
                atol=1e-3)


@cuda
def test_cuda_generate_with_graphs_equals_the_reference(make_model, no_tf32):
    model = make_model(seed=13).cuda()
    video = np.random.default_rng(1).integers(0, 255, (6, 40, 48, 3), dtype=np.uint8)
    fast.set_mode(model, "graph")
    out = model.generate(video, "What color is the square?", max_new_tokens=8)
    assert fast.runner(model).states[0].graphs
    fast.set_mode(model, "off")
    ref = model.generate(video, "What color is the square?", max_new_tokens=8)
    assert out.token_ids == ref.token_ids
    assert np.allclose(out.attention, ref.attention, atol=1e-4)
