"""fvlm.engine: the static-KV-cache / CUDA-graph inference engine gives the reference (DynamicCache) results.

CPU tests run the engine without graphs (on CPU it never captures): the same functions a CUDA graph
captures. Tolerances (fp32): prefill and decode logits within 1e-4 absolute (measured ~1e-7),
attention probabilities within 1e-5, identical greedy tokens. GPU tests (graph replay and
torch.compile against eager) skip without CUDA.
"""

import copy
import io
import pickle
import warnings

import numpy as np
import pytest
import torch
from test_model import make_sample

from fvlm import engine, vlm
from fvlm.batch import collate
from fvlm.config import MODES
from fvlm.engine import Engine, EngineCache
from fvlm.errors import ConfigError, InputError

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


def use(model, path):
    """Give the model an engine for `path` ("eager": no graphs, "graph", "compile") unless it has one;
    "off": the reference path, nothing to do."""
    want = {"graphs": path != "eager", "compile": path == "compile", "fuse": True}  # fuse: as on CUDA
    if path != "off" and {k: model.engine.options[k] for k in want} != want:
        model.engine = Engine(model, **want)


def run(model, batch, mode, path, steps=6, return_attention=True):
    """Prefill under `path` ("off": the reference), then `steps` greedy tokens through pre.cache:
    (prefill, logits list, ids)."""
    use(model, path)
    with torch.inference_mode():
        pre = model.prefill(batch, mode, return_attention, fast=path != "off")
        logits, ids = [pre.logits], []
        lm = model.llm.get_output_embeddings()
        for _ in range(steps):
            ids.append(logits[-1].argmax(-1))
            h = pre.cache.append(model.embed(ids[-1][:, None]))
            logits.append(lm(h[:, -1]))
    return pre, logits, torch.stack(ids, 1)


def assert_same(ref, got, atol=1e-4):
    (pre_r, logits_r, ids_r), (pre_g, logits_g, ids_g) = ref, got
    assert isinstance(pre_g.cache, EngineCache) and not isinstance(pre_r.cache, EngineCache)
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
def test_engine_matches_the_reference(make_model, layout, mode, sizes):
    model = make_model(seed=3, layout=layout)
    batch = batch_of(model, sizes)
    assert_same(run(model, batch, mode, "off"), run(model, batch, mode, "eager"))


@pytest.mark.parametrize("mode", ["coarse_fine", "autoregressive"])
def test_fused_projections(make_model, mode):
    """q/k/v and gate/up as one GEMM each (the default) and as the modules' own GEMMs (fuse=False)
    both give the reference, also for an LLM with biases on some of the stacked projections."""
    model = make_model(seed=15)
    batch = batch_of(model, [3, 2])
    ref = run(model, batch, mode, "off")
    assert model.engine.options["fuse"] is None and model.engine.fused is None  # CPU: not by default
    assert_same(ref, run(model, batch, mode, "eager"))
    assert model.engine.fused is not None
    model.engine = Engine(model, graphs=False, fuse=False)
    assert_same(ref, run(model, batch, mode, "eager"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.llm.get_decoder().layers:  # biases on q, v and gate only: k and up get zeros
            for lin in (layer.self_attn.q_proj, layer.self_attn.v_proj, layer.mlp.gate_proj):
                lin.bias = torch.nn.Parameter(0.1 * torch.randn(lin.out_features, generator=gen))
    ref = run(model, batch, mode, "off")
    model.engine = Engine(model, graphs=False, fuse=True)
    assert_same(ref, run(model, batch, mode, "eager"))


def test_weights_written_in_place(make_model):
    """load_state_dict or an optimizer step keeps the storage but changes the values: the engine
    (whose fused projections are a copy) is rebuilt and follows."""
    model = make_model(seed=16)
    batch = batch_of(model, [2])
    run(model, batch, "autoregressive", "eager")
    first = model.engine
    other = make_model(seed=17)
    model.load_state_dict(other.state_dict())
    assert model.engine is not first and model.engine.options == first.options
    assert_same(run(other, batch, "autoregressive", "off"), run(model, batch, "autoregressive", "eager"))


def test_patch_passes_in_chunks(make_model, monkeypatch):
    """Autoregressive mode encodes frame_chunk frame slots at a time, right before reading them."""
    model = make_model(seed=12)
    model.engine = Engine(model, graphs=False, fuse=True, frame_chunk=2)
    passes = []
    encode = model.encoder.encode_patches
    monkeypatch.setattr(model.encoder, "encode_patches", lambda px: passes.append(len(px)) or encode(px))
    batch = batch_of(model, [5, 2, 3])
    ref = run(model, batch, "autoregressive", "off")
    assert passes == [10]  # the reference path: one batched pass over every real frame
    passes.clear()
    assert_same(ref, run(model, batch, "autoregressive", "eager"))
    assert passes == [6, 3, 1]  # real frames in slots 0-1 (2 + 2 + 2), 2-3 (2 + 0 + 1), 4 (1 + 0 + 0)


@pytest.mark.parametrize("mode", ["coarse_only", "coarse_fine"])
def test_coarse_patch_pass_in_chunks(make_model, monkeypatch, mode):
    """The coarse modes encode frame_chunk frames at a time into K/V buffers for all frames."""
    model = make_model(seed=13)
    model.engine = Engine(model, graphs=False, fuse=True, frame_chunk=2)
    passes = []
    encode = model.encoder.encode_patches
    monkeypatch.setattr(model.encoder, "encode_patches", lambda px: passes.append(len(px)) or encode(px))
    batch = batch_of(model, [4, 1])
    ref = run(model, batch, mode, "off")
    assert passes == [5]
    passes.clear()
    assert_same(ref, run(model, batch, mode, "eager"))
    assert passes == [2, 2, 1]


def test_generate_dispatches_autoregressive_to_the_engine(make_model, monkeypatch):
    model = make_model(seed=4)
    video = np.random.default_rng(0).integers(0, 255, (5, 40, 48, 3), dtype=np.uint8)  # (no decoder)
    ref = model.generate(video, "What color is the square?", max_new_tokens=6)
    ref_events = []
    model.generate(video, "What color is the square?", max_new_tokens=6, callback=ref_events.append)

    def fail(*a, **k):
        raise AssertionError("the DynamicCache path ran")

    monkeypatch.setattr(model, "read_frames_autoregressive", fail)
    model.fast = True
    out = model.generate(video, "What color is the square?", max_new_tokens=6)
    assert out.token_ids == ref.token_ids
    assert np.allclose(out.attention, ref.attention, atol=1e-5)
    assert np.allclose(out.entropy, ref.entropy, atol=1e-5)
    events = []  # live frame events (on_step) and text events, as on the reference path
    model.generate(video, "What color is the square?", max_new_tokens=6, callback=events.append)
    assert [type(e).__name__ for e in events] == [type(e).__name__ for e in ref_events]
    for a, b in zip(events, ref_events):
        if hasattr(a, "attention"):
            assert a.index == b.index and np.allclose(a.attention, b.attention, atol=1e-5)
    streamed = list(model.stream(video, "What color is the square?", max_new_tokens=6, fast=True))
    assert streamed[-1].output.token_ids == ref.token_ids


@pytest.mark.parametrize("mode", MODES)
def test_generate_fast_equals_reference(make_model, mode):
    """generate(fast=True) == generate(fast=False): text, tokens and every attention map, batched."""
    model = make_model(seed=14)
    rng = np.random.default_rng(2)
    videos = [rng.integers(0, 255, (T, 40, 48, 3), dtype=np.uint8) for T in (4, 2)]
    prompts = ["What color is the square?", "Where is it?"]
    ref = model.generate(videos, prompts, mode=mode, max_new_tokens=6, fast=False)
    model.engine = Engine(model)
    got = model.generate(videos, prompts, mode=mode, max_new_tokens=6, fast=True)
    assert model.engine.states  # the engine ran
    for a, b in zip(ref, got):
        assert a.text == b.text and a.token_ids == b.token_ids
        for name in ("attention", "layer_attention", "entropy", "coarse_attention"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None), name
            if x is not None:
                assert np.allclose(x, y, atol=1e-5), name


def test_cache_grows_past_its_slots_while_decoding(make_model, monkeypatch):
    monkeypatch.setattr(engine, "DECODE_ROOM", 1)
    monkeypatch.setattr(engine, "SLOT_MULTIPLE", 8)
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
    use(model, "eager")
    with torch.inference_mode():  # two prefills alive at once, decoded interleaved
        pa, pb = (model.prefill(x, "autoregressive", True, fast=True) for x in (a, b))
        assert pa.cache.state is not pb.cache.state
        lm = model.llm.get_output_embeddings()
        for pre, (_, logits_r, _) in ((pa, ref_a), (pb, ref_b)):
            assert (pre.logits - logits_r[0]).abs().max() < 1e-4
        for step in range(3):
            for pre, (_, logits_r, ids_r) in ((pa, ref_a), (pb, ref_b)):
                h = pre.cache.append(model.embed(ids_r[:, step : step + 1]))
                assert (lm(h[:, -1]) - logits_r[step + 1]).abs().max() < 1e-4
        states = len(model.engine.states)
        del pa, pb  # released: the next prefill reuses a state
        model.prefill(a, "autoregressive", False, fast=True)
        assert len(model.engine.states) == states


def test_weights_moved_or_copied(make_model):
    model = make_model(seed=7)
    batch = batch_of(model, [2])
    run(model, batch, "autoregressive", "eager")
    options, states = model.engine.options, model.engine.states
    twin = copy.deepcopy(model)  # the engine (slots, graphs, compiled code) is not copied
    assert twin.engine is not model.engine and twin.engine.model is twin and not twin.engine.states
    assert model.engine.states is states and states
    assert_same(run(twin, batch, "autoregressive", "off"), run(twin, batch, "autoregressive", "eager"))
    loaded = pickle.loads(pickle.dumps(model))
    assert loaded.engine.model is loaded and not loaded.engine.states
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)  # the state dict holds tensors only
    buf.seek(0)
    assert set(torch.load(buf, weights_only=True)) == set(model.state_dict())
    first = model.engine
    model.double()  # new parameter storage: a new engine with the same options
    batch64 = batch_of(model, [2])
    batch64.pixel_values = batch64.pixel_values.double()
    ref64 = run(model, batch64, "autoregressive", "off")
    assert model.engine is not first and model.engine.options == options
    assert_same(ref64, run(model, batch64, "autoregressive", "eager"),
                atol=1e-6)  # (transformers' RMSNorm computes in fp32 even for fp64 weights; the engine's does not)
    model.engine.release()
    assert not model.engine.states
    with pytest.raises(InputError, match="another model"):
        model.engine = Engine(twin)


def test_path_resolution(make_model, monkeypatch):
    """The call's fast, else model.fast, else FVLM_FAST, else the device default (off on CPU)."""
    model = make_model(seed=8)
    monkeypatch.delenv("FVLM_FAST", raising=False)
    assert model.use_engine() is False  # the default
    monkeypatch.setattr(vlm, "ENGINE_ON_CUDA_BY_DEFAULT", True)
    assert model.use_engine() is False  # the device default is for CUDA only
    monkeypatch.setenv("FVLM_FAST", "1")
    assert model.use_engine() is True and model.use_engine(False) is False
    monkeypatch.setenv("FVLM_FAST", "0")
    assert model.use_engine() is False and model.use_engine(True) is True
    monkeypatch.setenv("FVLM_FAST", "fastest")
    with pytest.raises(ConfigError, match="FVLM_FAST"):
        model.use_engine()
    model.fast = True  # the model's default wins over the environment
    assert model.use_engine() is True and model.use_engine(False) is False
    model.fast = False
    assert model.use_engine() is False and model.use_engine(True) is True


def test_what_the_engine_serves(make_model):
    model = make_model(seed=8)
    batch = batch_of(model, [2])
    assert engine.unsupported(model) is None and model.engine.serves(batch)
    assert engine.skipped(model, batch_of(model, [0])) == "no real frame"  # the reference path, silently
    model.train()
    assert "training" in engine.skipped(model, batch) and not model.engine.serves(batch)
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "autocast" in engine.skipped(model, batch)
    assert [engine.bucket(n) for n in (1, 2, 8, 9, 33)] == [1, 8, 8, 16, 64]
    for bad in (0, 2.5):
        with pytest.raises(ConfigError, match="frame_chunk"):
            Engine(model, frame_chunk=bad)
    with warnings.catch_warnings(record=True) as caught:  # fast=True on a model it cannot serve: warn once
        warnings.simplefilter("always")
        model.prefill(batch_of(model, [0]), "autoregressive", False, fast=True)
        assert not caught  # a batch-level reason: silent
        shallow = make_model(seed=8, deep_query=False)
        assert "shallow" in engine.unsupported(shallow)
        pres = [shallow.prefill(batch, "autoregressive", False, fast=f) for f in (True, True, False)]
    assert [str(w.message) for w in caught if "fvlm.engine" in str(w.message)] == [
        "fvlm.engine: cannot serve this model (shallow query (ablation A1)); it runs the reference path"]
    assert not any(isinstance(p.cache, EngineCache) for p in pres)
    assert torch.equal(pres[0].logits, pres[2].logits)


# ---- CUDA only ------------------------------------------------------------------------------------
@cuda
@pytest.mark.parametrize("mode", MODES)
def test_cuda_graphs_match_eager(make_model, mode, no_tf32):
    """fp32: graph replay == the engine run eagerly == the DynamicCache path (no TF32)."""
    model = make_model(seed=9).cuda()
    batch = batch_of(model, [4, 2]).to("cuda")
    ref = run(model, batch, mode, "off")
    assert_same(ref, run(model, batch, mode, "eager"))
    got = run(model, batch, mode, "graph")
    assert_same(ref, got)
    assert got[0].cache.state.graphs  # graphs were captured (and replayed)
    assert_same(ref, run(model, batch, mode, "graph"))  # the same engine replays again


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
    out = model.generate(video, "What color is the square?", max_new_tokens=8, fast=True)
    assert model.engine.states[0].graphs
    ref = model.generate(video, "What color is the square?", max_new_tokens=8, fast=False)
    assert out.token_ids == ref.token_ids
    assert np.allclose(out.attention, ref.attention, atol=1e-4)
