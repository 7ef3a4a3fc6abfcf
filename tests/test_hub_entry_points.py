"""Hub ids in the entry points outside the library: lmms-eval's pretrained= and the trainer's init_from.
snapshot_download is replaced by a fake that serves one saved directory, so nothing touches the network."""

import pytest
import torch

from fvlm.errors import ConfigError


@pytest.fixture
def hub_repo(monkeypatch, tmp_path):
    """serve(directory): snapshot_download of `owner/name` (any revision) returns that directory;
    any other repository is missing from an (empty, offline) cache. Returns the calls."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls = []

    def serve(directory):
        def snapshot_download(repo_id, **kw):
            calls.append((repo_id, kw.get("revision"), tuple(kw.get("allow_patterns") or ())))
            if repo_id != "owner/name":
                raise LocalEntryNotFoundError("not in the cache and offline")
            return str(directory)

        monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
        return calls

    return serve


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_lmms_eval_pretrained_takes_a_hub_id(hub_repo, make_model, tmp_path):
    pytest.importorskip("lmms_eval")
    from eval.lmms_model import FVLM

    saved = make_model(seed=4).save_pretrained(tmp_path / "m")
    calls = hub_repo(saved)
    lm = FVLM(pretrained="owner/name@v3", device="cpu")
    assert calls and calls[0][:2] == ("owner/name", "v3")
    assert same_weights(lm.model, FVLM(pretrained=str(saved), device="cpu").model)


def test_trainer_init_from_takes_a_hub_id(hub_repo, tokenizer, tmp_path):
    from test_trainer_helpers import tiny_config

    from trainer.build import build_model
    from trainer.config import from_dict

    tok_dir = tmp_path / "tok"
    tokenizer.save_pretrained(tok_dir)
    raw = tiny_config(tmp_path / "run", "x.tar")
    raw["model"]["tokenizer"] = str(tok_dir)
    first = build_model(from_dict(raw), tokenizer)  # a fresh model, saved as a previous stage would be
    saved = first.save_pretrained(tmp_path / "stage1")
    calls = hub_repo(saved)

    raw["model"]["init_from"] = "owner/name@v2"
    raw["run"]["seed"] = 5  # a different fresh init, replaced by the hub weights
    second = build_model(from_dict(raw), tokenizer)
    assert calls[0][:2] == ("owner/name", "v2") and "model.safetensors" in calls[0][2]
    assert same_weights(first, second)

    raw["model"]["init_from"] = "nobody/nothing"
    with pytest.raises(ConfigError, match="config key 'model.init_from': nobody/nothing.*not in the hub cache"):
        build_model(from_dict(raw), tokenizer)
