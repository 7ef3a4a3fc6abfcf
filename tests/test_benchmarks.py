"""The benchmarks run in CI-sized form and end with one valid JSON line (no timing assertions)."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_module(*args: str) -> tuple[dict, str, str]:
    """(the last stdout line as JSON, stdout, stderr) of `python -m ARGS`, not on a terminal."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout, proc.stderr


def test_e2e_smoke(tmp_path):
    result, stdout, stderr = run_module("benchmarks.e2e", "--device", "cpu", "--frames", "2,4", "--smoke",
                                        "--out", str(tmp_path))
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
    # progress on stderr, readable in a log: the estimate first, each row as it starts, a few bar lines
    lines = stderr.splitlines()
    assert "\r" not in stderr and "e2e: this run will take roughly" in stderr
    assert "e2e: 4 frames, fVLM coarse_fine eager ..." in lines
    assert 2 <= sum(x.startswith("e2e (smoke shapes)") for x in lines) <= 12
    assert any(x.startswith("e2e (smoke shapes)  12/12 rows 100%") for x in lines)


def test_train_step_smoke(tmp_path):
    result, _, stderr = run_module("benchmarks.train_step", "--smoke", "--device", "cpu", "--out",
                                   str(tmp_path))
    assert "train_step: coarse_fine (1/2)" in stderr and "train_step: b1 (2/2)" in stderr
    assert result["benchmark"] == "train_step" and result["standins"]
    assert [r["model"] for r in result["rows"]] == ["fVLM coarse_fine", "B1 (16 tokens/frame)"]
    assert all(r["samples_s"] > 0 and r["step_ms"] > 0 for r in result["rows"])
    assert (tmp_path / "train_step.json").is_file()


def test_cli_time_reads_importtime():
    """benchmarks.cli_time's parsing of `python -X importtime` (children print before their importer)."""
    from benchmarks.cli_time import chain, importtime_summary, parse_importtime

    text = """import time: self [us] | cumulative | imported package
import time:    300000 |     300000 |       sympy.core
import time:    700000 |    1000000 |     sympy
import time:   2000000 |    3000000 |   torch.distributed.tensor
import time:    100000 |    3100000 | transformers.activations
import time:     50000 |      50000 | json
"""
    rows = parse_importtime(text)
    assert rows[1] == (700000, 1000000, 2, "sympy") and len(rows) == 5
    assert chain(rows, "sympy") == ["sympy (1.00 s)", "torch.distributed.tensor (3.00 s)",
                                    "transformers.activations (3.10 s)"]
    summary = importtime_summary(rows)
    assert summary["total_s"] == 3.15 and summary["chains"]["scipy"] == []
    assert summary["self_s_by_package"] == {"torch.distributed": 2.0, "sympy": 1.0,
                                            "transformers.activations": 0.1, "json": 0.05}


def test_loader_smoke(tmp_path):
    """benchmarks.loader: samples/s of the trainer's decoder + batcher alone, on make-shapes shards."""
    from fvlm.shapesqa import generate

    assert generate.main([str(tmp_path), "--n", "6", "--eval-n", "1", "--no-videos", "--split", "easy"]) == 0
    result, _, stderr = run_module("benchmarks.loader", str(tmp_path / "train" / "*.tar"), "--workers", "0",
                                   "--batch", "2", "--batches", "2", "--image-size", "56")
    assert result["benchmark"] == "loader" and result["image_size"] == 56
    [row] = result["rows"]
    assert row["workers"] == 0 and row["batches"] == 2 and row["samples"] == 4 and row["samples_s"] > 0
    assert "loader: 0 workers  2/2 batches 100%" in stderr
