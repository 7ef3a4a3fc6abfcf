"""lmms-eval task files shipped with fvlm. `python -m eval.tasks` prints this directory, the value
for lmms-eval's `--include_path` (which takes one directory and searches it recursively).
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
