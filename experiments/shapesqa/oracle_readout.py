"""Can the LLM learn to read the frames for motion / position questions at all? An oracle test.

Each frame's visual token gets the answer word's own embedding added (an oracle: the answer is in
every frame), and the LLM alone is fine-tuned on motion / position questions, with or without the
look term (trainer/look.py). Reported on held-out questions: the answer word's cross-entropy with
the frames as they are and with the frames zeroed, and how often the answer word is the most likely
of the answers seen. If the frames are read, the first falls below the second.

    python -m experiments.shapesqa.oracle_readout --index data/shapes128selmp/test/index.jsonl \
        [--look 0,0.1] [--steps 100] [--lr 2e-3] [--oracle 1.0] [--qtypes motion,position]

Before any training (step 0) the same numbers without the oracle show whether the shipped model's
answer depends on its frames, per question type (`--qtypes color --look 0 --steps 0` on an index of
the full mix; experiments/shapesqa/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

import fvlm
from trainer.look import LookHooks, look_loss

BATCH = 16


def batches(model, records: list[dict], root: Path) -> list:
    out = []
    for i in range(0, len(records), BATCH):
        rs = records[i : i + BATCH]
        out.append(model.collate([model.sample(model.clip(str(root / r["video"])), r["question"], r["answer"],
                                               loss="answer") for r in rs]))
    return out


def answer_ids(batch) -> torch.Tensor:
    """[B] the first target token of each row (the answer word)."""
    first = batch.suffix_targets.float().argmax(1)
    return batch.suffix_ids.gather(1, first[:, None])[:, 0]


class Oracle:
    """A forward hook on the projection into the LLM that adds `scale` x the answer word's embedding to
    every real frame's token (rows are the real frames, row-major over [B, T])."""

    def __init__(self, model, scale: float):
        self.model, self.scale, self.rows = model, scale, None
        model.dino_to_llm.register_forward_hook(self._add)

    def _add(self, module, args, out):
        if self.rows is None or self.scale == 0:
            return out
        return out + self.scale / self.model.config.visual_scale * self.rows

    def set(self, batch) -> None:
        ans = self.model.embed(answer_ids(batch))  # [B, d]
        self.rows = ans[:, None].expand(-1, batch.frame_mask.shape[1], -1)[batch.frame_mask].detach()


@torch.no_grad()
def score(model, oracle: Oracle, test: list, candidates: torch.Tensor) -> dict[str, float]:
    """Answer-word CE with the frames and with the visual tokens zeroed; accuracy among `candidates`."""
    model.eval()
    sums, n = {"ce_frames": 0.0, "ce_zeroed": 0.0, "hits": 0}, 0
    for batch in test:
        oracle.set(batch)
        inp, _, _ = model.read_frames_coarse(batch, model.encode_frames(batch), "coarse_fine", False,
                                             lambda i: model.decoder(i.embeds, i.mask, i.position_ids))
        first = (inp.labels != -100).float().argmax(1)  # the position predicting the answer word
        rows = torch.arange(len(first))
        target = inp.labels[rows, first]
        P, T = batch.prefix_ids.shape[1], batch.frame_mask.shape[1]
        for key, embeds in (("ce_frames", inp.embeds), ("ce_zeroed", inp.embeds.index_fill(1, torch.arange(P, P + T), 0.0))):
            h = model.decoder(embeds, inp.mask, inp.position_ids)[rows, first]
            logits = model.llm.get_output_embeddings()(h).float()
            sums[key] += F.cross_entropy(logits, target, reduction="sum").item()
            if key == "ce_frames":
                sums["hits"] += int((candidates[logits[:, candidates].argmax(1)] == target).sum())
        n += len(target)
    model.train()
    return {"ce_frames": sums["ce_frames"] / n, "ce_zeroed": sums["ce_zeroed"] / n, "accuracy": sums["hits"] / n}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", required=True, help="ShapesQA index.jsonl with motion / position questions")
    ap.add_argument("--look", default="0,0.1", help="look-term weights to try, comma-separated")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--oracle", type=float, default=1.0, help="scale of the answer embedding in each frame")
    ap.add_argument("--qtypes", default="motion,position", help="question types to use, comma-separated")
    ap.add_argument("--json", help="also write the report here")
    args = ap.parse_args(argv)
    root = Path(args.index).parent
    lines = Path(args.index).read_text().splitlines()
    records = [r for r in map(json.loads, lines) if r["qtype"] in args.qtypes.split(",")]
    cut = len(records) * 4 // 5
    report = {}
    for weight in [float(w) for w in args.look.split(",")]:
        torch.manual_seed(0)
        model = fvlm.load(None)
        model.train()
        hooks = LookHooks(model.llm)
        oracle = Oracle(model, 0.0)
        train, test = batches(model, records[:cut], root), batches(model, records[cut:], root)
        candidates = torch.unique(torch.cat([answer_ids(b) for b in train]))
        rows = {"step 0, no oracle": score(model, oracle, test, candidates)}
        oracle.scale = args.oracle
        rows["step 0, oracle"] = score(model, oracle, test, candidates)
        opt = torch.optim.AdamW([p for n, p in model.named_parameters() if n.startswith("llm.")], lr=args.lr,
                                weight_decay=0.0)
        for step in range(args.steps):
            batch = train[step % len(train)]
            oracle.set(batch)
            with hooks.recording():
                out = model(batch, mode="coarse_fine", return_hidden=True)
                look, _ = look_loss(hooks.last_pass(), out.labels, batch)
            opt.zero_grad()
            (out.text.loss + weight * look).backward()
            opt.step()
        if args.steps:
            rows[f"after {args.steps} steps, oracle"] = score(model, oracle, test, candidates)
        report[f"look {weight}"] = rows
        for name, r in rows.items():
            print(f"look weight {weight}: {name:28s} answer CE {r['ce_frames']:.3f} with frames, "
                  f"{r['ce_zeroed']:.3f} zeroed; accuracy {r['accuracy']:.1%}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
