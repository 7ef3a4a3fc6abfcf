"""ShapesQA evaluation: accuracy per question type and mode, and where the model looks.

For every record of a ShapesQA `index.jsonl` (written by `fvlm make-shapes`), the model answers
in each mode; answers are scored by exact match after normalisation (captions are not scored),
per question type, per split (easy/hard) and on the clips that hold a single object.
Foveation is measured on the attention maps of records that name a target object:

- concentration = attention density inside the target's box / the uniform density
  (1.0 = spread evenly; attending to any salient object already raises it)
- selectivity   = density inside the target's box / density inside the other objects' boxes
  (1.0 = the question does not steer the gaze toward the object it asks about)
- mass          = the fraction of the attention inside the target's box (concentration x the box's
  share of the frame): what the frame's one token is made of. A concentration of 8 on a box that
  covers 3 % of the frame still leaves three quarters of the token to everything else.

Densities are averaged over the frames where the target is visible (selectivity: where another
object is visible too) and the ratio is taken of those means (robust to frames where almost no
attention falls on the other objects), per DINO layer, for the layer mean, and for the map the
heatmaps draw.

    fvlm eval-shapes MODEL_DIR --index data/shapes/test/index.jsonl [--limit N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import torch

from ..config import MODES
from ..errors import InputError
from ..progress import Progress

UNSCORED = {"caption"}


def normalize(answer: str) -> str:
    """Lower case, no punctuation, no leading article: 'The red circle.' -> 'red circle'."""
    words = re.sub(r"[^a-z0-9 ]+", " ", answer.lower()).split()
    if words and words[0] in ("a", "an", "the"):
        words = words[1:]
    return " ".join(words)


def read_index(path: str | Path, limit: int | None = None, qtypes: set[str] | None = None) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such index; make one with `fvlm make-shapes OUT --n N`")
    records = []
    with path.open() as f:
        for line in f:
            r = json.loads(line)
            if qtypes is None or r["qtype"] in qtypes:
                r["video"] = str(path.parent / r["video"])
                records.append(r)
            if limit is not None and len(records) >= limit:
                break
    if not records:
        raise InputError(f"{path}: no records (qtypes={sorted(qtypes) if qtypes else 'all'})")
    return records


def box_mask(box, offset: tuple[int, int], s: int) -> np.ndarray:
    """Pixel mask [s, s] of a frame-space box [x0, y0, x1, y1] inside the centre crop."""
    m = np.zeros((s, s), dtype=bool)
    if box is None:
        return m
    x0, y0, x1, y1 = (np.array(box, dtype=np.float64) - [offset[0], offset[1]] * 2)
    x0, y0 = int(np.clip(np.floor(x0), 0, s)), int(np.clip(np.floor(y0), 0, s))
    x1, y1 = int(np.clip(np.ceil(x1), 0, s)), int(np.clip(np.ceil(y1), 0, s))
    m[y0:y1, x0:x1] = True
    return m


MIN_COVERAGE = 0.25  # patches' worth of box an object needs to be pooled (object head, probe)


def patch_coverage(boxes: torch.Tensor, grid: int, patch: int) -> torch.Tensor:
    """Fraction of each patch that each box covers: boxes [M, 4] (x0, y0, x1, y1 in model-input
    pixels) -> [M, grid * grid], patches row-major as the encoder orders them."""
    edges = torch.arange(grid + 1, device=boxes.device, dtype=boxes.dtype) * patch  # [g + 1]
    lo, hi = edges[:-1], edges[1:]  # [g]

    def overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # [M] -> [M, g]
        return (torch.minimum(b[:, None], hi) - torch.maximum(a[:, None], lo)).clamp(min=0) / patch

    wx, wy = overlap(boxes[:, 0], boxes[:, 2]), overlap(boxes[:, 1], boxes[:, 3])
    return (wy[:, :, None] * wx[:, None, :]).flatten(1)  # [M, g * g]


def gaze_densities(attention: np.ndarray, boxes: list, target: int, frame_hw: tuple[int, int]
                   ) -> tuple[float | None, float | None]:
    """Attention density inside the target's box and inside the other objects' boxes, in units of
    the uniform density (1.0 = as much as an even spread), for one map [gh, gw] over a frame of size
    frame_hw. (None, None) when the target is outside the crop; others None when no other object is."""
    H, W = frame_hw
    s = min(H, W)
    offset = ((W - s) // 2, (H - s) // 2)
    dens = cv2.resize(attention.astype(np.float32), (s, s), interpolation=cv2.INTER_NEAREST)
    dens = dens * (s * s / max(float(dens.sum()), 1e-12))  # [s, s], mean 1
    tgt = box_mask(boxes[target], offset, s)
    if not tgt.any():
        return None, None
    others = np.zeros_like(tgt)
    for i, b in enumerate(boxes):
        if i != target:
            others |= box_mask(b, offset, s)
    others &= ~tgt
    return float(dens[tgt].mean()), (float(dens[others].mean()) if others.sum() >= 4 else None)


def box_fraction(box, frame_hw: tuple[int, int]) -> float:
    """The share of the centre crop that a frame-space box covers (0 when outside it)."""
    H, W = frame_hw
    s = min(H, W)
    return float(box_mask(box, ((W - s) // 2, (H - s) // 2), s).mean())


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


def evaluate(model, records: list[dict], modes=MODES, batch_size: int = 8, progress: bool = True) -> dict:
    """Accuracy per qtype and foveation metrics per layer, for every mode. See the module doc."""
    report = {}
    for mode in modes:
        correct: dict[str, list[bool]] = defaultdict(list)  # "qtype" and "difficulty/qtype"
        single: dict[str, list[bool]] = defaultdict(list)  # qtype, clips with exactly one object
        conc: dict[str, list[float]] = defaultdict(list)  # target density, every frame
        mass: dict[str, list[float]] = defaultdict(list)  # attention mass inside the target's box
        pair: dict[str, list[tuple[float, float]]] = defaultdict(list)  # (target, others) density
        bar = Progress(len(records), f"eval-shapes {mode}", unit="questions", disable=not progress)
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            outs = model.generate([r["video"] for r in chunk], [r["question"] for r in chunk],
                                  mode=mode, max_new_tokens=24)
            bar.update(len(chunk))
            for r, out in zip(chunk, outs):
                if r["qtype"] not in UNSCORED:
                    ok = normalize(out.text) == normalize(r["answer"])
                    correct[r["qtype"]].append(ok)
                    correct[f"{r.get('difficulty', 'all')}/{r['qtype']}"].append(ok)
                    if len(r.get("objects", ())) == 1:
                        single[r["qtype"]].append(ok)
                if r.get("target") is None or out.attention is None:
                    continue
                maps = {"shown": out.attention, "layer_mean": out.layer_attention.mean(1)}
                for layer in range(out.layer_attention.shape[1]):
                    maps[f"layer{layer}"] = out.layer_attention[:, layer]
                if len(out.timestamps) != len(r["boxes"]):
                    raise InputError(f"{r['video']}: the model sampled {len(out.timestamps)} frames but the "
                                     f"index has boxes for {len(r['boxes'])}; regenerate with this sampler")
                hw = (r["size"], r["size"])
                for f in range(len(out.timestamps)):
                    if not r["visible"][f][r["target"]]:
                        continue
                    area = box_fraction(r["boxes"][f][r["target"]], hw)
                    for name, m in maps.items():
                        d_tgt, d_oth = gaze_densities(m[f], r["boxes"][f], r["target"], hw)
                        if d_tgt is not None:
                            conc[name].append(d_tgt)
                            mass[name].append(d_tgt * area)
                        if d_oth is not None:
                            pair[name].append((d_tgt, d_oth))
        bar.close()
        scored = [x for q, v in correct.items() if "/" not in q for x in v]
        by_split = defaultdict(list)
        for q, v in correct.items():
            if "/" in q:
                by_split[q.split("/")[0]].extend(v)
        report[mode] = {
            "accuracy": _mean(scored),
            "n": len(scored),
            "accuracy_by_split": {d: _mean(v) for d, v in sorted(by_split.items())},
            "accuracy_by_qtype": {q: _mean(v) for q, v in sorted(correct.items())},
            "accuracy_single_object": {q: _mean(v) for q, v in sorted(single.items())},
            "concentration": {k: _mean(v) for k, v in conc.items()},
            "mass": {k: _mean(v) for k, v in mass.items()},
            "selectivity": {k: float(np.mean([t for t, _ in v]) / max(np.mean([o for _, o in v]), 1e-12))
                            for k, v in pair.items()},
        }
    return report


def format_report(report: dict) -> str:
    """A plain-text table: accuracy by question type, then gaze metrics, one column per mode."""
    modes = list(report)
    qtypes = sorted({q for m in modes for q in report[m]["accuracy_by_qtype"]})
    pct = lambda x: "   -  " if x is None else f"{100 * x:5.1f}%"  # noqa: E731
    num = lambda x: "   -  " if x is None else f"{x:6.2f}"  # noqa: E731
    lines = [f"{'':22}" + "".join(f"{m:>16}" for m in modes)]
    lines.append(f"{'accuracy (all)':22}" + "".join(f"{pct(report[m]['accuracy']):>16}" for m in modes))
    for d in sorted({d for m in modes for d in report[m]["accuracy_by_split"]}):
        lines.append(f"{'accuracy ' + d:22}" + "".join(f"{pct(report[m]['accuracy_by_split'].get(d)):>16}"
                                                      for m in modes))
    for q in qtypes:
        lines.append(f"{'  ' + q:22}" + "".join(f"{pct(report[m]['accuracy_by_qtype'].get(q)):>16}"
                                               for m in modes))
    for q in sorted({q for m in modes for q in report[m]["accuracy_single_object"]}):
        lines.append(f"{'  1 object: ' + q:22}" + "".join(
            f"{pct(report[m]['accuracy_single_object'].get(q)):>16}" for m in modes))
    keys = [k for k in report[modes[0]]["selectivity"]] or [k for k in report[modes[0]]["concentration"]]
    for metric in ("concentration", "selectivity", "mass"):
        for k in keys:
            lines.append(f"{metric[:5] + ' ' + k:22}" + "".join(f"{num(report[m][metric].get(k)):>16}"
                                                             for m in modes))
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..resolve import MODEL_HELP

    p.add_argument("model_dir", nargs="?", default=None, metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--index", required=True, help="ShapesQA index.jsonl (from `fvlm make-shapes`)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated modes to evaluate")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N records")
    p.add_argument("--qtypes", default=None, help="comma-separated question types (default: all)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", dest="json_out", default=None, help="also write the report as JSON here")
    p.add_argument("--device", default=None)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..hub import load

    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            raise InputError(f"unknown mode {m!r} in --modes; use {MODES}")
    model = load(args.model_dir, device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    records = read_index(args.index, args.limit, set(args.qtypes.split(",")) if args.qtypes else None)
    if model.architecture == "multi_token":  # B1 has no query, so no modes: one column
        report = {"multi_token": evaluate(model, records, modes[:1], args.batch_size)[modes[0]]}
    else:
        report = evaluate(model, records, modes, args.batch_size)
    print(format_report(report))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return 0
