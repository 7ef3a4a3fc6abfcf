"""Models by hub id, through a fake hub: a temporary HF_HUB_CACHE in huggingface_hub's cache layout,
read offline (HF_HUB_OFFLINE=1, as conftest sets), so nothing here touches the network.

Our format and upstream fVLM's (upstream key names, both DINOv2 attention naming schemes, the tied
lm_head stored once or twice) must give the same outputs as the same weights loaded from a local
directory with the existing recipe."""

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import fvlm
from fvlm.batch import collate, make_sample
from fvlm.config import MODES
from fvlm.errors import CheckpointError, ConfigError
from fvlm.hub import checkpoint_format, load_upstream_weights, resolve
from fvlm.model import FoveatedVLM

UPSTREAM_ID = "sanps/fVLM-135M"


class FakeHub:
    """Repositories written straight into a hub cache: models--owner--name/{refs/REV, snapshots/COMMIT/}."""

    def __init__(self, cache: Path):
        self.cache = cache

    def publish(self, repo_id: str, files: dict[str, object], revision: str = "main") -> str:
        """files: name -> bytes, str or a file to copy. Returns the commit hash; `revision` points at it."""
        commit = hashlib.sha1(f"{repo_id}/{revision}/{sorted(files)}/{time.time_ns()}".encode()).hexdigest()
        root = self.cache / f"models--{repo_id.replace('/', '--')}"
        snapshot = root / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for name, content in files.items():
            if isinstance(content, Path):
                shutil.copy(content, snapshot / name)
            else:
                (snapshot / name).write_bytes(content.encode() if isinstance(content, str) else content)
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / revision).write_text(commit)
        return commit

    def publish_dir(self, repo_id: str, directory: Path, revision: str = "main", **extra) -> str:
        return self.publish(repo_id, {p.name: p for p in directory.iterdir() if p.is_file()} | extra, revision)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    return FakeHub(tmp_path / "hub-cache")


def batch_of(model, seed=0, T=2):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, size=(T, 40, 48, 3), dtype=np.uint8)
    sample = make_sample(frames, "What color is the triangle?", "red", tokenizer=model.tokenizer,
                         config=model.config)
    return collate([sample], pad_id=model.tokenizer.pad_token_id or 0)


def assert_same_outputs(a, b):
    batch = batch_of(a)
    with torch.no_grad():
        for mode in MODES:
            oa, ob = a(batch, mode=mode, return_hidden=True), b(batch, mode=mode, return_hidden=True)
            assert torch.equal(oa.loss, ob.loss), mode
            assert torch.equal(oa.hidden, ob.hidden), mode


# ---- our format ----------------------------------------------------------------------------------
def test_our_format_by_hub_id_equals_the_local_directory(hub, make_model, tmp_path):
    local = make_model(seed=5).save_pretrained(tmp_path / "m")
    hub.publish_dir("tester/tiny-fvlm", local)
    by_id = fvlm.load("tester/tiny-fvlm")
    assert_same_outputs(by_id, fvlm.load(local))
    assert_same_outputs(FoveatedVLM.from_pretrained("tester/tiny-fvlm"), by_id)
    src = resolve("tester/tiny-fvlm")
    assert src.repo_id == "tester/tiny-fvlm" and src.revision == "main" and src.path.is_relative_to(hub.cache)
    assert checkpoint_format(src.path) == "fvlm"


def test_revisions_branch_tag_and_commit(hub, make_model, tmp_path):
    a = make_model(seed=1).save_pretrained(tmp_path / "a")
    b = make_model(seed=2).save_pretrained(tmp_path / "b")
    hub.publish_dir("tester/tiny-fvlm", a)
    commit_b = hub.publish_dir("tester/tiny-fvlm", b, revision="v1")
    assert_same_outputs(fvlm.load("tester/tiny-fvlm"), fvlm.load(a))
    assert_same_outputs(fvlm.load("tester/tiny-fvlm@v1"), fvlm.load(b))
    assert_same_outputs(fvlm.load(f"tester/tiny-fvlm@{commit_b}"), fvlm.load(b))
    with pytest.raises(CheckpointError, match="revision 'v2'.*not in the hub cache"):
        fvlm.load("tester/tiny-fvlm@v2")


def test_only_the_needed_files_are_asked_for(monkeypatch, make_model, tmp_path):
    """Online, snapshot_download is asked for config, safetensors and tokenizer files, never pickles."""
    import huggingface_hub

    local = make_model(seed=5).save_pretrained(tmp_path / "m")
    calls = []

    def fake_snapshot_download(repo_id, **kw):
        calls.append((repo_id, kw))
        return str(local)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    fvlm.load("tester/tiny-fvlm@abc123")
    (repo_id, kw), = calls
    assert repo_id == "tester/tiny-fvlm" and kw["revision"] == "abc123" and kw["local_files_only"] is False
    patterns = kw["allow_patterns"]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(patterns)
    assert not any(p.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl")) or "*" in p for p in patterns)


def test_a_repo_without_safetensors_is_refused_and_nothing_is_unpickled(hub, make_model, tmp_path, monkeypatch):
    import pickle

    local = make_model(seed=5).save_pretrained(tmp_path / "m")
    marker = tmp_path / "unpickled"

    class Payload:  # unpickling this would create the marker file
        def __reduce__(self):
            return (Path.touch, (marker,))

    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    files = {p.name: p for p in local.iterdir() if p.name != "model.safetensors"}
    hub.publish("tester/pickled", files | {"pytorch_model.bin": pickle.dumps(Payload()),
                                           "model.pt": pickle.dumps(Payload())})
    with pytest.raises(CheckpointError, match=r"tester/pickled@main has no model\.safetensors.*never unpickles"):
        fvlm.load("tester/pickled")
    assert not marker.exists()


def test_offline_with_an_empty_cache_fails_fast_and_says_what_to_do(hub):
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError) as e:
        fvlm.load("nobody/nothing")
    assert time.perf_counter() - t0 < 5
    msg = str(e.value)
    assert "not in the hub cache" in msg and "HF_HUB_OFFLINE=1" in msg and "hf download nobody/nothing" in msg
    assert str(hub.cache) in msg


def test_an_incomplete_cached_snapshot_is_used_when_it_has_what_loading_needs(monkeypatch, make_model, tmp_path):
    """Offline, snapshot_download calls a snapshot incomplete when a listed file (e.g. README.md) is missing."""
    import huggingface_hub
    from huggingface_hub.errors import IncompleteSnapshotError

    local = make_model(seed=5).save_pretrained(tmp_path / "m")

    def snapshot_download(repo_id, **kw):
        raise IncompleteSnapshotError("README.md is missing", snapshot_path=str(local))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert_same_outputs(fvlm.load("tester/tiny-fvlm"), fvlm.load(local))
    (local / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no model.safetensors.*cached copy is incomplete"):
        fvlm.load("tester/tiny-fvlm")


@pytest.mark.parametrize("name", ["./no-such-model", "/no/such/model", "a/b/c", "runs", "~x/y"])
def test_names_that_are_not_hub_ids_are_missing_directories(hub, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative names must be missing wherever the tests run (a clone may hold runs/)
    with pytest.raises(CheckpointError, match="model directory .* not found"):
        fvlm.load(name)


def test_an_empty_name_is_refused_not_read_as_the_current_directory(hub):
    with pytest.raises(CheckpointError, match="model name is empty"):
        fvlm.load(" ")


def test_an_existing_directory_wins_over_the_hub(hub, make_model, tmp_path, monkeypatch):
    local = make_model(seed=5).save_pretrained(tmp_path / "owner" / "name")
    monkeypatch.chdir(tmp_path)
    assert resolve("owner/name").repo_id is None
    assert_same_outputs(fvlm.load("owner/name"), fvlm.load(local))


def test_checkpoint_format_and_its_errors(make_model, tmp_path):
    saved = make_model(seed=5).save_pretrained(tmp_path / "m")
    assert checkpoint_format(saved) == "fvlm"
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps(config | {"visual_scael": 0.2}))
    assert checkpoint_format(saved) == "fvlm"  # a broken fvlm config stays an fvlm config
    with pytest.raises(ConfigError, match="visual_scael"):
        fvlm.load(saved)
    (saved / "config.json").write_text(json.dumps(config | {"vision": "facebook/dinov2-small"}))
    assert checkpoint_format(saved) == "upstream"  # not fvlm's, and the weights have upstream's names
    (saved / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="config dicts, not names"):
        checkpoint_format(saved)
    (saved / "config.json").unlink()
    with pytest.raises(CheckpointError, match="has no config.json and no model.safetensors"):
        fvlm.load(saved)


# ---- upstream fVLM's format --------------------------------------------------------------------
def upstream_components(tokenizer):
    """Tiny configs as wide as fVLM-135M's parts (DINO 384, SmolLM2-135M 576), so the size rule applies."""
    from transformers import Dinov2Config

    from fvlm.tiny import tiny_llm_config

    vision = Dinov2Config(hidden_size=384, num_hidden_layers=1, num_attention_heads=6, mlp_ratio=1,
                          image_size=32, patch_size=16, layerscale_value=1.0)
    return vision, tiny_llm_config(len(tokenizer), hidden=576, layers=1, heads=6)


def recipe(tokenizer, seed: int) -> FoveatedVLM:
    """The existing local recipe's model (random weights until load_upstream_weights)."""
    vision, llm = upstream_components(tokenizer)
    torch.manual_seed(seed)
    return FoveatedVLM.from_components(vision=vision, llm=llm, tokenizer=tokenizer, layout="video_first",
                                       query_dim=384).eval()


@pytest.fixture
def upstream(hub, tokenizer, tmp_path):
    """The model whose weights the upstream checkpoints hold; its components are published on the fake hub."""
    vision, llm = upstream_components(tokenizer)
    hub.publish("facebook/dinov2-small", {"config.json": vision.to_json_string()})
    tok_dir = tmp_path / "tok"
    tokenizer.save_pretrained(tok_dir)
    hub.publish_dir("HuggingFaceTB/SmolLM2-135M-Instruct", tok_dir, **{"config.json": llm.to_json_string()})
    return recipe(tokenizer, seed=7)


def upstream_state_dict(model, old_dino_names: bool, tied: str = "embed") -> dict[str, torch.Tensor]:
    """tied: which copy of the tied LLM embedding is stored: "embed", "lm_head" or "both"."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["llm.lm_head.weight"] = sd["llm.model.embed_tokens.weight"].clone()
    if tied != "both":
        sd.pop("llm.lm_head.weight" if tied == "embed" else "llm.model.embed_tokens.weight")
    if old_dino_names:
        renames = [("attention.q_proj.", "attention.attention.query."), ("attention.k_proj.", "attention.attention.key."),
                   ("attention.v_proj.", "attention.attention.value."), ("attention.o_proj.", "attention.output.dense.")]
        for new, old in renames:
            sd = {k.replace(new, old): v for k, v in sd.items()}
        assert any(".attention.attention.query." in k for k in sd)
    return sd


@pytest.mark.parametrize("old_dino_names,tied", [(True, "embed"), (False, "both"), (True, "lm_head")])
def test_upstream_checkpoint_by_hub_id_equals_the_existing_recipe(upstream, hub, tmp_path, old_dino_names,
                                                                   tied, monkeypatch, tokenizer):
    weights = tmp_path / "model.safetensors"
    save_file(upstream_state_dict(upstream, old_dino_names, tied), str(weights))
    upstream_config = {"llm_name": "HuggingFaceTB/SmolLM2-135M-Instruct", "dino_name": "facebook/dinov2-small",
                       "query_dim": 384, "visual_scale": 0.14, "deep_query": True, "architectures": ["fVLM"]}
    hub.publish(UPSTREAM_ID, {"model.safetensors": weights, "config.json": json.dumps(upstream_config),
                              "README.md": "# fVLM-135M"})
    assert checkpoint_format(resolve(UPSTREAM_ID).path) == "upstream"

    loaded = fvlm.load(UPSTREAM_ID)
    assert isinstance(loaded, FoveatedVLM)
    c = loaded.config
    assert (c.layout, c.query_dim, c.visual_scale, c.deep_query) == ("video_first", 384, 0.14, True)
    assert "upstream" in c.notes and UPSTREAM_ID in c.notes and "facebook/dinov2-small" in c.notes
    # the existing local recipe: from_components + load_upstream_weights on the same file
    local = recipe(tokenizer, seed=8)
    load_upstream_weights(local, weights)
    assert_same_outputs(loaded, local)
    assert_same_outputs(loaded, upstream)
    assert loaded.tokenizer.encode("red triangle") == upstream.tokenizer.encode("red triangle")

    # save_pretrained writes our format, and loading it needs no hub at all
    saved = loaded.save_pretrained(tmp_path / "converted")
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("hub used"))
    assert checkpoint_format(saved) == "fvlm"
    again = fvlm.load(saved)
    assert again.config.layout == "video_first"
    assert_same_outputs(again, upstream)


def test_upstream_weights_only_and_config_fields(upstream, hub, tmp_path):
    """No config.json at all (upstream defaults), and a config whose visual_scale is read."""
    weights = tmp_path / "model.safetensors"
    save_file(upstream_state_dict(upstream, True), str(weights))
    hub.publish(UPSTREAM_ID, {"model.safetensors": weights})
    assert fvlm.load(UPSTREAM_ID).config.visual_scale == 0.14
    hub.publish(UPSTREAM_ID, {"model.safetensors": weights,
                              "config.json": json.dumps({"model": {"visual_scale": 0.2, "llm": "/x"}})}, "v2")
    assert fvlm.load(f"{UPSTREAM_ID}@v2").config.visual_scale == 0.2
    hub.publish(UPSTREAM_ID, {"model.safetensors": weights, "config.json": json.dumps({"query_dim": 192})}, "bad")
    with pytest.raises(CheckpointError, match="query_dim 192 but the weights' q_static has width 384"):
        fvlm.load(f"{UPSTREAM_ID}@bad")
    hub.publish(UPSTREAM_ID, {"model.safetensors": weights, "config.json": '{"deep_query": "yes"}'}, "worse")
    with pytest.raises(ConfigError, match="'deep_query' = 'yes' is not a bool"):
        fvlm.load(f"{UPSTREAM_ID}@worse")


def test_upstream_of_an_unknown_size_is_refused(hub, make_model, tmp_path):
    weights = tmp_path / "model.safetensors"
    save_file(upstream_state_dict(make_model(seed=3, layout="video_first"), False), str(weights))
    hub.publish("tester/odd-upstream", {"model.safetensors": weights})
    with pytest.raises(CheckpointError, match="DINO width 32 and LLM width 32.*knows DINO widths"):
        fvlm.load("tester/odd-upstream")


def test_upstream_needs_its_components_in_the_cache_when_offline(hub, upstream, tmp_path):
    shutil.rmtree(hub.cache / "models--facebook--dinov2-small")
    weights = tmp_path / "model.safetensors"
    save_file(upstream_state_dict(upstream, True), str(weights))
    hub.publish(UPSTREAM_ID, {"model.safetensors": weights})
    with pytest.raises(CheckpointError, match="facebook/dinov2-small is not in the hub cache"):
        fvlm.load(UPSTREAM_ID)


def test_multi_token_from_pretrained_refuses_an_upstream_checkpoint(upstream, hub, tmp_path):
    from fvlm.baseline import MultiTokenVLM

    weights = tmp_path / "model.safetensors"
    save_file(upstream_state_dict(upstream, False), str(weights))
    hub.publish(UPSTREAM_ID, {"model.safetensors": weights})
    with pytest.raises(ConfigError, match="foveated model, not a MultiTokenVLM"):
        MultiTokenVLM.from_pretrained(UPSTREAM_ID)


def test_info_says_an_upstream_checkpoint_is_one(upstream, hub, tmp_path, capsys):
    from fvlm.cli import main

    weights = tmp_path / "model.safetensors"
    save_file(upstream_state_dict(upstream, True), str(weights))
    commit = hub.publish(UPSTREAM_ID, {"model.safetensors": weights, "README.md": "# fVLM-135M"})
    assert main(["info", UPSTREAM_ID]) == 0
    out = capsys.readouterr().out
    assert f"files:        hub repository {UPSTREAM_ID}@main, cached in " in out and commit in out
    assert "format:       upstream fVLM checkpoint" in out and "layout:       video_first" in out
    assert "notes:        upstream fVLM checkpoint" in out and "HuggingFaceTB/SmolLM2-135M-Instruct" in out
    assert "model card:" in out and "params total:" in out
