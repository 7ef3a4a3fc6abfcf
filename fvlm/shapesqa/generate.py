"""ShapesQA: procedural videos of moving coloured shapes, with questions whose answers need looking.

Each clip shows 1-8 shapes (circle, square, triangle, star, diamond, cross) in 8 colours moving
over a low-contrast textured background; some bounce off the walls, some travel straight and enter
or leave the frame. Two difficulties:

- easy: 1-3 medium/large shapes; one visual token can hold the whole scene.
- hard: 5-8 small/medium shapes, each with a digit drawn on it, colours and shapes drawn from a
  small pool so distractors share an attribute ("the red triangle" needs both words). One token
  cannot hold everything, so the model has to look at the right object.

Question types (`QTYPES`): caption, color, shape, motion, position, count, first, digit (hard).
Every clip gets one question per valid type and `per_clip` of those become samples. To balance the
answer distributions, each type's answer is the valid one least used so far in the run (so clip i's
questions depend on clips 0..i-1; still deterministic).

Layout written by `make_shapes(out, n, seed, split, subset)` (the CLI does train, val and test):

    out/<subset>/shapes-<subset>-000000.tar   webdataset shards, one sample per (clip, question):
        KEY.json      {"user", "assistant", "source": "shapesqa/<easy|hard>/<qtype>", "frame_count",
                       "qtype", "target", "targets", "split", "difficulty", "clip", "size",
                       "frame_indices", "timestamps", "boxes", "visible", "objects"}
        KEY.000.jpg   the sampled frames (same rule as the model's sampler), RGB JPEG, size x size
    out/<subset>/videos/<clip>.mp4            the clip at its native fps (mp4v)
    out/<subset>/index.jsonl                   one line per sample: "video" (relative path),
                                               "question", "answer" and the same ground truth
    out/<subset>/clips.jsonl                   one line per clip: boxes, velocities and visibility
                                               of every object at every native frame

`boxes[f][i]` is object i's box [x0, y0, x1, y1] in pixels clipped to the frame at sampled frame f
(null when fully outside); `visible[f][i]` is true when at least half of the box is inside.
Clip seeds come from (seed, subset, split, clip index), so train/val/test never share a clip, and
the same arguments give byte-identical frames and records.
"""

import argparse
import json
import multiprocessing
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from ..errors import ConfigError
from ..progress import track
from ..video import sample_indices  # the model's own sampler: shard frames == eval frames

# ----------------------------------------------------------------------------- vocabulary

COLORS = {  # RGB, saturated so they stand out from the grey-ish background
    "red": (230, 30, 30), "green": (30, 190, 40), "blue": (40, 90, 255), "yellow": (250, 225, 20),
    "purple": (165, 50, 220), "orange": (255, 135, 0), "white": (245, 245, 245), "cyan": (0, 215, 225),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")
PLURALS = {s: s + ("es" if s == "cross" else "s") for s in SHAPES}
SIZES = {"small": 0.14, "medium": 0.19, "large": 0.27}  # box side as a fraction of the frame side
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
QTYPES = ("caption", "color", "shape", "motion", "position", "count", "first", "digit")
SPLITS = ("easy", "hard", "mix")
SUBSETS = ("train", "val", "test")
CAPTION_PROMPTS = ("Describe the video.", "Write a brief caption for this video.",
                   "What happens in this video?")
MIN_SIZE = 32


def _unit_polygons() -> dict[str, np.ndarray]:
    """Vertices (K, 2) of each polygonal shape, scaled so the bounding box is exactly [-1, 1]^2."""
    a = np.linspace(0, 2 * np.pi, 10, endpoint=False) - np.pi / 2
    star = np.stack([np.cos(a), np.sin(a)], 1) * np.where(np.arange(10) % 2 == 0, 1.0, 0.45)[:, None]
    w = 0.36  # half width of the cross arms
    polys = {
        "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
        "triangle": [(0, -1), (1, 1), (-1, 1)],
        "diamond": [(0, -1), (1, 0), (0, 1), (-1, 0)],
        "cross": [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w),
                  (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)],
        "star": star,
    }
    out = {}
    for name, p in polys.items():
        p = np.asarray(p, dtype=np.float64)
        lo, hi = p.min(0), p.max(0)
        out[name] = (p - lo) / (hi - lo) * 2 - 1
    return out


POLYGONS = _unit_polygons()
DIGIT_CENTER = {"triangle": 0.35}  # the digit sits lower on a triangle (y offset in half-sides)

# ----------------------------------------------------------------------------- scenes


@dataclass
class Obj:
    """One shape. Its centre moves as pos + vel * t, reflected off the walls when `bounce`."""

    color: str
    shape: str
    size: str  # small / medium / large
    side: float  # box side in px
    pos: tuple[float, float]  # centre (x, y) in px at t = 0, may be outside the frame
    vel: tuple[float, float]  # px/s
    bounce: bool = True
    digit: int | None = None


@dataclass
class Scene:
    size: int  # frame side in px
    seconds: float
    fps: int  # native fps of the mp4
    difficulty: str  # easy / hard
    objects: list[Obj]
    background: np.ndarray = field(repr=False)  # (S, S, 3) uint8 RGB

    @property
    def num_frames(self) -> int:
        return max(1, int(round(self.seconds * self.fps)))


@dataclass
class Track:
    """Ground truth of a scene at its native frames (T frames, N objects)."""

    times: np.ndarray  # (T,) seconds
    centers: np.ndarray  # (T, N, 2) px
    velocity: np.ndarray  # (T, N, 2) px/s
    boxes: np.ndarray  # (T, N, 4) x0, y0, x1, y1 in px, not clipped
    inside: np.ndarray  # (T, N) fraction of the box inside the frame
    occluded: np.ndarray  # (T, N) box overlaps an object drawn later (on top)

    @property
    def visible(self) -> np.ndarray:  # (T, N) at least half of the object is in the frame
        return self.inside >= 0.5


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-contrast smooth noise, stripes or gradient in two random greyish colours. (S, S, 3) uint8."""
    yy, xx = np.mgrid[0:size, 0:size] / size  # (S, S) each
    kind = rng.integers(3)
    theta = rng.uniform(0, np.pi)
    proj = xx * np.cos(theta) + yy * np.sin(theta)
    if kind == 0:
        k = int(rng.integers(3, 8))
        f = cv2.resize(rng.random((k, k)), (size, size), interpolation=cv2.INTER_CUBIC)
    elif kind == 1:
        f = 0.5 + 0.5 * np.sin(2 * np.pi * proj / rng.uniform(0.08, 0.3) + rng.uniform(0, 2 * np.pi))
    else:
        f = (proj - proj.min()) / (np.ptp(proj) + 1e-9)
    c0 = rng.uniform(60, 130) + rng.uniform(-25, 25, 3)  # (3,)
    c1 = c0 + rng.uniform(-40, 40, 3)
    img = c0 + np.clip(f, 0, 1)[..., None] * (c1 - c0) + rng.normal(0, 2.5, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _positions(o: Obj, times: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres and velocities (T, 2) of one object; bouncing is a closed-form reflection."""
    p = np.asarray(o.pos) + np.asarray(o.vel) * times[:, None]  # (T, 2)
    v = np.broadcast_to(np.asarray(o.vel, dtype=np.float64), p.shape).copy()
    if o.bounce:
        span = size - o.side  # range of the box's top-left corner
        u = np.mod(p - o.side / 2, 2 * span)
        p = span - np.abs(u - span) + o.side / 2
        v = np.where(u < span, v, -v)
    return p, v


def compute_track(scene: Scene) -> Track:
    """Per-native-frame ground truth of every object."""
    times = np.arange(scene.num_frames) / scene.fps  # (T,)
    pv = [_positions(o, times, scene.size) for o in scene.objects]
    centers = np.stack([p for p, _ in pv], 1)  # (T, N, 2)
    velocity = np.stack([v for _, v in pv], 1)  # (T, N, 2)
    half = np.array([o.side / 2 for o in scene.objects])[None, :, None]  # (1, N, 1)
    boxes = np.concatenate([centers - half, centers + half], -1)  # (T, N, 4)
    clipped = np.clip(boxes, 0, scene.size)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    inside = area(clipped) / area(boxes)  # (T, N)
    lo = np.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])  # (T, N, N, 2) pairwise overlap
    hi = np.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    overlap = np.all(hi > lo, -1) & np.triu(np.ones((len(scene.objects),) * 2, dtype=bool), 1)
    return Track(times, centers, velocity, boxes, inside, overlap.any(-1))


def _sample_motion(rng: np.random.Generator, side: float, size: int, seconds: float) -> dict:
    """Bouncing (50%), entering from an edge (30%) or moving straight and maybe leaving (20%)."""
    mode = rng.choice(3, p=[0.5, 0.3, 0.2])
    if mode == 1:
        edge = int(rng.integers(4))  # 0 left, 1 right, 2 top, 3 bottom: the side it enters from
        speed, t_enter = rng.uniform(0.08, 0.16) * size, rng.uniform(0.3, 0.45 * seconds)
        ang = [0.0, np.pi, np.pi / 2, -np.pi / 2][edge] + rng.uniform(-0.5, 0.5)
        vel = speed * np.array([np.cos(ang), np.sin(ang)])
        along = rng.uniform(side / 2, size - side / 2)
        out = (-side / 2, size + side / 2)[edge % 2]  # just outside that edge
        at_edge = np.array((out, along) if edge < 2 else (along, out))
        return dict(pos=tuple(at_edge - vel * t_enter), vel=tuple(vel), bounce=False)
    ang, speed = rng.uniform(0, 2 * np.pi), rng.uniform(0.04, 0.15) * size
    pos = rng.uniform(side / 2, size - side / 2, 2)
    return dict(pos=tuple(pos), vel=(speed * np.cos(ang), speed * np.sin(ang)), bounce=bool(mode == 0))


def sample_scene(rng: np.random.Generator, difficulty: str, size: int = 128, seconds: float = 8.0,
                 fps: int = 8, max_frames: int = 64) -> Scene:
    """A random scene; every object is visible in at least 2 of the sampled frames (when it can)."""
    hard = difficulty == "hard"
    if hard:  # attributes from a small pool: distractors share a colour or a shape
        n = int(rng.integers(5, 9))
        pool_c = rng.choice(len(COLORS), int(rng.integers(3, 5)), replace=False)
        pool_s = rng.choice(len(SHAPES), int(rng.integers(3, 5)), replace=False)
        pairs = rng.choice(len(pool_c) * len(pool_s), n, replace=False)
        colors, shapes = pool_c[pairs // len(pool_s)], pool_s[pairs % len(pool_s)]
        digits = rng.choice(10, n, replace=False)
    else:  # distinct colours; m objects share a shape (m uniform in 1..n) so counts vary
        n = int(rng.choice([1, 2, 3], p=[0.2, 0.35, 0.45]))
        colors = rng.choice(len(COLORS), n, replace=False)
        m, pool_s = int(rng.integers(1, n + 1)), rng.choice(len(SHAPES), n, replace=False)
        shapes = rng.permutation(np.concatenate([np.full(m, pool_s[0]), pool_s[1:n - m + 1]]))
        digits = [None] * n
    size_names = ("small", "medium") if hard else ("medium", "large")
    sampled = sample_indices(int(round(seconds * fps)), fps, max_frames=max_frames)
    scene = Scene(size, seconds, fps, "hard" if hard else "easy", [], _background(rng, size))
    for c, s, d in zip(colors, shapes, digits):
        size_name = size_names[rng.integers(2)]
        side = SIZES[size_name] * size * rng.uniform(0.9, 1.1)
        for _ in range(50):  # rejection: visible in >= 2 sampled frames, not on top of another at t=0
            o = Obj(list(COLORS)[c], SHAPES[s], size_name, side, digit=None if d is None else int(d),
                    **_sample_motion(rng, side, size, seconds))
            track = compute_track(Scene(size, seconds, fps, scene.difficulty, [*scene.objects, o],
                                        scene.background))
            b = track.boxes[0]  # (N, 4) at t = 0; the new object is the last
            clash = np.all(np.minimum(b[:-1, 2:], b[-1, 2:]) > np.maximum(b[:-1, :2], b[-1, :2]), -1).any()
            if track.visible[sampled, -1].sum() >= min(2, len(sampled)) and not clash:
                break
        scene.objects.append(o)
    return scene

# ----------------------------------------------------------------------------- rendering


def _draw(img: np.ndarray, o: Obj, center: np.ndarray, color: tuple[int, ...], digit: bool = True) -> None:
    """Draws one object in place, anti-aliased with 4 bits of sub-pixel precision."""
    c16 = np.round(center * 16).astype(np.int32)
    if o.shape == "circle":
        cv2.circle(img, (int(c16[0]), int(c16[1])), int(round(o.side * 8)), color, -1, cv2.LINE_AA, shift=4)
    else:
        pts = np.round((center + POLYGONS[o.shape] * o.side / 2) * 16).astype(np.int32)
        cv2.fillPoly(img, [pts], color, cv2.LINE_AA, shift=4)
    if digit and o.digit is not None:
        ink = (0, 0, 0) if np.dot(COLORS[o.color], (0.299, 0.587, 0.114)) > 140 else (255, 255, 255)
        thick = max(1, int(round(o.side / 18)))
        scale = 0.5 * o.side / cv2.getTextSize("0", cv2.FONT_HERSHEY_SIMPLEX, 1.0, thick)[0][1]
        (w, h), _ = cv2.getTextSize(str(o.digit), cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        y = center[1] + DIGIT_CENTER.get(o.shape, 0) * o.side / 2 + h / 2
        org = (int(round(center[0] - w / 2)), int(round(y)))
        cv2.putText(img, str(o.digit), org, cv2.FONT_HERSHEY_SIMPLEX, scale, ink, thick, cv2.LINE_AA)


def render(scene: Scene, track: Track, indices: np.ndarray) -> np.ndarray:
    """RGB frames (F, S, S, 3) uint8 at the given native frame indices; objects drawn in index order."""
    frames = np.repeat(scene.background[None], len(indices), 0)
    for f, t in enumerate(indices):
        for i, o in enumerate(scene.objects):
            if track.inside[t, i] > 0:
                _draw(frames[f], o, track.centers[t, i], COLORS[o.color])
    return frames


def object_mask(scene: Scene, track: Track, t: int, i: int) -> np.ndarray:
    """(S, S) bool: pixels fully covered by object i's body (digit excluded) at native frame t."""
    mask = np.zeros((scene.size, scene.size), np.uint8)
    _draw(mask, scene.objects[i], track.centers[t, i], (255,), digit=False)
    return mask == 255

# ----------------------------------------------------------------------------- questions


def _article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _motion(track: Track, sampled: np.ndarray, i: int, size: int) -> str | None:
    """left/right/up/down when the net displacement over the visible sampled frames is clearly along
    one axis (>= 20% of the frame, >= 2x the other axis) without bouncing back on that axis."""
    vis = sampled[track.visible[sampled, i]]
    d = track.centers[vis[-1], i] - track.centers[vis[0], i]  # (2,)
    ax = int(np.argmax(np.abs(d)))
    vsign = np.sign(track.velocity[vis[0]:vis[-1] + 1, i, ax])
    if abs(d[ax]) < 0.2 * size or abs(d[ax]) < 2 * abs(d[1 - ax]) or np.any(vsign != vsign[0]):
        return None
    return (("left", "right"), ("up", "down"))[ax][int(d[ax] > 0)]


def _position(track: Track, sampled: np.ndarray, i: int, size: int) -> str | None:
    """left/right/top/bottom in the last sampled frame: fully visible, centre >= 20% of the frame
    from the middle along one axis and >= 1.5x further than along the other."""
    t = sampled[-1]
    off = track.centers[t, i] - size / 2  # (2,)
    ax = int(np.argmax(np.abs(off)))
    if track.inside[t, i] < 0.999 or abs(off[ax]) < 0.2 * size or abs(off[ax]) < 1.5 * abs(off[1 - ax]):
        return None
    return (("left", "right"), ("top", "bottom"))[ax][int(off[ax] > 0)]


def caption(scene: Scene, track: Track, sampled: np.ndarray) -> str:
    """One sentence listing the objects in order of appearance (then left to right)."""
    present = [i for i in range(len(scene.objects)) if track.visible[sampled, i].any()]
    first = {i: int(np.argmax(track.visible[sampled, i])) for i in present}
    order = sorted(present, key=lambda i: (first[i], track.centers[sampled[first[i]], i, 0]))
    if not order:
        return "An empty textured background."
    parts = []
    for i in order:
        o = scene.objects[i]
        name = _article(f"{o.color} {o.shape}")
        if scene.difficulty == "hard":
            parts.append(f"{name} with {'an' if o.digit == 8 else 'a'} {o.digit}")
            continue
        vis = sampled[track.visible[sampled, i]]
        v = track.velocity[vis[0], i]
        if first[i] > 0:
            ax = int(np.argmax(np.abs(v)))
            what = "enters from the " + (("right", "left"), ("bottom", "top"))[ax][int(v[ax] > 0)]
        elif (m := _motion(track, sampled, i, scene.size)) is not None:
            what = f"moves {m}"
        elif np.any(np.sign(track.velocity[vis[0]:vis[-1] + 1, i]) != np.sign(v)):
            what = "bounces around"
        else:
            what = "moves diagonally"
        if not track.visible[sampled[-1], i]:
            what += " and leaves the frame"
        parts.append(f"{name} {what}")
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if scene.difficulty == "hard":
        text = f"{NUMBER_WORDS[len(parts)]} shapes with digits move around: {text}"
    return text[0].upper() + text[1:] + "."


def question_candidates(scene: Scene, track: Track, sampled: np.ndarray) -> dict[str, list[dict]]:
    """All valid (question, answer, targets) per question type, about objects seen in the sampled frames."""
    objs, size = scene.objects, scene.size
    present = [i for i in range(len(objs)) if track.visible[sampled, i].any()]
    clear = {i for i in present if (track.visible[sampled, i] & ~track.occluded[sampled, i]).sum() >= 2}
    shape_n = Counter(objs[i].shape for i in present)
    color_n = Counter(objs[i].color for i in present)
    name = {i: f"{objs[i].color} {objs[i].shape}" for i in present}
    unique = [i for i in present if sum(name[j] == name[i] for j in present) == 1]
    qa = lambda q, a, t: {"question": q, "answer": a, "targets": list(t)}
    out: dict[str, list[dict]] = {q: [] for q in QTYPES}
    out["caption"] = [qa(p, caption(scene, track, sampled), present) for p in CAPTION_PROMPTS]
    for i in present:
        o, dig = objs[i], f" with the digit {objs[i].digit}" if objs[i].digit is not None else ""
        if i in clear and (shape_n[o.shape] == 1 or dig):  # the digit disambiguates a repeated shape
            ref = o.shape + (dig if shape_n[o.shape] > 1 else "")
            out["color"].append(qa(f"What color is the {ref}?", o.color, [i]))
        if i in clear and (color_n[o.color] == 1 or dig):
            ref = f"{o.color} object" + (dig if color_n[o.color] > 1 else "")
            out["shape"].append(qa(f"What shape is the {ref}?", o.shape, [i]))
        if i not in unique:
            continue
        if (m := _motion(track, sampled, i, size)) is not None:
            out["motion"].append(qa(f"Which way does the {name[i]} move?", m, [i]))
        if (p := _position(track, sampled, i, size)) is not None:
            out["position"].append(qa(f"Where is the {name[i]} at the end of the video?", p, [i]))
        if o.digit is not None and i in clear:
            out["digit"].append(qa(f"What digit is on the {name[i]}?", str(o.digit), [i]))
    # count: objects of a shape visible in >= 1 sampled frame; skip shapes with an object only partly seen
    glimpsed = {objs[i].shape for i in range(len(objs))
                if i not in present and track.inside[sampled, i].max() > 0}
    for s in [s for s in SHAPES if s not in glimpsed]:
        which = [i for i in present if objs[i].shape == s]
        out["count"].append(qa(f"How many {PLURALS[s]} are there?", str(len(which)), which))
    appear = {i: int(np.argmax(track.visible[sampled, i])) for i in unique}
    for a in unique:  # "first": the two appearances are at least 2 sampled frames apart
        for b in unique:
            if appear[b] - appear[a] >= 2:
                out["first"] += [qa(f"Which appears first, the {name[a]} or the {name[b]}?", name[a], [a, b]),
                                 qa(f"Which appears first, the {name[b]} or the {name[a]}?", name[a], [a, b])]
    return out


def pick_questions(cands: dict[str, list[dict]], rng: np.random.Generator, per_clip: int,
                   qtypes: tuple[str, ...] = QTYPES, used: Counter | None = None) -> list[dict]:
    """One question per type, then `per_clip` of the types. The answer is the least used so far
    according to `used` (a running (qtype, answer) count, updated here), else uniform over the
    distinct valid answers: answers like "0" for counts are valid in almost every clip and
    would dominate otherwise."""
    picked = []
    for qtype in qtypes:
        if not cands[qtype]:
            continue
        answers = rng.permutation(sorted({c["answer"] for c in cands[qtype]}))
        answer = min(answers, key=lambda a: used[qtype, a]) if used is not None else answers[0]
        pool = [c for c in cands[qtype] if c["answer"] == answer]
        picked.append({"qtype": qtype, **pool[rng.integers(len(pool))]})
    keep = np.sort(rng.choice(len(picked), min(per_clip, len(picked)), replace=False))
    for k in keep if used is not None else ():
        used[picked[k]["qtype"], picked[k]["answer"]] += 1
    return [picked[k] for k in keep]

# ----------------------------------------------------------------------------- writers


@dataclass(frozen=True)
class _Job:
    seed: int
    split: str
    subset: str
    size: int
    seconds: float
    fps: int
    max_frames: int
    video_dir: str | None  # write mp4s here, or None


def _round(a: np.ndarray) -> list:
    return np.round(a, 1).tolist()


def _write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """frames: (T, S, S, 3) uint8 RGB."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, frames.shape[2:0:-1])
    for frame in frames:
        writer.write(frame[..., ::-1])
    writer.release()


def _ground_truth(scene: Scene, track: Track, idx: np.ndarray) -> dict:
    """JSON-able ground truth at the frames `idx`: clipped boxes (None when outside), visibility."""
    clipped = _round(np.clip(track.boxes[idx], 0, scene.size))  # (F, N, 4)
    inside = track.inside[idx].tolist()  # (F, N)
    boxes = [[b if f > 0 else None for b, f in zip(bs, fs)] for bs, fs in zip(clipped, inside)]
    objects = [{"color": o.color, "shape": o.shape, "size": o.size, "digit": o.digit} for o in scene.objects]
    return {"frame_indices": idx.tolist(), "timestamps": np.round(track.times[idx], 3).tolist(),
            "boxes": boxes, "visible": track.visible[idx].tolist(), "objects": objects}


def _make_clip(job: _Job, index: int) -> tuple[dict[str, list[dict]], dict, list[bytes], dict]:
    """Renders clip `index` of a job: question candidates, ground truth at the sampled frames,
    their JPEGs and the ground truth at every native frame."""
    rng = np.random.default_rng([job.seed, SUBSETS.index(job.subset), SPLITS.index(job.split), index])
    difficulty = job.split if job.split != "mix" else ("easy", "hard")[rng.integers(2)]
    scene = sample_scene(rng, difficulty, job.size, job.seconds, job.fps, job.max_frames)
    track = compute_track(scene)
    sampled = sample_indices(scene.num_frames, job.fps, max_frames=job.max_frames)
    clip = f"{job.subset}-{index:06d}"
    if job.video_dir is not None:
        frames = render(scene, track, np.arange(scene.num_frames))
        _write_mp4(Path(job.video_dir) / f"{clip}.mp4", frames, job.fps)
        frames = frames[sampled]
    else:
        frames = render(scene, track, sampled)
    jpgs = [cv2.imencode(".jpg", f[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for f in frames]
    gt = {"clip": clip, "split": job.subset, "difficulty": difficulty, "size": job.size,
          **_ground_truth(scene, track, sampled)}
    full = {"clip": clip, "fps": job.fps, **_ground_truth(scene, track, np.arange(scene.num_frames)),
            "velocity": _round(track.velocity)}  # (T, N, 2) px/s
    return question_candidates(scene, track, sampled), gt, jpgs, full


def _check(split: str, subset: str, size: int, seconds: float, qtypes: tuple[str, ...],
           **positive: int) -> None:
    for name, value in positive.items():
        if not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{name}={value!r}: must be a positive integer")
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}: use one of {', '.join(SPLITS)}")
    if subset not in SUBSETS:
        raise ConfigError(f"subset={subset!r}: use one of {', '.join(SUBSETS)}")
    if not isinstance(size, int) or size < MIN_SIZE:
        raise ConfigError(f"size={size!r}: frames must be at least {MIN_SIZE} px square")
    if not seconds >= 1:
        raise ConfigError(f"seconds={seconds!r}: clips must last at least 1 s")
    if not qtypes or set(qtypes) - set(QTYPES):
        raise ConfigError(f"qtypes={qtypes!r}: choose from {', '.join(QTYPES)}")


def make_shapes(out_dir: str | Path, n: int, seed: int, split: str = "mix", subset: str = "train", *,
                size: int = 128, seconds: float = 8.0, fps: int = 8, max_frames: int = 64, per_clip: int = 4,
                qtypes: tuple[str, ...] = QTYPES, shards: bool = True, videos: bool = True,
                shard_size: int = 1000, workers: int = 1, progress: bool = True) -> dict:
    """Writes n clips of one subset into out_dir/<subset>/ (see the module docstring). Returns
    {"dir", "clips", "samples", "answers": Counter of (difficulty, qtype, answer) over the samples}."""
    qtypes = tuple(qtypes)
    _check(split, subset, size, seconds, qtypes, n=n, fps=fps, max_frames=max_frames, per_clip=per_clip,
           shard_size=shard_size, workers=workers)
    root = Path(out_dir) / subset
    if videos or shards:
        (root / "videos" if videos else root).mkdir(parents=True, exist_ok=True)
    job = _Job(seed, split, subset, size, float(seconds), fps, max_frames,
               str(root / "videos") if videos else None)
    counts: Counter = Counter()
    used: dict[str, Counter] = {"easy": Counter(), "hard": Counter()}  # answer balancing, per difficulty
    with ExitStack() as stack:
        sink = index = clips = None
        if shards:
            import webdataset as wds  # only the shards need it (the `train` extra)

            pattern = str(root / f"shapes-{subset}-%06d.tar")
            sink = stack.enter_context(wds.ShardWriter(pattern, maxcount=shard_size, verbose=0, mtime=0))
        if videos:
            index = stack.enter_context(open(root / "index.jsonl", "w"))
            clips = stack.enter_context(open(root / "clips.jsonl", "w"))
        if workers > 1:
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(workers))
            results = pool.imap(partial(_make_clip, job), range(n), chunksize=8)
        else:
            results = (_make_clip(job, i) for i in range(n))
        for i, (cands, gt, jpgs, full) in enumerate(track(results, f"make-shapes {subset}/{split}", total=n,
                                                          unit="clips", disable=not progress)):
            rng = np.random.default_rng([seed, SUBSETS.index(subset), SPLITS.index(split), i, 1])
            for k, q in enumerate(pick_questions(cands, rng, per_clip, qtypes, used[gt["difficulty"]])):
                target = q["targets"][0] if q["qtype"] not in ("caption", "count") else None
                meta = {"qtype": q["qtype"], "target": target, "targets": q["targets"], **gt}
                counts[gt["difficulty"], q["qtype"], q["answer"] if q["qtype"] != "caption" else ""] += 1
                if sink is not None:
                    source = f"shapesqa/{gt['difficulty']}/{q['qtype']}"
                    record = {"user": q["question"], "assistant": q["answer"], "source": source,
                              "frame_count": len(jpgs), **meta}
                    sink.write({"__key__": f"{gt['clip']}-{k:02d}", "json": json.dumps(record).encode(),
                                **{f"{f:03d}.jpg": jpg for f, jpg in enumerate(jpgs)}})
                if index is not None:
                    record = {"video": f"videos/{gt['clip']}.mp4", "question": q["question"],
                              "answer": q["answer"], **meta}
                    index.write(json.dumps(record) + "\n")
            if clips is not None:
                clips.write(json.dumps({"video": f"videos/{full['clip']}.mp4", **full}) + "\n")
    return {"dir": str(root), "clips": n, "samples": sum(counts.values()), "answers": counts}


def make_examples(out_dir: str | Path = Path(__file__).parents[1] / "assets" / "examples") -> list[dict]:
    """Regenerates the packaged example clips (deterministic) and their examples.jsonl."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2024)
    easy = Scene(128, 8.0, 8, "easy", [
        Obj("red", "triangle", "large", 34.0, (30.0, 35.0), (9.0, 0.5), bounce=True),
        Obj("blue", "circle", "large", 34.0, (100.0, 100.0), (-8.0, 0.0), bounce=True),
        Obj("green", "circle", "medium", 24.0, (-40.0, 70.0), (14.0, 0.0), bounce=False),
    ], _background(rng, 128))
    motion = Scene(128, 8.0, 8, "easy", [
        Obj("yellow", "star", "large", 34.0, (40.0, 110.0), (1.0, -10.0), bounce=True),
        Obj("purple", "square", "medium", 24.0, (170.0, 90.0), (-14.0, 1.0), bounce=False),
    ], _background(rng, 128))
    hard = sample_scene(np.random.default_rng(7), "hard")
    scenes = {"shapes_easy": easy, "shapes_motion": motion, "shapes_hard": hard}
    rows = []
    for stem, scene in scenes.items():
        track = compute_track(scene)
        sampled = sample_indices(scene.num_frames, scene.fps)
        _write_mp4(out / f"{stem}.mp4", render(scene, track, np.arange(scene.num_frames)), scene.fps)
        gt = _ground_truth(scene, track, sampled)
        for qtype, cands in question_candidates(scene, track, sampled).items():
            for c in cands[:1] if qtype in ("caption", "count", "first") else cands:
                target = c["targets"][0] if qtype not in ("caption", "count") else None
                rows.append({"file": f"{stem}.mp4", "qtype": qtype, "question": c["question"],
                             "answer": c["answer"], "target": target, "targets": c["targets"],
                             "difficulty": scene.difficulty, "timestamps": gt["timestamps"],
                             "boxes": gt["boxes"]})
    with open(out / "examples.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return rows

# ----------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `fvlm make-shapes OUT ...` (see the module docstring for the layout)."""
    add = parser.add_argument
    add("out", type=Path, help="output folder; gets train/, val/ and test/ subfolders")
    add("--n", type=int, default=1000, help="clips in train (default 1000)")
    add("--eval-n", type=int, default=None, help="clips in val and in test (default max(1, n // 10))")
    add("--subsets", default="train,val,test", help="comma-separated subsets to write (default all three)")
    add("--seed", type=int, default=0, help="base seed; clip seeds derive from (seed, subset, split, index)")
    add("--split", choices=SPLITS, default="mix", help="difficulty: easy, hard or a 50/50 mix (default)")
    add("--size", type=int, default=128, help=f"frame side in px (>= {MIN_SIZE}, default 128)")
    add("--seconds", type=float, default=8.0, help="clip length (default 8)")
    add("--fps", type=int, default=8, help="native fps of the mp4s (default 8; the model samples 1 fps)")
    add("--max-frames", type=int, default=64, help="the model sampler's frame cap (default 64)")
    add("--per-clip", type=int, default=4, help="samples (question types) per clip (default 4)")
    add("--qtypes", default=",".join(QTYPES), help="comma-separated question types (default all)")
    add("--shard-size", type=int, default=1000, help="samples per tar shard (default 1000)")
    add("--no-videos", action="store_true", help="skip the mp4s, index.jsonl and clips.jsonl")
    add("--no-shards", action="store_true", help="skip the webdataset shards")
    add("--workers", type=int, default=1, help="worker processes (default 1)")


def run(args: argparse.Namespace) -> int:
    """Writes each of `args.subsets` with `make_shapes`; returns the exit code."""
    for subset in [s.strip() for s in args.subsets.split(",") if s.strip()]:
        n = args.n if subset == "train" else args.eval_n if args.eval_n is not None else max(1, args.n // 10)
        summary = make_shapes(
            args.out, n, args.seed, args.split, subset, size=args.size, seconds=args.seconds, fps=args.fps,
            max_frames=args.max_frames, per_clip=args.per_clip, qtypes=tuple(args.qtypes.split(",")),
            shards=not args.no_shards, videos=not args.no_videos, shard_size=args.shard_size,
            workers=args.workers)
        print(f"{summary['dir']}: {summary['clips']} clips, {summary['samples']} samples")
    return 0


def main(argv: list[str] | None = None) -> int:
    title, body = __doc__.split("\n", 1)
    parser = argparse.ArgumentParser(prog="fvlm make-shapes", description=title, epilog=body,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
