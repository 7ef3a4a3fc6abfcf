"""fvlm.video: frame sampling, decoding (good and bad files), in-memory inputs, preprocessing.

All videos are written on the fly into tmp_path with OpenCV (mp4v), tiny, so the file runs in seconds.
"""

import struct
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from fvlm.errors import FVLMError, InputError, VideoDecodeError, VideoNotFoundError
from fvlm.video import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Clip,
    center_crop,
    load_video,
    preprocess,
    sample_indices,
    to_clip,
)


def write_video(path, frames, fps=8.0, is_color=True):
    """frames [T, H, W, 3] RGB (or [T, H, W] gray with is_color=False) -> mp4v file."""
    H, W = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (W, H), isColor=is_color)
    assert writer.isOpened()
    for f in frames:
        writer.write(f[..., ::-1].copy() if is_color else f)
    writer.release()
    return path


def ramp_video(path, T=64, H=48, W=64, fps=8.0):
    """Frame t is a flat grey of value 4*t, so a decoded frame tells which index it came from."""
    frames = np.repeat((np.arange(T, dtype=np.uint8) * 4)[:, None, None, None], 3, axis=3)
    return write_video(path, np.broadcast_to(frames, (T, H, W, 3)), fps)


# -----------------------------------------------------------------------------
# sample_indices


def test_sample_indices_short_clip_no_edge_skip():
    # 8 s at 8 fps: 8 frames; 8 - 2 < 8 s needed, so no edge skip: linspace(0, 63, 8)
    idx = sample_indices(64, 8.0)
    assert idx.tolist() == [0, 9, 18, 27, 36, 45, 54, 63]


def test_sample_indices_edge_skip_when_room():
    # 20 s at 10 fps, 20 frames wanted, no room (20 - 2 < 20): full range
    assert sample_indices(200, 10.0).tolist()[0] == 0
    assert sample_indices(200, 10.0).tolist()[-1] == 199
    # 100 s at 10 fps: n = 64, room (98 >= 64): skip 1 s = 10 frames at both ends
    idx = sample_indices(1000, 10.0)
    assert len(idx) == 64 and idx[0] == 10 and idx[-1] == 989
    # edge_skip_s=0 keeps the ends
    idx = sample_indices(1000, 10.0, edge_skip_s=0.0)
    assert idx[0] == 0 and idx[-1] == 999


@pytest.mark.parametrize(
    "num_frames, native_fps, fps, max_frames",
    [(1, 30.0, 1.0, 64), (7, 30.0, 1.0, 64), (300, 30.0, 1.0, 64), (216000, 30.0, 1.0, 64),
     (7200, 1.0, 1.0, 64), (10, 0.5, 1.0, 64), (5000, 25.0, 2.0, 16), (90, 30.0, 4.0, 64)],
)
def test_sample_indices_properties(num_frames, native_fps, fps, max_frames):
    idx = sample_indices(num_frames, native_fps, fps, max_frames)
    duration = num_frames / native_fps
    assert idx.dtype == np.int64
    assert 1 <= len(idx) <= min(max_frames, max(1, round(duration * fps)))
    assert np.all(np.diff(idx) > 0)  # increasing, unique
    assert idx[0] >= 0 and idx[-1] <= num_frames - 1


def test_sample_indices_one_frame_and_cap():
    assert sample_indices(1, 30.0).tolist() == [0]
    assert len(sample_indices(216000, 30.0)) == 64  # 2 h at 30 fps
    assert len(sample_indices(216000, 30.0, max_frames=8)) == 8
    # fewer frames than wanted (0.5 fps source, 20 s -> 20 wanted, 10 exist): all of them
    assert sample_indices(10, 0.5).tolist() == list(range(10))


@pytest.mark.parametrize(
    "args", [(0, 30.0), (10, 0.0), (10, float("nan")), (10, 30.0, 0.0), (10, 30.0, 1.0, 0)]
)
def test_sample_indices_bad_args(args):
    with pytest.raises(InputError):
        sample_indices(*args)


# -----------------------------------------------------------------------------
# load_video: good files


def test_load_video_samples_whole_clip(tmp_path):
    clip = load_video(ramp_video(tmp_path / "ramp.mp4"))  # 8 s at 8 fps
    assert clip.frames.shape == (8, 48, 64, 3) and clip.frames.dtype == np.uint8
    assert not clip.is_image and clip.source.endswith("ramp.mp4")
    np.testing.assert_allclose(clip.timestamps, np.array([0, 9, 18, 27, 36, 45, 54, 63]) / 8.0)
    # the decoded frames are the requested ones (value 4 * index, lossy codec)
    np.testing.assert_allclose(clip.frames.mean(axis=(1, 2, 3)), clip.timestamps * 8 * 4, atol=4)


def test_load_video_one_frame(tmp_path):
    path = write_video(tmp_path / "one.mp4", np.full((1, 48, 64, 3), 200, np.uint8))
    clip = load_video(path)
    assert clip.frames.shape == (1, 48, 64, 3) and clip.timestamps.tolist() == [0.0]


def test_load_video_grayscale_becomes_rgb(tmp_path):
    path = write_video(tmp_path / "gray.mp4", np.full((16, 48, 64), 100, np.uint8), is_color=False)
    clip = load_video(path)
    assert clip.frames.shape == (2, 48, 64, 3)
    assert abs(int(clip.frames.mean()) - 100) <= 4


def test_load_video_4k_decodes_reduced(tmp_path):
    path = write_video(tmp_path / "uhd.mp4", np.zeros((2, 2160, 3840, 3), np.uint8), fps=2.0)
    clip = load_video(path, max_side=448)
    assert clip.frames.shape == (1, 448, 796, 3)  # short side 448, aspect 16:9 kept
    assert load_video(path, max_side=64).frames.shape == (1, 64, 114, 3)


def test_load_video_decord_bad_width(tmp_path):
    # decord 0.6.0 cannot output 48-px-wide frames; we decode wider and resize back
    clip = load_video(ramp_video(tmp_path / "narrow.mp4", W=48))
    assert clip.frames.shape == (8, 48, 48, 3)


def test_load_video_two_hours_seeks(tmp_path, monkeypatch):
    import decord

    path = tmp_path / "long.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 1.0, (32, 32))
    frame = np.zeros((32, 32, 3), np.uint8)
    for t in range(7200):  # 2 h at 1 fps
        frame[:] = (t // 60) * 2  # grey level tells the minute
        writer.write(frame)
    writer.release()

    calls = []
    get_batch = decord.VideoReader.get_batch

    def spy(self, indices):
        calls.append(len(indices))
        return get_batch(self, indices)

    monkeypatch.setattr(decord.VideoReader, "get_batch", spy)
    start = time.perf_counter()
    clip = load_video(path)
    assert time.perf_counter() - start < 10
    assert calls == [64]  # one batched, seeking read
    assert clip.frames.shape == (64, 32, 32, 3)
    assert clip.timestamps[0] == 1.0 and clip.timestamps[-1] == 7198.0  # spans the whole video
    # the right frames came back (mp4v shifts flat greys by up to ~4 levels; a minute is 2 levels)
    np.testing.assert_allclose(clip.frames.mean(axis=(1, 2, 3)), (clip.timestamps // 60) * 2, atol=5)


def test_load_image_replicated(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.full((600, 900, 4), 77, np.uint8), "RGBA").save(path)
    clip = load_video(path, image_frames=4, max_side=300)
    assert clip.is_image and clip.frames.shape == (4, 300, 450, 3)
    assert clip.timestamps.tolist() == [0.0] * 4
    assert to_clip(str(path)).frames.shape == (8, 448, 672, 3)


# -----------------------------------------------------------------------------
# animated images are videos


SHAPES_CLIP = Path(__file__).resolve().parents[1] / "fvlm" / "assets" / "examples" / "shapes_easy.mp4"


def all_frames(path) -> np.ndarray:
    """Every frame of a video file, [T, H, W, 3] RGB (OpenCV)."""
    cap, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, f = cap.read()
        if not ok:
            return np.stack(frames)
        frames.append(f[..., ::-1])


def save_animation(path, frames, duration_ms, **kw):
    ims = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=duration_ms, loop=0, **kw)
    return path


def test_animated_gif_is_a_video_like_its_mp4(tmp_path):
    """A ShapesQA clip as a GIF (100 ms frames) and as a 10-fps mp4: the same sampled moments, real
    timestamps (not t=0 x 8), and the shipped model reads both alike: the same answer, the same
    gaze (total variation between the two maps, measured <= 0.02 per frame) and the right shape."""
    import fvlm

    frames = all_frames(SHAPES_CLIP)  # [64, 128, 128, 3]
    gif = save_animation(tmp_path / "clip.gif", frames, 100)
    mp4 = write_video(tmp_path / "clip.mp4", frames, fps=10.0)
    g, m = load_video(gif, fps=1, max_frames=16), load_video(mp4, fps=1, max_frames=16)
    assert not g.is_image and g.frames.shape == m.frames.shape == (6, 128, 128, 3)
    assert g.timestamps.tolist() == m.timestamps.tolist() == [0.0, 1.3, 2.5, 3.8, 5.0, 6.3]
    np.testing.assert_allclose(g.frames.mean((1, 2, 3)), m.frames.mean((1, 2, 3)), atol=3)
    model = fvlm.load(device="cpu")
    a = model.generate(str(gif), "What shape is the red object?", max_new_tokens=8)
    b = model.generate(str(mp4), "What shape is the red object?", max_new_tokens=8)
    assert a.text == b.text == "triangle"
    assert a.timestamps.tolist() == b.timestamps.tolist()
    assert (0.5 * np.abs(a.attention - b.attention).sum((1, 2))).max() < 0.1


def test_animated_webp_with_merged_frames_samples_the_mp4s_moments():
    """Lossless WebP merges repeated frames into longer ones; the clip still samples the mp4's
    moments (8 fps, 125 ms frames) and shows the frame on screen at each."""
    import tempfile

    frames = all_frames(SHAPES_CLIP)
    with tempfile.TemporaryDirectory() as d:
        webp = save_animation(Path(d) / "clip.webp", frames, 125, lossless=True)
        w = load_video(webp, fps=1, max_frames=16)
    m = load_video(SHAPES_CLIP, fps=1, max_frames=16)
    assert w.timestamps.tolist() == m.timestamps.tolist() == [i * 1.125 for i in range(8)]
    np.testing.assert_array_equal(w.frames, frames[np.round(m.timestamps * 8).astype(int)])


def test_animated_image_variable_durations(tmp_path):
    """Frames of 100, 300 and 200 ms: on a 100-ms timeline the clip shows frame 0, 1, 1, 1, 2, 2."""
    frames = np.stack([np.full((16, 16, 3), v, np.uint8) for v in (0, 120, 240)])
    gif = save_animation(tmp_path / "v.gif", frames, [100, 300, 200])
    clip = load_video(gif, fps=10, max_frames=64)
    assert clip.timestamps.tolist() == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert clip.frames[:, 0, 0, 0].tolist() == [0, 120, 120, 120, 240, 240]


def test_still_gif_and_webp_stay_images(tmp_path):
    for name in ("still.gif", "still.webp"):
        Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(tmp_path / name)
        clip = load_video(tmp_path / name, image_frames=3)
        assert clip.is_image and clip.timestamps.tolist() == [0.0] * 3


def test_truncated_animated_gif(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    data = save_animation(tmp_path / "a.gif", frames, 100).read_bytes()
    (tmp_path / "cut.gif").write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoDecodeError) as e:
        load_video(tmp_path / "cut.gif")
    check_error(e, "cut.gif", "convert")


# -----------------------------------------------------------------------------
# load_video: bad files. Every error is an FVLMError naming the file.


def check_error(exc_info, name, *words):
    msg = str(exc_info.value)
    assert isinstance(exc_info.value, FVLMError)
    assert name in msg, msg
    for w in words:
        assert w in msg, msg


def test_missing_file(tmp_path):
    with pytest.raises(VideoNotFoundError) as e:
        load_video(tmp_path / "nope.mp4")
    check_error(e, "nope.mp4", "no such file")


def test_directory(tmp_path):
    (tmp_path / "clips.mp4").mkdir()
    with pytest.raises(VideoDecodeError) as e:
        load_video(tmp_path / "clips.mp4")
    check_error(e, "clips.mp4", "directory")


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.mp4").touch()
    with pytest.raises(VideoDecodeError) as e:
        load_video(tmp_path / "empty.mp4")
    check_error(e, "empty.mp4", "empty")


@pytest.mark.parametrize(
    "name, content",
    [("random.mp4", np.random.default_rng(0).bytes(20000)), ("notes.mp4", b"hello, not a video\n" * 50),
     ("random.avi", np.random.default_rng(1).bytes(5000)), ("fake.png", b"not an image")],
)
def test_garbage_file(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(VideoDecodeError) as e:
        load_video(tmp_path / name)
    check_error(e, name, "not a readable")


def test_zero_frame_video(tmp_path):
    path = tmp_path / "zero.mp4"
    cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8.0, (64, 48)).release()
    assert path.stat().st_size > 0  # a container, but no video stream
    with pytest.raises(VideoDecodeError) as e:
        load_video(path)
    check_error(e, "zero.mp4", "no video stream")


def test_truncated_video(tmp_path):
    data = ramp_video(tmp_path / "full.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # mp4v puts its index at the end
    with pytest.raises(VideoDecodeError) as e:
        load_video(tmp_path / "cut.mp4")
    check_error(e, "cut.mp4")


def test_absurd_frame_count_rejected_before_decord(tmp_path):
    # decord reserves memory for the declared count and aborts the process (std::bad_alloc) on
    # this file; the PyAV probe must reject it first (a regression here kills the test run)
    data = bytearray(ramp_video(tmp_path / "ok.mp4").read_bytes())
    p = data.find(b"stts")
    data[p + 12 : p + 16] = struct.pack(">I", 0xC0000000 | 64)  # first sample count: 64 -> 3.2e9
    (tmp_path / "huge.mp4").write_bytes(bytes(data))
    with pytest.raises(VideoDecodeError) as e:
        load_video(tmp_path / "huge.mp4")
    check_error(e, "huge.mp4", "corrupt")


# -----------------------------------------------------------------------------
# to_clip: in-memory inputs


def test_to_clip_arrays_and_tensors():
    video = np.random.default_rng(0).integers(0, 256, (5, 40, 60, 3), dtype=np.uint8)
    clip = to_clip(video)
    assert clip.frames.shape == (5, 40, 60, 3) and not clip.is_image
    np.testing.assert_array_equal(clip.frames, video)
    np.testing.assert_allclose(clip.timestamps, np.arange(5))  # taken as sampled at fps=1
    assert to_clip(torch.from_numpy(video)).frames.shape == (5, 40, 60, 3)
    # more than max_frames: thinned evenly; larger than max_side: downscaled
    clip = to_clip(np.zeros((100, 600, 800, 3), np.uint8), max_frames=10, max_side=60)
    assert clip.frames.shape == (10, 60, 80, 3)
    assert clip.timestamps[0] == 0 and clip.timestamps[-1] == 99


def test_to_clip_single_image_gray_rgba():
    img = to_clip(np.full((30, 40, 3), 9, np.uint8), image_frames=3)
    assert img.is_image and img.frames.shape == (3, 30, 40, 3) and img.timestamps.tolist() == [0, 0, 0]
    gray = to_clip(np.full((4, 30, 40), 50, np.uint8))
    assert gray.frames.shape == (4, 30, 40, 3) and (gray.frames == 50).all()
    assert to_clip(np.full((4, 30, 40, 1), 50, np.uint8)).frames.shape == (4, 30, 40, 3)
    rgba = np.zeros((2, 30, 40, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    out = to_clip(rgba).frames
    assert out.shape == (2, 30, 40, 3) and (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()


def test_to_clip_pil_and_clip():
    ims = [Image.new("RGB", (40, 30), (i * 40, 0, 0)) for i in range(3)]
    clip = to_clip(ims)
    assert clip.frames.shape == (3, 30, 40, 3) and clip.source == "PIL images"
    assert clip.frames[2, 0, 0].tolist() == [80, 0, 0]
    assert to_clip([Image.new("L", (40, 30))]).frames.shape == (1, 30, 40, 3)
    assert to_clip(ims[0]).is_image
    assert to_clip(clip) is clip


@pytest.mark.parametrize(
    "bad",
    [3, {"frames": 1}, [1, 2, 3], [], np.zeros((2, 8, 8, 3), np.float32), np.zeros((8, 8), np.uint8),
     np.zeros((2, 2, 8, 8, 3), np.uint8), np.zeros((2, 3, 8, 8), np.uint8), np.zeros((0, 8, 8, 3), np.uint8),
     torch.zeros(2, 8, 8, 3), [Image.new("RGB", (8, 8)), Image.new("RGB", (9, 8))]],
)
def test_to_clip_bad_inputs(bad):
    with pytest.raises(InputError) as e:
        to_clip(bad)
    assert "video" in str(e.value) or "array" in str(e.value) or "tensor" in str(e.value)


def test_to_clip_channels_first_hint():
    with pytest.raises(InputError, match="channels-first"):
        to_clip(np.zeros((2, 3, 8, 8), np.uint8))


# -----------------------------------------------------------------------------
# preprocess / center_crop


def test_preprocess_shape_and_normalisation():
    frames = np.full((3, 50, 80, 3), (255, 128, 0), np.uint8)
    x = preprocess(frames, 32)
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    expect = (torch.tensor([255, 128, 0]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x[:, :, 10, 20], expect.expand(3, 3), atol=1e-5, rtol=0)
    assert preprocess(frames[:, :10, :10], 64).shape == (3, 3, 64, 64)  # upsampling works too


def test_center_crop_keeps_centre():
    frames = np.zeros((2, 40, 100, 3), np.uint8)
    frames[:, :, 30:70] = 255  # the central 40 columns
    crop = center_crop(frames)
    assert crop.shape == (2, 40, 40, 3) and (crop == 255).all()
    tall = np.zeros((1, 100, 40, 3), np.uint8)
    tall[:, 30:70] = 255
    assert (center_crop(tall) == 255).all()
    x = preprocess(frames, 16)  # the white centre survives, the black borders are cropped away
    torch.testing.assert_close(x, preprocess(np.full((2, 16, 16, 3), 255, np.uint8), 16))


@pytest.mark.parametrize(
    "bad", [np.zeros((8, 8, 3), np.uint8), np.zeros((1, 8, 8, 3), np.float32), torch.zeros(1, 8, 8, 3)]
)
def test_preprocess_bad_input(bad):
    with pytest.raises(InputError):
        preprocess(bad, 16)


def test_clip_dataclass_defaults():
    clip = Clip(frames=np.zeros((1, 2, 2, 3), np.uint8), timestamps=np.zeros(1), source="x")
    assert clip.is_image is False
