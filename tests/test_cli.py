"""The `fvlm` command: generate (text, JSON, heatmaps), info, errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fvlm.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "fvlm" / "assets" / "examples" / "shapes_easy.mp4"


@pytest.fixture
def saved_model(make_model, tmp_path):
    path = tmp_path / "model"
    make_model(seed=3).save_pretrained(path)
    return str(path)


def test_generate_json_and_heatmaps(saved_model, tmp_path, capsys):
    out_dir = tmp_path / "maps"
    rc = main(["generate", str(EXAMPLE), "--prompt", "What color is the triangle?", "--model", saved_model,
               "--heatmaps", str(out_dir), "--json", "--max-new-tokens", "4", "--device", "cpu"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["mode"] == "autoregressive" and res["frames"] == 8 and isinstance(res["text"], str)
    pngs = sorted(out_dir.glob("*.png"))
    assert len(pngs) == 8 and [str(p) for p in pngs] == sorted(res["heatmaps"]["pngs"])
    assert Path(res["heatmaps"]["mp4"]).stat().st_size > 0


@pytest.mark.parametrize("mode", ["coarse_only", "coarse_fine"])
def test_generate_plain_text(saved_model, capsys, mode):
    assert main(["generate", str(EXAMPLE), "-p", "Describe the video.", "--model", saved_model,
                 "--mode", mode, "--max-new-tokens", "3", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_errors_are_one_line_and_exit_2(saved_model, tmp_path, capsys):
    rc = main(["generate", str(tmp_path / "missing.mp4"), "-p", "Hi?", "--model", saved_model])
    err = capsys.readouterr().err
    assert rc == 2 and "missing.mp4" in err and "Traceback" not in err
    assert main(["info", str(tmp_path / "no-model")]) == 2
    with pytest.raises(SystemExit):
        main(["generate", str(EXAMPLE), "-p", "x", "--mode", "sideways"])


def test_info(saved_model, capsys):
    assert main(["info", saved_model]) == 0
    out = capsys.readouterr().out
    assert "FoveatedVLM" in out and "params total" in out and '"layout": "text_first"' in out


def test_console_script_help():
    res = subprocess.run([sys.executable, "-m", "fvlm.cli", "generate", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and "--heatmaps" in res.stdout and "autoregressive" in res.stdout


def test_shipped_default_model_answers_the_readme_command(capsys, tmp_path):
    """The README's main command, on the model inside the package."""
    rc = main(["generate", str(EXAMPLE), "--prompt", "What color is the triangle?", "--heatmaps",
               str(tmp_path / "maps"), "--json", "--device", "cpu"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["frames"] == 8 and len(res["heatmaps"]["pngs"]) == 8
    assert res["text"].strip().lower() == "red"


@pytest.fixture
def fake_hub(saved_model, monkeypatch):
    """snapshot_download serving `owner/name` from saved_model (and nothing else); the calls it got."""
    import httpx2
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    calls = []

    def snapshot_download(repo_id, **kw):
        calls.append((repo_id, kw.get("revision")))
        if repo_id != "owner/name":
            request = httpx2.Request("GET", f"https://huggingface.co/api/models/{repo_id}")
            raise RepositoryNotFoundError(f"{repo_id} not found", response=httpx2.Response(404, request=request))
        return saved_model

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_generate_and_info_take_a_hub_id(fake_hub, saved_model, capsys):
    rc = main(["generate", str(EXAMPLE), "-p", "What color is the triangle?", "--model", "owner/name@v1",
               "--json", "--max-new-tokens", "3", "--device", "cpu"])
    assert rc == 0 and fake_hub == [("owner/name", "v1")]
    by_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["generate", str(EXAMPLE), "-p", "What color is the triangle?", "--model", saved_model,
                 "--json", "--max-new-tokens", "3", "--device", "cpu"]) == 0
    local = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert by_id["text"] == local["text"] and by_id["entropy"] == local["entropy"]

    assert main(["info", "owner/name"]) == 0
    out = capsys.readouterr().out
    assert f"files:        hub repository owner/name@main, cached in {saved_model}" in out
    assert "format:       fvlm" in out and "layout:       text_first" in out


def test_a_missing_hub_repo_is_one_line_exit_2(fake_hub, capsys):
    assert main(["info", "nobody/nothing"]) == 2
    err = capsys.readouterr().err
    assert "no hub repository nobody/nothing" in err and "Traceback" not in err
    assert main(["generate", str(EXAMPLE), "-p", "Hi?", "--model", "nobody/nothing"]) == 2
    assert "no hub repository nobody/nothing" in capsys.readouterr().err


def test_info_of_the_shipped_model_says_where_it_is(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "model:        the ShapesQA model shipped with fvlm" in out
    assert "files:        local directory" in out and "default_model" in out and "model card:" in out
