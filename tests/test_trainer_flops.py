"""trainer.flops (forward FLOPs per sample, iso-FLOP samples) and trainer.scaling_grid."""

from __future__ import annotations

import csv
import json
import subprocess

import pytest
from test_trainer_helpers import REPO

from trainer import flops as F
from trainer import scaling_grid

SMALL_V = {
    "model_type": "dinov2",
    "hidden_size": 8,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "mlp_ratio": 2,
    "patch_size": 4,
}
SMALL_L = {
    "model_type": "llama",
    "hidden_size": 16,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 32,
    "vocab_size": 100,
}


def llm_by_hand(tokens: int, before: int = 0) -> float:
    d, d_kv, ff, L = 16, 8, 32, 3
    per_token = 2 * d * d + 2 * d * d_kv + 3 * d * ff
    context = sum(before + i for i in range(1, tokens + 1))
    return 2 * L * (tokens * per_token + 2 * context * d)


@pytest.mark.parametrize("layout,prefix", [("video_first", 0), ("text_first", 5)])
def test_foveated_coarse_pass_covers_the_visual_tokens_and_prefix_only(layout, prefix):
    fvlm = {"image_size": 8, "query_dim": 4, "layout": layout}
    f = F.forward_flops(F.dims(SMALL_V, SMALL_L, fvlm), frames=3, text_tokens=20, prefix_tokens=5)
    assert f["llm"] == llm_by_hand(prefix + 3) + llm_by_hand(20 + 3)  # coarse: P + T; fine: all
    N, D = (8 // 4) ** 2 + 1, 8
    layer = 4 * N * D * D + 2 * N * N * D + 2 * N * D * 16
    assert f["vision"] == 3 * 2 * ((N - 1) * 3 * 16 * D + 2 * layer)
    assert f["lm_head"] == 2 * 20 * 16 * 100
    assert f["total"] == pytest.approx(sum(v for k, v in f.items() if k != "total"))


def test_multi_token_and_coarse_only_counts():
    m = F.dims(SMALL_V, SMALL_L, {"image_size": 8, "architecture": "multi_token", "tokens_per_frame": 4})
    f = F.forward_flops(m, frames=3, text_tokens=20, prefix_tokens=5)
    assert f["llm"] == llm_by_hand(20 + 3 * 4) and "query" not in f
    fov = F.dims(SMALL_V, SMALL_L, {"image_size": 8})
    one = F.forward_flops(fov, 3, 20, 5, mode="coarse_only")
    two = F.forward_flops(fov, 3, 20, 5, mode="coarse_fine")
    assert one["llm"] == llm_by_hand(23) and two["query"] == 2 * one["query"]


def test_real_sizes_and_iso_flop_samples():
    fov = F.forward_flops(
        F.dims("facebook/dinov2-small", "HuggingFaceTB/SmolLM2-135M-Instruct", {}), 8, 128, 32
    )
    b1 = F.forward_flops(
        F.dims(
            "facebook/dinov2-small",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            {"architecture": "multi_token", "tokens_per_frame": 16},
        ),
        8,
        128,
        32,
    )
    assert 1e11 < fov["total"] < b1["total"] < 2e11  # 1 token/frame is cheaper than 16 once counted right
    assert F.samples_for_budget(1.6e16, fov["total"]) == int(1.6e16 // (3 * fov["total"]))


def read_results(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_grid_is_24_runs_and_dry_run_prints_them(capsys):
    assert scaling_grid.main(["--dry-run"]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines()[1:] if l.strip()]
    assert len(lines) == 24
    assert {l.split()[0] for l in lines} == {
        f"{s}-{c}-{a}" for s in ("135M", "360M", "1.7B") for c in ("C1", "C2", "C3", "C4") for a in ("F", "B")
    }
    assert scaling_grid.main(["--dry-run", "--filter", "360M-C2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_grid_runs_subprocesses_skips_finished_runs_and_records_return_codes(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, **kw):
        run_id = next(c.split("=")[1] for c in cmd if c.startswith("run.name="))
        calls.append(run_id)
        if run_id.endswith("F"):
            out = tmp_path / run_id
            out.mkdir(parents=True)
            (out / "run_summary.json").write_text(
                json.dumps({"final": {"loss": 1.5}, "best": {"value": 1.7, "step": 9}})
            )
            return subprocess.CompletedProcess(cmd, 0)
        return subprocess.CompletedProcess(cmd, 3)

    monkeypatch.setattr(scaling_grid.subprocess, "run", fake_run)
    assert scaling_grid.main(["--out", str(tmp_path), "--filter", "135M-C1"]) == 1  # one run failed
    assert calls == ["135M-C1-F", "135M-C1-B"]
    rows = read_results(tmp_path / "scaling_results.csv")
    assert [(r["run_id"], r["status"], r["returncode"]) for r in rows] == [
        ("135M-C1-F", "ok", "0"),
        ("135M-C1-B", "failed", "3"),
    ]
    assert rows[0]["best_val_loss"] == "1.7" and int(rows[0]["total_samples"]) > 0
    calls.clear()
    assert scaling_grid.main(["--out", str(tmp_path), "--filter", "135M-C1"]) == 1
    assert calls == ["135M-C1-B"]  # the finished run is skipped
    rows = read_results(tmp_path / "scaling_results.csv")
    assert rows[0]["status"] == "skipped (done)"


def test_grid_command_sets_the_budget_and_architecture(tmp_path):
    runs = {
        r.run_id: r for r in scaling_grid.grid(REPO / "trainer/configs/scaling_template.yaml", tmp_path, [])
    }
    cmd = scaling_grid.command(REPO / "t.yaml", runs["1.7B-C3-B"], nproc=4)
    assert "--nproc_per_node=4" in cmd and "trainer.run" in cmd
    assert {
        "flops.budget=1.6e+17",
        "model.fvlm.architecture=multi_token",
        "model.gradient_checkpointing=true",
        "model.llm=HuggingFaceTB/SmolLM2-1.7B-Instruct",
    } <= set(cmd)
    assert runs["135M-C1-F"].samples > runs["135M-C1-B"].samples > runs["1.7B-C1-B"].samples
