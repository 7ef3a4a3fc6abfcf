"""The benchmarks run in CI-sized form and end with one valid JSON line (no timing assertions)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_module(*args: str) -> tuple[dict, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout


def test_e2e_smoke(tmp_path):
    result, stdout = run_module("benchmarks.e2e", "--device", "cpu", "--frames", "2,4", "--smoke", "--out",
                                str(tmp_path))
    assert result["benchmark"] == "e2e" and result["standins"] and result["frames"] == [2, 4]
    methods = {r["method"] for r in result["rows"]}
    assert {"SmolVLM2-256M-shaped", "B1 (16 tokens/frame)", "fVLM coarse_fine eager",
            "fVLM autoregressive eager"} <= methods
    assert any(m.startswith("fVLM autoregressive fast") for m in methods)
    for r in result["rows"]:
        assert r["ttft_ms"] > 0 and r["transient_MiB"] >= 0 and r["visual_tokens"] > 0
        if r["method"].startswith("fVLM autoregressive"):
            assert r["step_ms"] > 0 and r["decode_tok_s"] > 0
    by = {(r["frames"], r["method"]): r["visual_tokens"] for r in result["rows"]}
    assert by[4, "fVLM coarse_fine eager"] == 4 and by[4, "B1 (16 tokens/frame)"] == 64
    assert {"ttft_coarse_fine", "ttft_autoregressive", "transient_memory_coarse_fine", "step_ms"} <= set(
        result["ratios"])
    engine_vs_eager = ("engine_vs_eager_ttft_coarse_fine", "engine_vs_eager_ttft_autoregressive",
                       "engine_vs_eager_step")  # the engine against the reference path, same run
    assert all(result["ratios"][k] > 0 for k in engine_vs_eager)
    assert all(v["same_argmax"] and v["rel_err"] < 1e-4 for v in result["fast_vs_eager"].values())
    assert "| frames | method |" in stdout
    assert {p.name for p in tmp_path.iterdir()} == {"e2e.md", "e2e.json", "e2e.png"}
    assert (tmp_path / "e2e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_step_smoke(tmp_path):
    result, _ = run_module("benchmarks.train_step", "--smoke", "--device", "cpu", "--out", str(tmp_path))
    assert result["benchmark"] == "train_step" and result["standins"]
    assert [r["model"] for r in result["rows"]] == ["fVLM coarse_fine", "B1 (16 tokens/frame)"]
    assert all(r["samples_s"] > 0 and r["step_ms"] > 0 for r in result["rows"])
    assert (tmp_path / "train_step.json").is_file()
