"""Video and image loading: decode, sample frames, preprocess for the vision encoder.

    load_video(path)  -> Clip      frames [T, H, W, 3] uint8 RGB + timestamps [T] seconds
                                   (an animated GIF/WebP/APNG is a video, with its own frame times)
    to_clip(anything) -> Clip      path, array/tensor, list of PIL images, or a Clip
    preprocess(frames, S)          [T, H, W, 3] uint8 -> [T, 3, S, S] float32, ImageNet-normalised
    FrameStream(source)            (frame, t) as they come from a camera, a file or a URL (live video)

Videos are decoded with decord, seeking straight to the sampled frames (a 2-hour video costs
64 seeks, not 200k decoded frames), at a reduced size when the source is large. Before decord
sees a file, PyAV probes it (header + first frame): that rejects empty, truncated, corrupt and
non-video files with a clear error, without decord's FFmpeg noise or its crash on absurd
headers, and gives the displayed frame size for choosing the decode size.
decord, PyAV, OpenCV and PIL are imported lazily so `import fvlm.video` stays cheap.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from typing_extensions import Self  # typing.Self needs Python 3.11

from .errors import InputError, VideoDecodeError, VideoNotFoundError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_DECODE_THREADS = min(4, os.cpu_count() or 1)
_PIL_LOCK = threading.Lock()  # guards Pillow's process-wide truncated-file flag (_strict_pil)
# decord 0.6.0 fails (DECORDError, or frames of the wrong shape) at these output widths,
# whatever the source; we decode 2 px wider and resize back. Found by scanning widths 8..1000.
_DECORD_BAD_WIDTHS = {8, 12, 16, 24, 48, 72}


@dataclass
class Clip:
    frames: np.ndarray  # [T, H, W, 3] uint8 RGB, the sampled frames
    timestamps: np.ndarray  # [T] float64 seconds of each frame in the source (all 0.0 for an image)
    source: str  # path, or a short description ("array", "PIL images")
    is_image: bool = False


# -----------------------------------------------------------------------------
# frame sampling


def sample_indices(
    num_frames: int,
    native_fps: float,
    fps: float = 1.0,
    max_frames: int = 64,
    edge_skip_s: float = 1.0,
) -> np.ndarray:
    """Frame indices [n] (int64, increasing, unique) to sample from a video.

    Rule (SmolVLM2-style): aim for `fps` frames per second over the WHOLE video, at most
    `max_frames`: n = clamp(round(duration * fps), 1, max_frames), duration = num_frames / native_fps.
    If the video leaves room (duration - 2 * edge_skip_s >= n / fps), skip `edge_skip_s` seconds
    at both ends (fades, titles). Indices are n evenly spaced points over [start, end] (frame
    index space; [0, num_frames - 1] without skip), rounded and deduplicated, so a video with
    fewer frames than n yields fewer indices. 8 s at 8 fps -> 8 frames; 2 h -> 64 frames.
    """
    if num_frames < 1:
        raise InputError(f"sample_indices: num_frames={num_frames}; a video needs at least 1 frame")
    if not (math.isfinite(native_fps) and native_fps > 0):
        raise InputError(f"sample_indices: native_fps={native_fps}; must be a positive number")
    if not (fps > 0 and max_frames >= 1 and edge_skip_s >= 0):
        raise InputError(
            f"sample_indices: fps={fps}, max_frames={max_frames}, edge_skip_s={edge_skip_s}; "
            "need fps > 0, max_frames >= 1, edge_skip_s >= 0"
        )
    duration = num_frames / native_fps
    n = int(min(max(round(duration * fps), 1), max_frames))
    start, end = 0.0, num_frames - 1.0
    if duration - 2 * edge_skip_s >= n / fps:
        start, end = edge_skip_s * native_fps, num_frames - 1.0 - edge_skip_s * native_fps
    idx = np.linspace(start, end, n).round().astype(np.int64)  # [n]
    return np.unique(np.clip(idx, 0, num_frames - 1))


# -----------------------------------------------------------------------------
# decoding


def _reduced_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(w, h) with the short side scaled down to max_side, aspect kept; unchanged if small enough."""
    short = min(width, height)
    if max_side is None or short <= max_side:
        return width, height
    scale = max_side / short
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[H, W, C] uint8 -> [h, w, C], size = (w, h); area filter when shrinking, cubic when growing."""
    import cv2

    w, h = size
    if (w, h) == (img.shape[1], img.shape[0]):
        return img
    shrink = w * h < img.shape[0] * img.shape[1]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def _probe_video(path: Path) -> tuple[int, int]:
    """(width, height) of the video as displayed (rotation applied, as decord does), via PyAV.

    A gate before decord. It reads the header and decodes the first frame, so empty, truncated,
    frameless and non-video files fail here, quietly and with a clear message. It also rejects
    headers declaring an absurd frame count: decord reserves memory for that count up front
    and a corrupt one aborts the whole process (std::bad_alloc). Otherwise decord raised, never
    crashed or hung, on ~2000 randomly corrupted files we tried.
    """
    import av

    try:
        with av.open(str(path), metadata_errors="replace") as container:
            attached_pic = av.stream.Disposition.attached_pic  # cover art, not the video
            streams = [s for s in container.streams.video if not s.disposition & attached_pic]
            if not streams:
                raise VideoDecodeError(
                    f"{path.name}: the file has no video stream (audio only, or written with 0 frames); "
                    "pass a video file with at least one frame"
                )
            stream = streams[0]
            if stream.codec_context is None:  # FFmpeg has no decoder for this codec
                raise VideoDecodeError(
                    f"{path.name}: unknown or unsupported video codec; re-encode it, "
                    "e.g. `ffmpeg -i in -c:v libx264 out.mp4`"
                )
            # the count decord reserves memory for: nb_frames, else avg fps * duration
            rate, duration = stream.average_rate, container.duration  # Fraction | None, us | None
            if not (stream.frames or (rate and duration)):
                raise VideoDecodeError(
                    f"{path.name}: the container gives neither a frame count nor a duration (a raw "
                    "stream?); remux it into MP4, e.g. `ffmpeg -i in -c copy out.mp4`"
                )
            declared = stream.frames or float(rate) * duration / 1e6
            if not 0 <= declared <= path.stat().st_size:  # a frame takes at least a byte
                raise VideoDecodeError(
                    f"{path.name}: the header declares {declared:.0f} frames in a {path.stat().st_size}-byte "
                    "file, so it is corrupt; re-encode it, e.g. `ffmpeg -i in -c:v libx264 out.mp4`"
                )
            frame = next(container.decode(stream), None)
    except av.error.FFmpegError as e:
        raise VideoDecodeError(
            f"{path.name}: not a readable video ({e.strerror or e}); the file may be truncated, "
            "corrupt or not a video. Re-encode it, e.g. `ffmpeg -i in -c:v libx264 out.mp4`"
        ) from e
    if frame is None:
        raise VideoDecodeError(
            f"{path.name}: the video has no decodable frames (empty or truncated); "
            "check the file, or re-encode it with ffmpeg"
        )
    w, h = frame.width, frame.height
    return (h, w) if frame.rotation % 180 else (w, h)


def _decode_frames(path: Path, fps: float, max_frames: int, max_side: int | None) -> Clip:
    import decord

    width, height = _probe_video(path)
    out_w, out_h = _reduced_size(width, height, max_side)
    dec_w = out_w + 2 if out_w in _DECORD_BAD_WIDTHS else out_w
    decord.logging.set_level(decord.logging.QUIET)  # silence FFmpeg's per-packet complaints
    try:
        # width/height make decord's scaler emit the reduced size: a 4K frame never exists in memory
        vr = decord.VideoReader(
            str(path), ctx=decord.cpu(0), width=dec_w, height=out_h, num_threads=_DECODE_THREADS
        )
        native_fps = vr.get_avg_fps()
        if not (math.isfinite(native_fps) and native_fps > 0):
            raise VideoDecodeError(
                f"{path.name}: the video reports frame rate {native_fps}; re-encode it with a fixed "
                "frame rate, e.g. `ffmpeg -i in -r 30 out.mp4`"
            )
        idx = sample_indices(len(vr), native_fps, fps, max_frames)  # [T]
        frames = vr.get_batch(idx).asnumpy()  # [T, out_h, dec_w, 3] uint8 RGB, seeks per frame
    # decord raises RuntimeError on open, DECORDError on decode, and asserts frame count > 0
    except (RuntimeError, decord.DECORDError, AssertionError) as e:
        # "[12:00:00] /github/workspace/src/video/video_reader.cc:486: Error: ..." -> "Error: ..."
        reason = re.sub(r"\[[\d:]+\] \S+:\d+: ", "", str(e)).strip().split("\n")[0][:160] or type(e).__name__
        raise VideoDecodeError(
            f"{path.name}: decoding failed ({reason}); the file may be truncated or corrupt. "
            "Re-encode it, e.g. `ffmpeg -i in -c:v libx264 out.mp4`"
        ) from e
    if dec_w != out_w:
        frames = np.stack([_resize(f, (out_w, out_h)) for f in frames])
    return Clip(frames=frames, timestamps=idx / native_fps, source=str(path))


@contextlib.contextmanager
def _strict_pil():
    """Pillow refuses truncated files while fvlm decodes one. Other libraries loosen this for the
    whole process (lmms-eval sets ImageFile.LOAD_TRUNCATED_IMAGES = True on import), which would let
    half a GIF decode as a shorter video; the flag is restored afterwards."""
    from PIL import ImageFile

    with _PIL_LOCK:
        saved, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _load_image(path: Path, fps: float, max_frames: int, image_frames: int, max_side: int | None) -> Clip:
    """A still image -> a clip of image_frames copies; an animated one (GIF, WebP, APNG) -> a video."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with _strict_pil(), Image.open(path) as img:
            if getattr(img, "n_frames", 1) > 1:
                return _load_animated(path, img, fps, max_frames, max_side)
            if max_side is not None:
                img.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale, cheaply
            img = ImageOps.exif_transpose(img).convert("RGB")  # alpha dropped
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, EOFError) as e:
        raise VideoDecodeError(
            f"{path.name}: not a readable image ({e}); check the file or convert it to PNG/JPEG"
        ) from e
    frame = np.asarray(img)  # [H, W, 3]
    frame = _resize(frame, _reduced_size(frame.shape[1], frame.shape[0], max_side))
    return _image_clip(frame, image_frames, str(path))


def _load_animated(path: Path, img, fps: float, max_frames: int, max_side: int | None) -> Clip:
    """An animated image, open in PIL -> a video clip with the real frame times.

    Frame durations vary (encoders merge repeated frames into one longer frame), so the clip is
    sampled like a constant-rate video whose frame time is the durations' greatest common divisor:
    a GIF/WebP made from an mp4 samples the same moments as the mp4. Each sample shows the frame
    on screen at its time. A duration that is missing or <= 10 ms counts as 100 ms (as browsers do).
    """
    durations_ms = []
    for i in range(img.n_frames):  # seeking decodes; frames are kept only in the second pass
        img.seek(i)
        img.load()  # WebP sets the duration on load
        d = int(img.info.get("duration") or 0)
        durations_ms.append(d if d > 10 else 100)
    step = math.gcd(*durations_ms)  # ms per frame of the constant-rate timeline
    starts = np.concatenate([[0], np.cumsum(durations_ms[:-1])]) // step  # [n] in steps
    ticks = sample_indices(sum(durations_ms) // step, 1000.0 / step, fps, max_frames)  # [T] in steps
    frames = []
    for i in np.searchsorted(starts, ticks, side="right") - 1:  # the frame on screen at each tick
        img.seek(int(i))
        frame = np.asarray(img.convert("RGB"))  # [H, W, 3], composed (disposal applied)
        frames.append(_resize(frame, _reduced_size(frame.shape[1], frame.shape[0], max_side)))
    return Clip(frames=np.stack(frames), timestamps=ticks * step / 1000.0, source=str(path))


def _image_clip(frame: np.ndarray, image_frames: int, source: str) -> Clip:
    """One [H, W, 3] image -> a still clip of image_frames identical frames at t=0."""
    if image_frames < 1:
        raise InputError(f"{source}: image_frames={image_frames}; must be >= 1")
    frames = np.repeat(frame[None], image_frames, axis=0)  # [image_frames, H, W, 3]
    return Clip(frames=frames, timestamps=np.zeros(image_frames), source=source, is_image=True)


def load_video(
    path: str | os.PathLike,
    *,
    fps: float = 1.0,
    max_frames: int = 64,
    image_frames: int = 8,
    max_side: int | None = 448,
) -> Clip:
    """Load a video (sampled per `sample_indices`) or an image (replicated to `image_frames`).

    Images are recognised by extension (IMAGE_EXTENSIONS); an animated one (GIF, WebP, APNG) is a
    video, with its own frame times. Frames are downscaled so their short
    side is <= max_side (None: native size), keeping the aspect ratio.
    """
    path = Path(path)
    if not path.exists():
        raise VideoNotFoundError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise VideoDecodeError(
            f"{path}: is a directory, not a video or image; pass a file "
            "(for a folder of frames, pass them as a list of PIL images)"
        )
    if not path.is_file():
        raise VideoDecodeError(f"{path}: not a regular file (pipe or device); pass a video or image file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"{path.name}: the file is empty (0 bytes); it was probably not fully written")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return _load_image(path, fps, max_frames, image_frames, max_side)
    return _decode_frames(path, fps, max_frames, max_side)


# -----------------------------------------------------------------------------
# in-memory inputs


def _array_to_rgb(arr: np.ndarray, what: str) -> tuple[np.ndarray, bool]:
    """uint8 array -> ([T, H, W, 3] RGB, is_image). Accepts [H,W,3|4], [T,H,W], [T,H,W,1|3|4]."""
    if arr.dtype != np.uint8:
        raise InputError(
            f"{what}: dtype {arr.dtype}; expected uint8 RGB in 0..255 "
            "(for floats in [0, 1] pass (x * 255).round().astype(np.uint8))"
        )
    is_image = arr.ndim == 3 and arr.shape[-1] in (3, 4)
    if is_image:
        arr = arr[None]  # [1, H, W, C]
    elif arr.ndim == 3:
        arr = arr[..., None]  # grayscale [T, H, W] -> [T, H, W, 1]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        channels_first = arr.ndim == 4 and arr.shape[1] in (1, 3)
        hint = " (channels-first? permute to [T, H, W, 3])" if channels_first else ""
        raise InputError(
            f"{what}: shape {tuple(arr.shape)}; expected [T, H, W, 3] frames, [H, W, 3] image, "
            f"or grayscale [T, H, W]{hint}"
        )
    if 0 in arr.shape:
        raise InputError(f"{what}: shape {tuple(arr.shape)} has no frames or no pixels")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3]), is_image  # RGBA: alpha dropped


def _frames_clip(
    frames: np.ndarray,
    is_image: bool,
    source: str,
    fps: float,
    max_frames: int,
    image_frames: int,
    max_side: int | None,
) -> Clip:
    """[T, H, W, 3] in-memory frames -> Clip, downscaled to max_side.

    The frames are taken as already sampled at `fps` (timestamps t / fps); more than max_frames
    are thinned evenly to max_frames.
    """
    T, H, W, _ = frames.shape
    size = _reduced_size(W, H, max_side)
    if is_image:
        return _image_clip(_resize(frames[0], size), image_frames, source)
    idx = np.unique(np.linspace(0, T - 1, min(T, max_frames)).round().astype(np.int64))  # [T']
    frames = np.stack([_resize(f, size) for f in frames[idx]])  # [T', h, w, 3]
    return Clip(frames=frames, timestamps=idx / fps, source=source)


def to_clip(
    video,
    *,
    fps: float = 1.0,
    max_frames: int = 64,
    image_frames: int = 8,
    max_side: int | None = 448,
) -> Clip:
    """Anything video-like -> Clip.

    Accepts a path (video or image, see load_video); a uint8 np.ndarray or torch.Tensor of
    frames [T, H, W, 3] (also [H, W, 3] = one image, grayscale [T, H, W] / [T, H, W, 1], RGBA);
    a PIL.Image (one image) or a non-empty list of PIL images (one video, same size); a Clip
    (returned as is). In-memory frames are taken as sampled at `fps`.
    """
    if isinstance(video, Clip):
        return video
    if isinstance(video, (str, os.PathLike)):
        return load_video(video, fps=fps, max_frames=max_frames, image_frames=image_frames, max_side=max_side)
    if isinstance(video, torch.Tensor):
        frames, is_image = _array_to_rgb(video.detach().cpu().numpy(), "tensor")
        return _frames_clip(frames, is_image, "tensor", fps, max_frames, image_frames, max_side)
    if isinstance(video, np.ndarray):
        frames, is_image = _array_to_rgb(video, "array")
        return _frames_clip(frames, is_image, "array", fps, max_frames, image_frames, max_side)

    from PIL import Image

    if isinstance(video, Image.Image):
        frame = np.asarray(video.convert("RGB"))  # [H, W, 3]
        return _frames_clip(frame[None], True, "PIL image", fps, max_frames, image_frames, max_side)
    if isinstance(video, (list, tuple)):
        if not video:
            raise InputError("video: got an empty list; pass at least one PIL image")
        bad = [type(x).__name__ for x in video if not isinstance(x, Image.Image)]
        if bad:
            raise InputError(f"video: a list must hold only PIL images, got {sorted(set(bad))}")
        sizes = sorted({im.size for im in video})
        if len(sizes) > 1:
            raise InputError(f"video: PIL images differ in size {sizes[:4]}; resize them to one size")
        frames = np.stack([np.asarray(im.convert("RGB")) for im in video])  # [T, H, W, 3]
        return _frames_clip(frames, False, "PIL images", fps, max_frames, image_frames, max_side)
    raise InputError(
        f"video: unsupported type {type(video).__name__}; pass a path, a uint8 array/tensor "
        "[T, H, W, 3], a list of PIL images, or a Clip"
    )


# -----------------------------------------------------------------------------
# preprocessing for the vision encoder


def _check_frames(frames: np.ndarray, what: str) -> None:
    ok = isinstance(frames, np.ndarray) and frames.dtype == np.uint8
    if not (ok and frames.ndim == 4 and frames.shape[-1] == 3):
        desc = f"{type(frames).__name__} {getattr(frames, 'dtype', '')} {tuple(getattr(frames, 'shape', ()))}"
        raise InputError(f"{what}: got {desc}; expected a uint8 np.ndarray [T, H, W, 3] (use to_clip first)")


def center_crop(frames: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] -> [T, s, s, 3], the centred square, s = min(H, W). A view, no copy."""
    _check_frames(frames, "center_crop")
    H, W = frames.shape[1:3]
    s = min(H, W)
    top, left = (H - s) // 2, (W - s) // 2
    return frames[:, top : top + s, left : left + s]


def preprocess(
    frames: np.ndarray,
    image_size: int,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> torch.Tensor:
    """[T, H, W, 3] uint8 -> [T, 3, S, S] float32: centre square crop, resize to S x S, /255, normalise.

    Same as short-side resize to S then centre crop. Area filter when shrinking, cubic when growing.
    """
    _check_frames(frames, "preprocess")
    if image_size < 1:
        raise InputError(f"preprocess: image_size={image_size}; must be >= 1")
    sq = center_crop(frames)  # [T, s, s, 3]
    x = np.stack([_resize(f, (image_size, image_size)) for f in sq])  # [T, S, S, 3] uint8
    x = torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255)  # [T, 3, S, S] in [0, 1]
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


# -----------------------------------------------------------------------------
# live frame streams: a camera, a video file or a URL, frame by frame as it comes


def _is_url(source: str) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", source) is not None


class FrameStream:
    """Frames from a camera index, a video or animated image file, or any URL OpenCV's VideoCapture
    opens (rtsp://, http://), sampled at `fps` by the frames' timestamps. Iterate for
    (frame [H, W, 3] uint8 RGB, t seconds); the iteration ends when the source does.

    Timestamps: a file's own frame times (frame index / its frame rate; animated images: their
    durations); a camera or URL: seconds since its first frame arrived. realtime=True plays a file
    at its own rate (a camera or URL always comes in real time); a live source drops frames the
    consumer is too slow for (counted in `dropped`), a file read as fast as it decodes never does.
    A background thread reads the source, so a source that stalls raises VideoDecodeError after
    timeout_s instead of hanging. Use it as a context manager, or call close().
    """

    def __init__(self, source: str | int, *, fps: float = 1.0, realtime: bool = False,
                 timeout_s: float = 10.0, max_side: int | None = 448):
        import queue
        import threading

        if isinstance(source, str) and source.isdigit():
            source = int(source)
        if not (fps > 0 and timeout_s > 0):
            raise InputError(f"FrameStream: fps={fps}, timeout_s={timeout_s}; both must be > 0")
        self.source, self.fps, self.realtime = source, fps, realtime
        self.timeout_s, self.max_side = timeout_s, max_side
        self.name = f"camera {source}" if isinstance(source, int) else str(source)
        self.is_file = isinstance(source, str) and not _is_url(source)
        if self.is_file and not Path(source).exists():
            raise VideoNotFoundError(f"{source}: no such file; check the path (a camera is a number, e.g. 0)")
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self.dropped = 0  # frames a live source dropped because the consumer fell behind
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True, name=f"fvlm-stream {self.name}")
        self._thread.start()

    # ---- the reader thread: (frame, t) items, then None at the end, or an exception ----------------
    def _frames(self):
        """(frame RGB, t) for every frame of the source, t by the source's own clock."""
        if self.is_file and Path(self.source).suffix.lower() in IMAGE_EXTENSIONS:
            yield from self._image_frames()
            return
        import cv2

        if isinstance(self.source, int):
            cap = cv2.VideoCapture(self.source)
        else:
            ms = int(self.timeout_s * 1000)
            cap = cv2.VideoCapture(str(self.source), cv2.CAP_FFMPEG,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        try:
            if not cap.isOpened():
                fix = ("check that it is connected and not used by another program, or try another index"
                       if isinstance(self.source, int) else
                       "check the path or URL and the network; OpenCV opens what its FFmpeg reads")
                raise VideoDecodeError(f"{self.name}: cannot be opened; {fix}")
            native = cap.get(cv2.CAP_PROP_FPS) if self.is_file else 0.0
            if self.is_file and not (math.isfinite(native) and native > 0):
                raise VideoDecodeError(f"{self.name}: the file reports frame rate {native}; re-encode it "
                                       "with a fixed rate, e.g. `ffmpeg -i in -r 30 out.mp4`")
            t0, i = None, 0
            while not self._stop.is_set():
                ok, bgr = cap.read()
                if not ok:
                    return
                now = time.monotonic()
                t0 = now if t0 is None else t0
                yield bgr[..., ::-1], (i / native if self.is_file else now - t0)
                i += 1
        finally:
            cap.release()

    def _image_frames(self):
        """An image file: its frames with their start times (a still image: one frame at t=0)."""
        from PIL import Image, UnidentifiedImageError

        try:
            with _strict_pil():
                img = Image.open(self.source)
            with img:
                t = 0.0
                for i in range(getattr(img, "n_frames", 1)):
                    if self._stop.is_set():
                        return
                    with _strict_pil():  # per frame: the stream yields between frames
                        img.seek(i)
                        frame = np.asarray(img.convert("RGB"))  # composed frame; sets WebP's duration
                    yield frame, t
                    d = int(img.info.get("duration") or 0)
                    t += (d if d > 10 else 100) / 1000.0
        except (UnidentifiedImageError, OSError, EOFError) as e:
            raise VideoDecodeError(f"{self.name}: not a readable image ({e}); check the file") from e

    def _read(self) -> None:
        start, next_t = time.monotonic(), 0.0
        try:
            for frame, t in self._frames():
                if t + 1e-9 < next_t:  # sampled at fps by the frames' timestamps
                    continue
                next_t = (math.floor(t * self.fps + 1e-9) + 1) / self.fps
                if self.realtime and self.is_file:
                    time.sleep(max(0.0, start + t - time.monotonic()))
                frame = _resize(np.ascontiguousarray(frame), _reduced_size(frame.shape[1], frame.shape[0],
                                                                           self.max_side))
                self._put((frame, t))
            self._put(None)
        except Exception as e:  # noqa: BLE001  handed to the consumer, which re-raises it
            self._put(e)

    def _put(self, item) -> None:
        """Queue an item for the consumer. A live source (camera, URL, a file in real time) drops its
        oldest waiting frame when the consumer falls behind, so what it reads stays current; a file
        read as fast as it decodes waits instead (every sampled frame is read)."""
        import queue

        live = not self.is_file or self.realtime
        while not self._stop.is_set():
            try:
                return self._queue.put(item, timeout=0.1)
            except queue.Full:
                if live and isinstance(item, tuple):
                    try:
                        self._queue.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass

    # ---- the consumer ----------------------------------------------------------------------------
    def __iter__(self):
        import queue

        while True:
            try:
                item = self._queue.get(timeout=self.timeout_s)
            except queue.Empty:
                raise VideoDecodeError(
                    f"{self.name}: no frame for {self.timeout_s:g} s, the source stalled; check it, or "
                    "allow a longer wait (timeout)") from None
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    def close(self) -> None:
        """Stop reading; the reader thread ends at its next frame (or when a stalled read returns)."""
        self._stop.set()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
