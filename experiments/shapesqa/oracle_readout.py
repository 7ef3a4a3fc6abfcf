"""Can the LLM learn to read the frames for motion / position questions at all? An oracle test.

Each frame's visual token gets a signal added, and the LLM (with the signal's embedding, if it has
one) is fine-tuned on motion / position questions, with or without the look term (trainer/look.py).
`--signal` picks what the frames are given:
- answer: the answer word's own embedding (the answer is in every frame);
- boxes:  a new gaze embedding (fvlm/gaze.py) of the asked object's true box in each frame, i.e. a
          perfect gaze;
- gaze:   a new gaze embedding of the model's own gaze, as `gaze_embedding: true` gives it.
Reported on held-out questions: the answer word's cross-entropy with the frames as they are and with
the frames zeroed, and how often the answer word is the most likely of the answers seen. If the
frames are read, the first falls below the second.

    python -m experiments.shapesqa.oracle_readout [MODEL] --index data/shapes128selmp/test/index.jsonl \
        [--signal answer|boxes|gaze] [--gain 10] [--look 0,0.1] [--steps 100] [--lr 2e-3] \
        [--oracle 1.0] [--qtypes motion,position]

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
from fvlm.gaze import GazeEmbedding
from trainer.look import LookHooks, look_loss

BATCH = 16


def batches(model, records: list[dict], root: Path) -> list:
    """-> [(batch, its records)] in batches of BATCH."""
    out = []
    for i in range(0, len(records), BATCH):
        rs = records[i : i + BATCH]
        out.append((model.collate([model.sample(model.clip(str(root / r["video"])), r["question"], r["answer"],
                                                loss="answer") for r in rs]), rs))
    return out


def box_features(records: list[dict], frame_mask: torch.Tensor) -> torch.Tensor:
    """The asked object's true box per real frame -> [n_real, 6] laid out as the gaze embedding's
    input: centre x, y in [-1, 1], half width, height in frame units, and the centre's move since the
    previous frame (all 0 where the object is not in the frame; the move 0 without a previous one)."""
    rows = []
    for r, mask in zip(records, frame_mask):
        boxes = [b[r["target"]] for b in r["boxes"]]
        if len(boxes) != int(mask.sum()):
            raise ValueError(f"{r['clip']}: {len(boxes)} boxes for {int(mask.sum())} frames")
        prev = None
        for b in boxes:
            if b is None:
                rows.append([0.0] * 6)
                prev = None
                continue
            x0, y0, x1, y1 = (v / r["size"] for v in b)
            x, y = x0 + x1 - 1, y0 + y1 - 1
            move = [0.0, 0.0] if prev is None else [x - prev[0], y - prev[1]]
            rows.append([x, y, x1 - x0, y1 - y0, *move])
            prev = (x, y)
    return torch.tensor(rows)


def answer_ids(batch) -> torch.Tensor:
    """[B] the first target token of each row (the answer word)."""
    first = batch.suffix_targets.float().argmax(1)
    return batch.suffix_ids.gather(1, first[:, None])[:, 0]


class Oracle:
    """A forward hook on the projection into the LLM that adds `scale` x a signal to every real frame's
    token (rows are the real frames, row-major over [B, T]). signal "answer": the answer word's
    embedding; "boxes": a learned embedding (GazeEmbedding, trained with the LLM) of the asked
    object's true box in that frame, i.e. a perfect gaze; "gaze": no hook, the model's own gaze
    through a new GazeEmbedding that replaces the model's while the scale is not 0."""

    def __init__(self, model, scale: float, signal: str = "answer", gain: float = 1.0):
        self.model, self.scale, self.signal, self.rows = model, scale, signal, None
        self.embed = None
        if signal in ("boxes", "gaze"):
            self.embed = GazeEmbedding(model.llm.config.hidden_size, gain=gain)
        if signal != "gaze":
            model.dino_to_llm.register_forward_hook(self._add)

    def _add(self, module, args, out):
        if self.rows is None or self.scale == 0:
            return out
        rows = self.rows if self.embed is None else self.embed(self.rows)
        return out + self.scale / self.model.config.visual_scale * rows

    def set(self, batch, records: list[dict]) -> None:
        if self.signal == "gaze":  # the model's own gaze through its gaze embedding, on when scale > 0
            self.model.gaze_embed = self.embed if self.scale else None
            return
        if self.signal == "boxes":
            self.rows = box_features(records, batch.frame_mask)  # [n_real, 6]
            return
        ans = self.model.embed(answer_ids(batch))  # [B, d]
        self.rows = ans[:, None].expand(-1, batch.frame_mask.shape[1], -1)[batch.frame_mask].detach()


@torch.no_grad()
def score(model, oracle: Oracle, test: list, candidates: torch.Tensor) -> dict[str, float]:
    """Answer-word CE with the frames and with the visual tokens zeroed; accuracy among `candidates`."""
    model.eval()
    sums, n = {"ce_frames": 0.0, "ce_zeroed": 0.0, "hits": 0}, 0
    for batch, records in test:
        oracle.set(batch, records)
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
    ap.add_argument("model", nargs="?", default=None, help="a saved model (default: the shipped one)")
    ap.add_argument("--index", required=True, help="ShapesQA index.jsonl with motion / position questions")
    ap.add_argument("--look", default="0,0.1", help="look-term weights to try, comma-separated")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--oracle", type=float, default=1.0, help="scale of the answer embedding in each frame")
    ap.add_argument("--signal", choices=("answer", "boxes", "gaze"), default="answer",
                    help="what each frame's token is given: the answer word's embedding, a learned "
                         "embedding of the asked object's true box (a perfect gaze), or the model's own "
                         "gaze through a new gaze embedding (fvlm/gaze.py)")
    ap.add_argument("--gain", type=float, default=10.0,
                    help="the gaze embedding's output gain (boxes, gaze; the model's is 10)")
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
        model = fvlm.load(args.model)
        model.train()
        hooks = LookHooks(model.llm)
        oracle = Oracle(model, 0.0, args.signal, args.gain)
        train, test = batches(model, records[:cut], root), batches(model, records[cut:], root)
        candidates = torch.unique(torch.cat([answer_ids(b) for b, _ in train]))
        rows = {"step 0, no oracle": score(model, oracle, test, candidates)}
        oracle.scale = args.oracle
        rows["step 0, oracle"] = score(model, oracle, test, candidates)
        params = [p for n, p in model.named_parameters() if n.startswith("llm.")]
        params += [] if oracle.embed is None else list(oracle.embed.parameters())
        opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
        for step in range(args.steps):
            batch, recs = train[step % len(train)]
            oracle.set(batch, recs)
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
