"""Attention heatmaps: where the query looked in each frame, as colour overlays, PNGs and an MP4.

    upsample_attention(attn [gh, gw], (H, W)) -> [H, W] float32 in [0, 1]
    overlay(frame [H, W, 3], attn [gh, gw])    -> [H, W, 3] uint8 RGB, colour-mapped and blended
    overlay_frames(frames [T, H, W, 3], attention [T, gh, gw]) -> T overlays, small frames upscaled
    save_heatmaps(frames, attention, out_dir)  -> frame_000.png ... + overlay.mp4, all or nothing
    write_mp4(frames, path, fps)               -> the codec used

MP4s are H.264 when an encoder exists (PyAV's libx264, else OpenCV "avc1"), so browsers play
them; the fallback is OpenCV "mp4v" (MPEG-4 Part 2), which most browsers do not play.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError

MP4V_NOTE = (
    "mp4v (not playable in most browsers): OpenCV has no H.264 encoder here, nor PyAV (pip install av)"
)


@dataclass
class HeatmapFiles:
    pngs: list[Path]  # one overlay per frame, in order
    mp4: Path | None  # the overlays as a video; None when mp4=False
    codec: str  # "avc1" | "libx264" | "h264" | "mp4v"; "" without MP4
    note: str | None = None  # set when the MP4 will not play in browsers


def _numpy(x, name: str) -> np.ndarray:
    """np.ndarray or torch.Tensor (any device/dtype) -> np.ndarray."""
    if x is None:
        raise InputError(
            f"{name}: got None; generate with return_attention=True, with a model that has a query"
        )
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu()
        x = (x.float() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


def _colormap(name: str) -> int:
    code = getattr(cv2, f"COLORMAP_{name.upper()}", None)
    if code is None:
        raise InputError(
            f"colormap {name!r}: unknown; use an OpenCV colormap name such as 'jet' or 'inferno'"
        )
    return code


def upsample_attention(attn: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[gh, gw] attention -> [H, W] float32 in [0, 1]: min-max normalised, bilinear upsampled.

    A constant map (no preference) gives all zeros.
    """
    attn = _numpy(attn, "attention").astype(np.float32)
    if attn.ndim != 2 or attn.size == 0:
        raise InputError(f"attention: shape {attn.shape}; expected one frame's grid [gh, gw]")
    if not np.isfinite(attn).all():
        raise InputError(f"attention: the {attn.shape} grid has NaN or inf values; check the model output")
    lo, hi = float(attn.min()), float(attn.max())
    norm = (attn - lo) / (hi - lo) if hi > lo else np.zeros_like(attn)  # [gh, gw] in [0, 1]
    H, W = size
    return np.clip(cv2.resize(norm, (W, H), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)  # [H, W]


def overlay(frame: np.ndarray, attn: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """uint8 RGB frame [H, W, 3] + attention [gh, gw] -> uint8 RGB [H, W, 3].

    The attention is colour-mapped (jet: blue = low, red = high) and blended over the frame with
    weight alpha.
    """
    frame = _numpy(frame, "frame")
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        raise InputError(f"frame: {frame.dtype} {frame.shape}; expected uint8 RGB [H, W, 3]")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha={alpha}; must be in [0, 1]")
    heat = upsample_attention(attn, frame.shape[:2])  # [H, W] in [0, 1]
    colour = cv2.applyColorMap((heat * 255).round().astype(np.uint8), _colormap(colormap))  # [H, W, 3] BGR
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(np.ascontiguousarray(frame), 1.0 - alpha, colour, alpha, 0.0)


def _label(img: np.ndarray, text: str) -> None:
    """Draw text in the top-left corner, white on a black outline, in place."""
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.4, min(img.shape[:2]) / 400)
    thick = max(1, round(scale * 2))
    (_, h), _ = cv2.getTextSize(text, font, scale, thick)
    org = (int(6 * scale) + 2, int(6 * scale) + 2 + h)
    cv2.putText(img, text, org, font, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, font, scale, (255, 255, 255), thick, cv2.LINE_AA)


def overlay_frames(
    frames: np.ndarray,
    attention: np.ndarray,
    timestamps: np.ndarray | None = None,
    alpha: float = 0.5,
    min_side: int = 256,
    colormap: str = "jet",
) -> list[np.ndarray]:
    """frames [T, H, W, 3] uint8 + attention [T, gh, gw] -> T overlays [H', W', 3] uint8 RGB.

    Frames with a short side below min_side are upscaled (bicubic) first, so overlays of the
    model's 64-px frames are viewable. With timestamps [T], each overlay is labelled "t=1.0s".
    """
    frames, attention = _numpy(frames, "frames"), _numpy(attention, "attention")
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise InputError(f"frames: {frames.dtype} {frames.shape}; expected uint8 RGB [T, H, W, 3], T >= 1")
    if attention.ndim != 3 or len(attention) != len(frames):
        raise InputError(
            f"attention {attention.shape} does not match frames {frames.shape}; "
            "expected attention [T, gh, gw] with the same T"
        )
    if timestamps is not None and len(timestamps) != len(frames):
        raise InputError(f"timestamps: {len(timestamps)} values for {len(frames)} frames; pass one per frame")
    T, H, W, _ = frames.shape
    scale = max(1.0, min_side / min(H, W))
    size = (round(W * scale), round(H * scale))  # (w, h) for cv2
    out = []
    for t in range(T):
        frame = np.ascontiguousarray(frames[t])
        if scale > 1.0:
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_CUBIC)  # [h, w, 3]
        img = overlay(frame, attention[t], alpha, colormap)
        if timestamps is not None:
            _label(img, f"t={float(timestamps[t]):.1f}s")
        out.append(img)
    return out


# -----------------------------------------------------------------------------
# files


def _write_png(path: Path, img: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path.name}: OpenCV could not encode the {img.shape} image as PNG")
    path.write_bytes(buf.tobytes())


def save_heatmaps(
    frames: np.ndarray,
    attention: np.ndarray,
    out_dir: str | os.PathLike,
    timestamps: np.ndarray | None = None,
    fps: float = 2.0,
    mp4: bool = True,
    prefix: str = "frame",
) -> HeatmapFiles:
    """Write out_dir/{prefix}_000.png ... (one overlay per frame) and out_dir/overlay.mp4.

    All files are written into a staging folder inside out_dir and moved into place only when
    every one succeeded, so an error never leaves partial files behind.
    """
    images = overlay_frames(frames, attention, timestamps)  # validates before touching the disk
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    digits = max(3, len(str(len(images) - 1)))
    names = [f"{prefix}_{t:0{digits}d}.png" for t in range(len(images))]
    staging = Path(tempfile.mkdtemp(prefix=".heatmaps-", dir=out_dir))
    try:
        for name, img in zip(names, images):
            _write_png(staging / name, img)
        codec = write_mp4(images, staging / "overlay.mp4", fps) if mp4 else ""
        for name in names + (["overlay.mp4"] if mp4 else []):
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # empty after success; partial files on error
    return HeatmapFiles(
        pngs=[out_dir / n for n in names],
        mp4=out_dir / "overlay.mp4" if mp4 else None,
        codec=codec,
        note=MP4V_NOTE if codec == "mp4v" else None,
    )


def _readable(path: Path) -> bool:
    """Whether OpenCV decodes a first frame from the file (the encoder really worked)."""
    cap = cv2.VideoCapture(str(path))
    ok = cap.isOpened() and cap.read()[0]
    cap.release()
    return bool(ok)


def _write_opencv(frames: list[np.ndarray], path: Path, fps: float, fourcc: str) -> str | None:
    """Encode with OpenCV; None on success, else why it failed."""
    H, W = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (W, H))
    if not writer.isOpened():
        return f"OpenCV {fourcc}: no encoder"
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    if path.stat().st_size == 0 or not _readable(path):
        return f"OpenCV {fourcc}: wrote an unreadable file"
    return None


def _write_pyav(frames: list[np.ndarray], path: Path, fps: float, codec: str) -> str | None:
    """Encode H.264 with PyAV (yuv420p, moov atom first for streaming); None on success."""
    try:
        import av
    except ImportError:
        return "PyAV: not installed"
    H, W = frames[0].shape[:2]
    try:
        with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
            for f in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            container.mux(stream.encode())  # flush
    except (av.error.FFmpegError, ValueError) as e:  # ValueError: codec unknown to this build
        return f"PyAV {codec}: {e}"
    return None


@functools.cache
def _opencv_has_h264() -> bool:
    """Whether this OpenCV can write H.264 ("avc1"); pip wheels cannot. Probed once: it's noisy."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        with tempfile.TemporaryDirectory() as d:
            probe = [np.zeros((64, 64, 3), np.uint8)] * 2
            return _write_opencv(probe, Path(d) / "probe.mp4", 2.0, "avc1") is None
    finally:
        cv2.utils.logging.setLogLevel(level)


def _encode(frames: list[np.ndarray], path: Path, fps: float) -> str:
    """Try H.264 (PyAV, then OpenCV), then mp4v; returns the codec that worked.

    PyAV goes first: its libx264 is quiet, while probing OpenCV's avc1 on a build without it
    (pip wheels) prints FFmpeg errors once per process.
    """
    failures = []
    for codec in ("libx264", "h264"):
        failures.append(_write_pyav(frames, path, fps, codec))
        if failures[-1] is None:
            return codec
    if _opencv_has_h264():
        failures.append(_write_opencv(frames, path, fps, "avc1"))
        if failures[-1] is None:
            return "avc1"
    failures.append(_write_opencv(frames, path, fps, "mp4v"))
    if failures[-1] is None:
        return "mp4v"
    raise OSError(
        f"{path.name}: no MP4 encoder worked ({'; '.join(failures)}); check the disk and permissions"
    )


def write_mp4(frames: list[np.ndarray], path: str | os.PathLike, fps: float) -> str:
    """Write uint8 RGB frames [H, W, 3] (all one size) as an MP4; returns the codec used.

    Odd sizes are padded to even (H.264 needs it). The file is encoded under a temporary name
    in the same folder and renamed into place: no partial file is ever left at path.
    """
    frames = [np.ascontiguousarray(_numpy(f, "frame")) for f in frames]
    kinds = sorted({(f.shape, str(f.dtype)) for f in frames})  # [((H, W, 3), "uint8")] when valid
    if len(kinds) != 1 or kinds[0][1] != "uint8" or len(kinds[0][0]) != 3 or kinds[0][0][-1] != 3:
        raise InputError(
            f"write_mp4: frames {kinds[:3]}; expected one or more uint8 RGB [H, W, 3] frames of one size"
        )
    if not fps > 0:
        raise InputError(f"write_mp4: fps={fps}; must be > 0")
    H, W = frames[0].shape[:2]
    if H % 2 or W % 2:
        frames = [cv2.copyMakeBorder(f, 0, H % 2, 0, W % 2, cv2.BORDER_REPLICATE) for f in frames]
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".mp4", dir=path.parent)
    os.close(fd)
    try:
        codec = _encode(frames, Path(tmp), fps)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return codec
