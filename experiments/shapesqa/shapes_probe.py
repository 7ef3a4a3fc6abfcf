"""Linear probes on a model's vision encoder: does it see each object's shape and colour?

A ShapesQA answer needs two things: the encoder must put the asked-about property into the patch
features, and the query + LLM must read it out. This separates them. For every visible object in
every sampled frame of a ShapesQA test set, the encoder's final patch features are averaged over
the patches its box covers, each weighted by the fraction of it the box covers (objects covering
less than a quarter patch in all are left out; the trainer's object head pools the same way), and a
multinomial logistic regression (standardised features, L2, L-BFGS) is fitted to the object's
shape and to its colour on 3/4 of the clips and scored on the rest (split by clip, so no clip is
in both). Two references come with it:

- `pixels`: the input crop of the object's box, resized to 12 x 12 -- what a linear read-out of the
  raw pixels gets when the box is given;
- `random`: the same encoder architecture with fresh random weights -- what training added.

If `pixels` is high and the trained encoder is no better than `random`, the encoder has not learned
the property and no amount of foveation can answer questions about it.

For a foveated model it then probes the read-out: the frame's one visual token (the vector the LLM
reads, before its projection), for every shape / colour question and every frame where the object
asked about is visible, labelled with that object's shape and colour:

- `token (fine)`: the token of the coarse_fine query made from the question, as the model answers;
- `token (coarse)`: the token of the static coarse query, the same for every question.

If the encoder sees a property but the fine token does not carry it, the gaze or the query's
read-out loses it before the LLM can answer.

    python -m experiments.shapesqa.shapes_probe [MODEL_DIR] --index data/shapes128e/test/index.jsonl [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from fvlm.progress import track
from fvlm.shapesqa.generate import COLORS, SHAPES
from fvlm.shapesqa.score import MIN_COVERAGE, box_mask, patch_coverage, read_index

PIXELS = 12  # side of the raw-pixel reference crop


@torch.no_grad()
def object_features(model, records: list[dict], progress: bool = True) -> dict:
    """Per visible object-frame: box-pooled encoder features for each encoder, the raw-pixel crop,
    shape and colour labels and the clip's number. Returns arrays keyed by name."""
    from transformers import Dinov2Model

    clips: dict[str, dict] = {}
    for r in records:
        clips.setdefault(r["video"], r)
    torch.manual_seed(0)
    encoders = {"trained": model.vision_model, "random": Dinov2Model(model.vision_model.config)}
    encoders = {k: e.to(model.device).eval() for k, e in encoders.items()}
    p = model.vision_model.config.patch_size
    out: dict[str, list] = {"trained": [], "random": [], "pixels": [], "shape": [], "color": [], "clip": []}
    clip_items = track(clips.items(), "probe features", unit="clips", disable=not progress)
    for ci, (video, r) in enumerate(clip_items):
        batch = model.collate([model.sample(model.clip(video), "-")], for_generation=True)
        px = batch.pixel_values[0].to(model.device, model.dtype)  # [T, 3, s, s]
        T, s = px.shape[0], px.shape[-1]
        if len(r["boxes"]) != T:
            raise ValueError(f"{video}: {T} sampled frames but the index has boxes for {len(r['boxes'])}")
        g = s // p
        feats = {k: e(pixel_values=px).last_hidden_state[:, 1:].float().cpu().numpy()
                 for k, e in encoders.items()}  # [T, g * g, D] each (CLS dropped)
        pix = px.float().cpu().numpy().transpose(0, 2, 3, 1)  # [T, s, s, 3]
        for t in range(T):
            for o, obj in enumerate(r["objects"]):
                if not r["visible"][t][o]:
                    continue
                box = torch.tensor([r["boxes"][t][o]], dtype=torch.float64) * (s / r["size"])  # frames are square
                w = patch_coverage(box, g, p)[0].numpy()  # [g * g]
                if w.sum() < MIN_COVERAGE:
                    continue
                mask = box_mask(r["boxes"][t][o], (0, 0), r["size"])  # [S, S]
                for k, f in feats.items():
                    out[k].append(w @ f[t] / w.sum())
                ys, xs = np.nonzero(cv2.resize(mask.astype(np.uint8), (s, s), interpolation=cv2.INTER_NEAREST))
                crop = pix[t, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
                out["pixels"].append(cv2.resize(crop, (PIXELS, PIXELS), interpolation=cv2.INTER_AREA).reshape(-1))
                out["shape"].append(SHAPES.index(obj["shape"]))
                out["color"].append(list(COLORS).index(obj["color"]))
                out["clip"].append(ci)
    return {k: np.asarray(v) for k, v in out.items()}


@torch.no_grad()
def token_features(model, records: list[dict], progress: bool = True) -> dict:
    """Per (shape / colour question, frame where its target is visible): the fine and coarse visual
    tokens, the target's shape and colour, and the clip's number. Returns arrays keyed by name."""
    records = [r for r in records if r["qtype"] in ("shape", "color") and r.get("target") is not None]
    clips = {v: i for i, v in enumerate(dict.fromkeys(r["video"] for r in records))}
    out: dict[str, list] = {"token_fine": [], "token_coarse": [], "shape": [], "color": [], "clip": []}
    for r in track(records, "probe tokens", unit="questions", disable=not progress):
        batch = model.collate([model.sample(model.clip(r["video"]), r["question"])], for_generation=True)
        batch = batch.to(model.device)
        tokens = {k: model(batch, mode=mode, return_tokens=True).tokens.float().cpu().numpy()  # [T, D]
                  for k, mode in (("token_fine", "coarse_fine"), ("token_coarse", "coarse_only"))}
        if len(r["visible"]) != len(tokens["token_fine"]):
            raise ValueError(f"{r['video']}: {len(tokens['token_fine'])} sampled frames but the index has "
                             f"{len(r['visible'])}")
        obj = r["objects"][r["target"]]
        for t, seen in enumerate(r["visible"]):
            if seen[r["target"]]:
                for k, z in tokens.items():
                    out[k].append(z[t])
                out["shape"].append(SHAPES.index(obj["shape"]))
                out["color"].append(list(COLORS).index(obj["color"]))
                out["clip"].append(clips[r["video"]])
    return {k: np.asarray(v) for k, v in out.items()}


def linear_probe(x: np.ndarray, y: np.ndarray, train: np.ndarray, classes: int, l2: float = 1e-3) -> float:
    """Test accuracy of a multinomial logistic regression fitted on x[train] ([n, D] features)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y)
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    x = (x - mu) / sd
    w = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x[train] @ w + b, y[train]) + l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((x[~train] @ w + b).argmax(1) == y[~train]).double().mean())


def probe(model, records: list[dict], progress: bool = True) -> dict:
    """{feature: {"shape": acc, "color": acc}} plus the majority-class rates and the counts."""
    d = object_features(model, records, progress)
    if len(d["clip"]) == 0:
        raise ValueError("no visible objects in these records")
    train = d["clip"] % 4 != 0  # clip-wise split: 3/4 fit, 1/4 scored
    if train.all() or not train.any():
        raise ValueError("need at least 2 clips (one is held out of every 4)")
    n_cls = {"shape": len(SHAPES), "color": len(COLORS)}
    report = {k: {lab: linear_probe(d[k], d[lab], train, n_cls[lab]) for lab in n_cls}
              for k in ("trained", "random", "pixels")}
    report["majority"] = {lab: float(np.bincount(d[lab][~train]).max() / (~train).sum()) for lab in n_cls}
    report["n_train"], report["n_test"] = int(train.sum()), int((~train).sum())
    if model.architecture == "foveated":
        tok = token_features(model, records, progress)
        train = tok["clip"] % 4 != 0
        if train.any() and not train.all():
            for k in ("token_fine", "token_coarse"):
                report[k] = {lab: linear_probe(tok[k], tok[lab], train, n_cls[lab]) for lab in n_cls}
            report["token_majority"] = {lab: float(np.bincount(tok[lab][~train]).max() / (~train).sum())
                                        for lab in n_cls}
            report["token_n_train"], report["token_n_test"] = int(train.sum()), int((~train).sum())
    return report


def format_report(report: dict) -> str:
    lines = [f"{'features':22}{'shape':>10}{'colour':>10}"]
    for k, label in (("trained", "encoder (trained)"), ("random", "encoder (random init)"),
                     ("pixels", f"raw pixels {PIXELS}x{PIXELS}"), ("majority", "majority class")):
        lines.append(f"{label:22}{100 * report[k]['shape']:9.1f}%{100 * report[k]['color']:9.1f}%")
    lines.append(f"object-frames: {report['n_train']} fit / {report['n_test']} scored (held-out clips)")
    if "token_fine" in report:
        for k, label in (("token_fine", "token (fine)"), ("token_coarse", "token (coarse)"),
                         ("token_majority", "majority class")):
            lines.append(f"{label:22}{100 * report[k]['shape']:9.1f}%{100 * report[k]['color']:9.1f}%")
        lines.append(f"question-frames: {report['token_n_train']} fit / {report['token_n_test']} scored "
                     "(the token read for a shape / colour question, labelled with its object)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.shapesqa.shapes_probe", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", nargs="?", default=None, help="model directory (default: shipped model)")
    ap.add_argument("--index", required=True, help="ShapesQA index.jsonl with videos (`fvlm make-shapes`)")
    ap.add_argument("--limit", type=int, default=None, help="use the first N records")
    ap.add_argument("--json", dest="json_out", default=None, help="also write the report as JSON here")
    args = ap.parse_args(argv)
    import fvlm

    model = fvlm.load(args.model_dir)
    report = probe(model, read_index(args.index, args.limit))
    print(format_report(report))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
