"""`--video_root DIR`: benchmark videos already on disk somewhere other than $HF_HOME.

lmms-eval's MVBench, Video-MME and MLVU tasks look for videos under $HF_HOME/<cache_dir>/
(mvbench_video/..., videomme/data/..., mlvu/...), read when their task code is imported, and
skip downloading when that folder exists. So DIR must hold those folders, laid out as under
$HF_HOME (eval/README.md). HF_HOME also locates the hub cache (where the benchmark annotations
are), the datasets cache and the login token; those are pinned to their current places first,
then HF_HOME is pointed at DIR. The same works by hand for `python -m lmms_eval`:

    HF_HUB_CACHE=~/.cache/huggingface/hub HF_DATASETS_CACHE=~/.cache/huggingface/datasets \
    HF_TOKEN_PATH=~/.cache/huggingface/token HF_HOME=DIR python -m lmms_eval ...
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_READ_AT_IMPORT = ("huggingface_hub", "datasets", "lmms_eval")


def _default_hf_home() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(os.environ.get("HF_HOME", str(Path(xdg) / "huggingface"))).expanduser()


def apply_video_root(video_root: str | Path) -> dict[str, str]:
    """Point HF_HOME at `video_root`, keeping the hub/datasets caches and the token where they are.
    Call before huggingface_hub, datasets or lmms_eval are imported. Returns the variables set."""
    loaded = [m for m in _READ_AT_IMPORT if m in sys.modules]
    if loaded:
        raise RuntimeError(f"apply_video_root must run before {loaded} are imported (they read HF_HOME once)")
    root = Path(video_root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"--video_root {root}: no such directory")
    home = _default_hf_home()
    env = {
        "HF_HUB_CACHE": os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or str(home / "hub"),
        "HF_DATASETS_CACHE": os.environ.get("HF_DATASETS_CACHE") or str(home / "datasets"),
        "HF_TOKEN_PATH": os.environ.get("HF_TOKEN_PATH") or str(home / "token"),
        "HF_HOME": str(root),
    }
    os.environ.update(env)
    return env
