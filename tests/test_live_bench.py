"""benchmarks.live in smoke form: runs 10 x max_frames pushes and ends with one valid JSON line."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_live_benchmark_smoke(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.live", "--smoke", "--device", "cpu", "--out",
                           str(tmp_path)], cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    r = result["run"]
    assert result["benchmark"] == "live" and result["tokens_per_frame"] == 1
    assert r["pushes"] == 10 * r["max_frames"] == 40 and r["slides"] == 18
    assert [x["frames_seen"] for x in r["rows"]] == [1, 16, 40]
    assert all(x["window"] <= r["max_frames"] and x["push_ms"] > 0 and x["ask_ms"] > 0 for x in r["rows"])
    assert len({x["context_tokens"] for x in r["rows"][1:]}) == 1  # bounded: the same once the window is full
    assert r["sustained_fps"] > 0 and r["push_ms_max"] >= r["push_ms_p50"]
    assert "| frames seen |" in proc.stdout
    assert {p.name for p in tmp_path.iterdir()} == {"live.md", "live.json"}
