"""The GPU-only shell recipes of experiments/shapesqa/, run on CPU at toy scale from a bare copy of
trainer/ and experiments/ (no data/, no runs/): a script that breaks on a GPU machine wastes GPU time."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml
from test_trainer_helpers import REPO, subprocess_env


def test_gpu_baselines_script_trains_and_packs_both_from_a_bare_checkout(tmp_path: Path):
    root = tmp_path / "checkout"
    for folder in ("trainer", "experiments"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "out"
    out.mkdir()
    tiny = ["--set", "flops.budget=5e10",  # a couple of steps of 4 samples each
            "--set", "data.batch_size=4", "--set", "data.num_workers=0", "--set", "data.val_shards=null"]
    proc = subprocess.run(
        ["bash", "experiments/shapesqa/shapes_gpu_baselines.sh", "300", *tiny],
        cwd=root, env=subprocess_env(PYTHON=sys.executable, CLIPS="24", EVAL_CLIPS="4", WORKERS="1",
                             RESULTS_DIR=str(out)),
        capture_output=True, text=True, timeout=420, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name, key, value in (("a6", ("train", "modes"), "coarse_only"),
                             ("b1", ("model", "fvlm", "architecture"), "multi_token")):
        run = root / "runs" / f"shapes_gpu_{name}"
        assert f"[baselines] {name}: done" in proc.stdout
        got = yaml.safe_load((run / "config.yaml").read_text())
        for k in key:
            got = got[k]
        assert got in (value, [value]), (name, key, got)
        archive = out / f"baseline_{name}.tar.gz"
        with tarfile.open(archive) as tar:
            names = tar.getnames()
        assert f"runs/shapes_gpu_{name}/final/model.safetensors" in names, names
        assert f"runs/shapes_gpu_{name}.log" in names
        assert not any(n.endswith(("optimizer.pt", "rng.pt")) for n in names)
