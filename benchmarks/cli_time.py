"""Wall time of `fvlm generate` on the shipped example, and what its imports cost.

    python -m benchmarks.cli_time [--repeat 5] [--out DIR]

Each figure is the median of `--repeat` fresh processes (CPU, the shipped default model, greedy):
- the command itself, `fvlm generate fvlm/assets/examples/shapes_easy.mp4 -p ...`: wall seconds
  and CPU seconds (user + sys of the child; less sensitive than wall to other load on the machine),
- import probes (`python -c STATEMENT`): the interpreter alone, torch, torch + transformers'
  top-level package, and the transformers model modules fvlm builds on,
- one `python -X importtime` run of the command: self time summed per top-level package, the
  modules that cost most, and the import chains that pull torch._dynamo, sympy and scipy.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from fvlm.progress import Progress, say

EXAMPLE = Path(__file__).resolve().parents[1] / "fvlm" / "assets" / "examples" / "shapes_easy.mp4"
PROMPT = "What color is the triangle?"
GENERATE = ["-m", "fvlm.cli", "generate", str(EXAMPLE), "-p", PROMPT, "--device", "cpu"]
PROBES = {
    "python (interpreter only)": "pass",
    "import fvlm.cli": "import fvlm.cli",
    "import torch": "import torch",
    "torch + transformers (top-level package)": "import torch, transformers",
    "torch + transformers' Llama modeling module": (
        "import torch; from transformers.models.llama import modeling_llama"),
    "torch + the transformers names fvlm imports": (
        "import torch; from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, "
        "Dinov2Config, Dinov2Model, PreTrainedTokenizerFast"),
    "import fvlm.model (everything generate imports)": "import fvlm.model",
}
CHAINS = ("torch._dynamo", "sympy", "scipy", "torch.distributed.tensor")


def run_child(args: list[str]) -> tuple[float, float, str]:
    """(wall s, user+sys CPU s, stderr) of `python ARGS` in a fresh process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    res = subprocess.run([sys.executable, *args], check=False, capture_output=True, text=True, env=env,
                         timeout=600)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise RuntimeError(f"python {' '.join(args)} failed:\n{res.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, res.stderr


def median_of(args: list[str], repeat: int, bar: Progress) -> dict[str, float]:
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu, _ = run_child(args)
        walls.append(wall)
        cpus.append(cpu)
        bar.update(1)
    return {"wall_s": round(statistics.median(walls), 3), "cpu_s": round(statistics.median(cpus), 3),
            "wall_all_s": [round(w, 3) for w in walls]}


def parse_importtime(text: str) -> list[tuple[int, int, int, str]]:
    """`python -X importtime` lines -> (self us, cumulative us, depth, module), in print order."""
    rows = []
    for line in text.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append((int(m[1]), int(m[2]), len(m[3]) // 2, m[4]))
    return rows


def chain(rows: list[tuple[int, int, int, str]], name: str) -> list[str]:
    """Who imported `name`: the module, its importer, ... up to the top (children print first)."""
    for i, (_, cum, depth, module) in enumerate(rows):
        if module == name:
            out = [f"{module} ({cum / 1e6:.2f} s)"]
            for _, cum2, depth2, module2 in rows[i + 1:]:
                if depth2 < depth:
                    out.append(f"{module2} ({cum2 / 1e6:.2f} s)")
                    depth = depth2
                if depth == 0:
                    break
            return out
    return []


def importtime_summary(rows: list[tuple[int, int, int, str]]) -> dict[str, object]:
    by_package: Counter[str] = Counter()
    for self_us, _, _, module in rows:
        parts = module.split(".")
        key = ".".join(parts[:2]) if parts[0] in ("torch", "transformers") else parts[0]
        by_package[key] += self_us
    return {
        "total_s": round(sum(r[0] for r in rows) / 1e6, 3),
        "self_s_by_package": {k: round(v / 1e6, 3) for k, v in by_package.most_common(20)},
        "chains": {name: chain(rows, name) for name in CHAINS},
    }


def main(argv: list[str] | None = None) -> int:
    from .common import machine, markdown_table, write_outputs

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    runs = args.repeat * (1 + len(PROBES)) + 1
    say(f"cli_time: {runs} fresh processes, `fvlm generate` {args.repeat}x first")
    bar = Progress(runs, "cli_time", unit="processes")
    result: dict[str, object] = {"machine": machine("cpu"), "repeat": args.repeat,
                                 "command": "fvlm generate " + " ".join(GENERATE[3:])}
    result["generate"] = median_of(GENERATE, args.repeat, bar)
    result["probes"] = {}
    for name, statement in PROBES.items():
        bar.write(f"cli_time: {name}")
        result["probes"][name] = median_of(["-c", statement], args.repeat, bar)
    _, _, text = run_child(["-X", "importtime", *GENERATE])
    bar.update(1)
    bar.close()
    result["importtime"] = importtime_summary(parse_importtime(text))

    gen = result["generate"]
    rows = [["`fvlm generate` (shipped example, default model)", gen["wall_s"], gen["cpu_s"]]]
    rows += [[f"`{name}`", r["wall_s"], r["cpu_s"]] for name, r in result["probes"].items()]
    m = result["machine"]
    text = (f"# `fvlm generate` wall time ({m['device']}, {m['cpu_count']} cores, load {m['load_avg_1min']}, "
            f"{m['date']})\n\nMedian of {args.repeat} fresh processes; CPU = user + sys.\n\n"
            + markdown_table(["what", "wall s", "CPU s"], rows)
            + "\n`python -X importtime` of the command, self time by package (s):\n\n"
            + markdown_table(["package", "s"], list(result["importtime"]["self_s_by_package"].items()))
            + "\nImport chains (module <- importer <- ...):\n\n"
            + "".join(f"- {' <- '.join(c)}\n" for c in result["importtime"]["chains"].values() if c))
    print(text)
    print(json.dumps(result))
    write_outputs(args.out, "cli_time", result, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
