"""Pure rendering helpers for the demo: numpy in, uint8 RGB images (or strings) out. No gradio here.

    caption(1.125, 3.21)                        -> "t=1.1s · H=3.21 nats"
    frame_view(frame [s, s, 3], attn [gh, gw])  -> [S, S, 3]   the frame with its attention overlay
    frame_view(..., coarse=[gh, gw])            -> [S, 2S+4, 3] coarse | fine, side by side
    entropy_plot([4.1, 3.7, 3.2], [0, 1, 2])    -> [H, W, 3]   attention entropy per frame, a line plot
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from fvlm.heatmap import overlay_frames

FONT = cv2.FONT_HERSHEY_SIMPLEX
SEPARATOR_PX = 4  # white gap between the coarse and fine views


def caption(timestamp: float, entropy: float | None) -> str:
    """The gallery caption of one frame: its time in the source and the attention entropy."""
    text = f"t={timestamp:.1f}s"
    return text if entropy is None else f"{text} · H={entropy:.2f} nats"


def _tag(img: np.ndarray, text: str) -> None:
    """Draw a small label in the bottom-left corner, white on a black outline, in place."""
    scale = max(0.4, min(img.shape[:2]) / 400)
    thick = max(1, round(scale * 2))
    org = (int(6 * scale) + 2, img.shape[0] - int(6 * scale) - 4)
    cv2.putText(img, text, org, FONT, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)


def frame_view(
    frame: np.ndarray,  # [s, s, 3] uint8 RGB, the crop the model saw
    attention: np.ndarray | None,  # [gh, gw], or None for models without a query
    timestamp: float,
    coarse: np.ndarray | None = None,  # [gh, gw] static-query map (coarse_fine mode), or None
    min_side: int = 256,
) -> np.ndarray:
    """One gallery image: the frame with its attention overlay, labelled "t=1.0s".

    With `coarse`, the static-query (coarse) overlay is placed left of the fine one, each tagged.
    Without attention, the frame alone (upscaled the same way).
    """
    frames = frame[None]  # [1, s, s, 3]
    ts = np.array([timestamp], dtype=np.float64)
    if attention is None:
        blank = np.zeros((1, 2, 2), np.float32)  # alpha=0: no colour, just the upscaled, labelled frame
        return overlay_frames(frames, blank, ts, alpha=0.0, min_side=min_side)[0]
    fine = overlay_frames(frames, attention[None], ts, min_side=min_side)[0]  # [S, S, 3]
    if coarse is None:
        return fine
    left = overlay_frames(frames, coarse[None], None, min_side=min_side)[0]  # [S, S, 3]
    _tag(left, "coarse")
    _tag(fine, "fine")
    gap = np.full((fine.shape[0], SEPARATOR_PX, 3), 255, np.uint8)
    return np.concatenate([left, gap, fine], axis=1)  # [S, 2S+4, 3]


def entropy_plot(
    entropy: Sequence[float],  # [n] nats, one per frame read so far
    timestamps: Sequence[float] | None = None,  # [n] seconds, for the x tick labels
    size: tuple[int, int] = (480, 200),  # (width, height)
) -> np.ndarray:
    """A line plot of attention entropy per frame as a uint8 RGB image [height, width, 3].

    Lower entropy = a more focused look. The y axis runs from 0 to a little above the maximum, so a
    flat line means the model looked equally broadly at every frame. n = 0 gives empty axes.
    """
    W, H = size
    img = np.full((H, W, 3), 255, np.uint8)
    left, right, top, bottom = 44, 12, 24, 30  # margins, px
    x0, x1, y0, y1 = left, W - right, top, H - bottom  # plot area; y grows downwards
    ink, grid, line, last = (40, 40, 40), (225, 225, 225), (31, 119, 180), (214, 39, 40)
    cv2.putText(img, "attention entropy per frame (nats)", (left, 16), FONT, 0.42, ink, 1, cv2.LINE_AA)

    values = np.asarray(entropy, dtype=np.float64).reshape(-1)  # [n]
    n = len(values)
    finite = values[np.isfinite(values)]
    y_max = float(finite.max()) * 1.1 if len(finite) and finite.max() > 0 else 1.0
    for frac in (0.0, 0.5, 1.0):  # horizontal grid lines + y tick labels
        y = round(y1 - frac * (y1 - y0))
        cv2.line(img, (x0, y), (x1, y), grid, 1)
        cv2.putText(img, f"{frac * y_max:.1f}", (4, y + 4), FONT, 0.38, ink, 1, cv2.LINE_AA)
    cv2.line(img, (x0, y0), (x0, y1), ink, 1)
    cv2.line(img, (x0, y1), (x1, y1), ink, 1)
    if n == 0:
        cv2.putText(img, "waiting for frames...", (x0 + 10, (y0 + y1) // 2), FONT, 0.45, ink, 1, cv2.LINE_AA)
        return img

    span = max(n - 1, 1)
    xs = [round(x0 + 8 + (x1 - x0 - 16) * (i / span if n > 1 else 0.5)) for i in range(n)]
    ys = [round(y1 - (v / y_max) * (y1 - y0)) if np.isfinite(v) else y1 for v in values]
    pts = np.array(list(zip(xs, ys)), np.int32).reshape(-1, 1, 2)
    cv2.polylines(img, [pts], False, line, 2, cv2.LINE_AA)
    for i, (x, y) in enumerate(zip(xs, ys)):
        cv2.circle(img, (x, y), 4 if i == n - 1 else 3, last if i == n - 1 else line, -1, cv2.LINE_AA)

    step = max(1, -(-n // 8))  # at most ~8 x tick labels
    for i in range(0, n, step):
        label = f"{float(timestamps[i]):.1f}s" if timestamps is not None else str(i)
        (tw, _), _ = cv2.getTextSize(label, FONT, 0.35, 1)
        cv2.putText(img, label, (xs[i] - tw // 2, y1 + 14), FONT, 0.35, ink, 1, cv2.LINE_AA)
    axis = "frame time" if timestamps is not None else "frame"
    (tw, _), _ = cv2.getTextSize(axis, FONT, 0.35, 1)
    cv2.putText(img, axis, ((x0 + x1 - tw) // 2, H - 4), FONT, 0.35, ink, 1, cv2.LINE_AA)
    return img


def save_png(img: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 RGB image [H, W, 3] as PNG; returns the path."""
    path = Path(path)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path.name}: OpenCV could not encode the {img.shape} image as PNG")
    path.write_bytes(buf.tobytes())
    return path
