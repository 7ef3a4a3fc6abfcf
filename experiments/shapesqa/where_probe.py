"""Motion and position: is the answer in the gaze, and does the LLM look at the frames to give it?

Two diagnostics for ShapesQA's "where" questions (experiments/shapesqa/RESULTS.md, "Where and which
way"):

- `gaze`: for every motion / position question of the index, the 8 frames' gaze numbers of the
  model's attention map (centre x, y and spread x, y, fvlm.gaze.gaze_features; the last frame
  repeated when a clip has fewer), and linear classifiers of the answer, fitted on the first half of
  the questions and scored on the second: from all 32 numbers, from their mean over the frames and
  from the mean frame-to-frame change. High accuracy: the query looks at the object and "where" can
  be read from where it looked.
- `llm`: the attention of the LLM position that predicts the answer onto the visual tokens, per
  LLM layer (head mean), per question type, in coarse_fine. Low mass for a question type: the LLM
  answers it without looking at the frames.

    python -m experiments.shapesqa.where_probe [MODEL] --gaze-index data/shapes128selmp/test/index.jsonl \
        --llm-index data/shapes128sel/test/index.jsonl
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import torch
import torch.nn.functional as F

import fvlm
from fvlm.gaze import gaze_features

FRAMES = 8  # ShapesQA clips: 8 s at the model's 1 fps


def read_index(path: str) -> tuple[list[dict], Path]:
    return [json.loads(line) for line in open(path)], Path(path).parent


def gaze_probe(model, index: str, mode: str) -> dict[str, dict[str, float]]:
    """Held-out accuracy of a linear read-out of motion / position answers from the gaze numbers."""
    records, root = read_index(index)
    feats, answers, qtypes = [], [], []
    for r in records:
        if r["qtype"] not in ("motion", "position"):
            continue
        out = model.generate(str(root / r["video"]), r["question"], mode=mode, max_new_tokens=1)
        maps = torch.as_tensor(out.attention)  # [n, gh, gw], sums to 1 per frame
        n, gh, gw = maps.shape
        probs = torch.cat([torch.zeros(n, 1), maps.reshape(n, -1)], 1)[:, None, None]  # [n, 1, 1, 1+N]
        g = gaze_features(probs, 0, (gh, gw))  # [n, 4]
        g = torch.cat([g, g[-1:].expand(FRAMES - n, -1)]) if n < FRAMES else g[:FRAMES]
        feats.append(g.flatten())
        answers.append(r["answer"])
        qtypes.append(r["qtype"])
    g_all = torch.stack(feats).view(-1, FRAMES, 4)  # [Q, 8, 4]
    readouts = {  # what each read-out sees of the 8 frames' gaze
        "all_frames": g_all.flatten(1),  # all 32 numbers
        "frame_mean": g_all.mean(1),  # [Q, 4]: what an even look over per-frame embeddings gets
        "step_mean": (g_all[:, 1:] - g_all[:, :-1]).mean(1),  # [Q, 4]: the mean frame-to-frame change
    }
    report = {}
    for q in ("motion", "position"):
        idx = [i for i, t in enumerate(qtypes) if t == q]
        labels = sorted({answers[i] for i in idx})
        y = torch.tensor([labels.index(answers[i]) for i in idx])
        h = len(idx) // 2
        majority = max(float((y[h:] == k).float().mean()) for k in range(len(labels)))
        report[q] = {"majority": majority, "held_out": len(idx) - h, "fit": h}
        for name, x_all in readouts.items():
            report[q][name] = linear_probe(x_all[idx], y, h, len(labels))
    return report


def linear_probe(x: torch.Tensor, y: torch.Tensor, h: int, classes: int) -> float:
    """Accuracy on x[h:] of a linear classifier fitted on x[:h] (features standardised on the fit half)."""
    mu, sd = x[:h].mean(0), x[:h].std(0).clamp_min(1e-6)
    x = (x - mu) / sd
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(500):
        opt.zero_grad()
        (F.cross_entropy(x[:h] @ w + b, y[:h]) + 1e-3 * w.pow(2).sum()).backward()
        opt.step()
    with torch.no_grad():
        return float(((x[h:] @ w + b).argmax(1) == y[h:]).float().mean())


def llm_visual_attention(model, index: str, per_type: int) -> dict[str, list[float]]:
    """Per question type: the answer-predicting position's attention mass on the visual tokens, per LLM layer."""
    model.llm.set_attn_implementation("eager")  # attention weights are returned by the eager path only
    records, root = read_index(index)
    mass, seen = collections.defaultdict(list), collections.Counter()
    for r in records:
        if r["qtype"] == "caption" or seen[r["qtype"]] >= per_type:
            continue
        seen[r["qtype"]] += 1
        batch = model.collate([model.sample(model.clip(str(root / r["video"])), r["question"])], for_generation=True)
        with torch.no_grad():
            cache = model.encode_frames(batch)
            inp, _, _ = model.read_frames_coarse(batch, cache, "coarse_fine", False,
                                                 lambda i: model.decoder(i.embeds, i.mask, i.position_ids))
            out = model.llm.model(inputs_embeds=inp.embeds, attention_mask=inp.mask.long(),
                                  position_ids=inp.position_ids, output_attentions=True)
        P, T = batch.prefix_ids.shape[1], batch.frame_mask.shape[1]
        last = torch.stack(out.attentions)[:, 0, :, -1]  # [layers, heads, L] from the last position
        mass[r["qtype"]].append(last[..., P:P + T].sum(-1).mean(1))  # [layers]
    return {q: torch.stack(v).mean(0).tolist() for q, v in sorted(mass.items())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default=None, help="a saved model (default: the shipped one)")
    ap.add_argument("--gaze-index", help="ShapesQA index.jsonl with motion / position questions")
    ap.add_argument("--llm-index", help="ShapesQA index.jsonl with every question type")
    ap.add_argument("--modes", default="coarse_fine,autoregressive", help="modes of the gaze probe")
    ap.add_argument("--per-type", type=int, default=30, help="questions per type for --llm-index")
    ap.add_argument("--json", help="also write the report here")
    args = ap.parse_args(argv)
    if not (args.gaze_index or args.llm_index):
        ap.error("give --gaze-index, --llm-index or both")
    model = fvlm.load(args.model)
    report = {}
    if args.gaze_index:
        for mode in args.modes.split(","):
            report[f"gaze/{mode}"] = r = gaze_probe(model, args.gaze_index, mode)
            for q, v in r.items():
                print(f"gaze probe, {mode:14s} {q:8s}: all frames {v['all_frames']:.1%}, frame mean "
                      f"{v['frame_mean']:.1%}, step mean {v['step_mean']:.1%} on {v['held_out']} held out "
                      f"(fit on {v['fit']}); majority {v['majority']:.1%}")
    if args.llm_index:
        report["llm_visual_attention"] = r = llm_visual_attention(model, args.llm_index, args.per_type)
        for q, v in r.items():
            print(f"LLM attention on the frames, {q:9s}: " + " ".join(f"{x:.2f}" for x in v))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
