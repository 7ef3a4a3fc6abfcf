"""fvlm.heatmap: attention upsampling, colour overlays, PNG + MP4 output (all or nothing)."""

import cv2
import numpy as np
import pytest
import torch

import fvlm.heatmap as heatmap
from fvlm.errors import InputError
from fvlm.heatmap import overlay, overlay_frames, save_heatmaps, upsample_attention, write_mp4


def count_frames(path):
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return n, fps


def random_inputs(T=4, H=64, W=64, g=4, seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    attention = rng.random((T, g, g)).astype(np.float32)
    return frames, attention


def test_upsample_attention_range_and_constant():
    up = upsample_attention(np.array([[0.0, 1.0], [2.0, 3.0]]), (10, 20))
    assert up.shape == (10, 20) and up.min() == 0.0 and up.max() == 1.0
    flat = upsample_attention(np.full((3, 3), 0.7), (9, 9))
    assert np.isfinite(flat).all() and (flat == 0).all()
    with pytest.raises(InputError, match="NaN"):
        upsample_attention(np.array([[np.nan, 1.0]]), (4, 4))


def test_overlay_shape_dtype():
    frame = np.full((48, 80, 3), 128, np.uint8)
    out = overlay(frame, np.random.default_rng(0).random((3, 5)))
    assert out.shape == (48, 80, 3) and out.dtype == np.uint8
    assert overlay(frame, torch.rand(3, 5, dtype=torch.bfloat16)).shape == (48, 80, 3)  # tensors work
    assert overlay(frame, np.ones((3, 5)), alpha=0.0).tolist() == frame.tolist()


@pytest.mark.parametrize("colormap", ["jet", "inferno"])
def test_overlay_hottest_cell_turns_hot(colormap):
    # black frame, 4x4 grid, hottest cell (1, 2): the overlay moves most toward the colormap's
    # hot colour (its value at 255, converted to RGB) inside that cell
    frame = np.zeros((64, 64, 3), np.uint8)
    attn = np.zeros((4, 4))
    attn[1, 2] = 1.0
    out = overlay(frame, attn, colormap=colormap).astype(float)
    code = getattr(cv2, f"COLORMAP_{colormap.upper()}")
    hot = cv2.applyColorMap(np.full((1, 1), 255, np.uint8), code)[0, 0, ::-1].astype(float)  # RGB
    toward_hot = np.linalg.norm(frame - hot, axis=-1) - np.linalg.norm(out - hot, axis=-1)  # [64, 64]
    y, x = np.unravel_index(toward_hot.argmax(), toward_hot.shape)
    assert (y // 16, x // 16) == (1, 2)
    cell = toward_hot[16:32, 32:48].mean()
    assert cell > toward_hot[:16].mean() and cell > toward_hot[48:].mean()


def test_overlay_frames_upscales_and_labels():
    frames, attention = random_inputs(T=3, H=32, W=48)
    plain = overlay_frames(frames, attention, min_side=128)
    assert len(plain) == 3 and plain[0].shape == (128, 192, 3)
    labelled = overlay_frames(frames, attention, timestamps=[0.0, 1.0, 2.0], min_side=128)
    corner = (slice(0, 30), slice(0, 90))
    assert not np.array_equal(labelled[0][corner], plain[0][corner])  # text drawn top-left
    assert np.array_equal(labelled[0][100:], plain[0][100:])  # nothing else changed
    assert overlay_frames(frames, attention, min_side=16)[0].shape == (32, 48, 3)  # no downscale


@pytest.mark.parametrize(
    "frames, attention",
    [(np.zeros((3, 8, 8, 3), np.uint8), np.zeros((2, 4, 4))),  # T differs
     (np.zeros((3, 8, 8, 3), np.uint8), np.zeros((3, 16))),  # flat attention
     (np.zeros((8, 8, 3), np.uint8), np.zeros((1, 4, 4))),  # one frame without T
     (np.zeros((3, 8, 8, 3), np.float32), np.zeros((3, 4, 4))),  # float frames
     (np.zeros((3, 8, 8, 3), np.uint8), None)],  # no attention
)
def test_shape_errors(tmp_path, frames, attention):
    with pytest.raises(InputError) as e:
        save_heatmaps(frames, attention, tmp_path / "out")
    assert "attention" in str(e.value) or "frames" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_mismatched_t_names_shapes(tmp_path):
    with pytest.raises(InputError, match=r"\(2, 4, 4\).*\(3, 8, 8, 3\)"):
        save_heatmaps(np.zeros((3, 8, 8, 3), np.uint8), np.zeros((2, 4, 4)), tmp_path)


def test_save_heatmaps_pngs_and_mp4(tmp_path):
    frames, attention = random_inputs(T=5, H=64, W=64)
    files = save_heatmaps(frames, attention, tmp_path / "maps", timestamps=np.arange(5) * 2.0, fps=2.0)
    assert [p.name for p in files.pngs] == [f"frame_{t:03d}.png" for t in range(5)]
    png = cv2.imread(str(files.pngs[0]))
    assert png.shape == (256, 256, 3)  # 64-px frames upscaled to min_side
    assert files.mp4 == tmp_path / "maps" / "overlay.mp4"
    assert count_frames(files.mp4) == (5, 2.0)
    assert files.codec in ("avc1", "libx264", "h264", "mp4v")
    assert (files.note is None) == (files.codec != "mp4v")
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == sorted(
        [p.name for p in files.pngs] + ["overlay.mp4"]
    )  # no staging leftovers


def test_save_heatmaps_without_mp4(tmp_path):
    frames, attention = random_inputs(T=2)
    files = save_heatmaps(frames, attention, tmp_path, mp4=False, prefix="att")
    assert files.mp4 is None and files.codec == ""
    assert [p.name for p in files.pngs] == ["att_000.png", "att_001.png"]


def test_error_midway_leaves_no_files(tmp_path, monkeypatch):
    frames, attention = random_inputs(T=4)

    def broken_writer(images, path, fps):
        path.write_bytes(b"half an mp4")
        raise OSError("disk full")

    monkeypatch.setattr(heatmap, "write_mp4", broken_writer)
    with pytest.raises(OSError, match="disk full"):
        save_heatmaps(frames, attention, tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither the PNGs nor the MP4 nor the staging folder

    calls = []
    real_png = heatmap._write_png

    def png_fails_third(path, img):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        real_png(path, img)

    monkeypatch.setattr(heatmap, "_write_png", png_fails_third)
    with pytest.raises(OSError):
        save_heatmaps(frames, attention, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_write_mp4_codecs_and_atomicity(tmp_path, monkeypatch):
    frames = [np.full((45, 61, 3), 20 * t, np.uint8) for t in range(6)]  # odd size: padded to even
    codec = write_mp4(frames, tmp_path / "a.mp4", fps=3.0)
    assert codec in ("avc1", "libx264", "h264")  # H.264 is available here (PyAV)
    assert count_frames(tmp_path / "a.mp4") == (6, 3.0)

    # no PyAV H.264 and no OpenCV avc1: mp4v fallback, still readable
    monkeypatch.setattr(heatmap, "_write_pyav", lambda *a: "PyAV: not installed")
    monkeypatch.setattr(heatmap, "_opencv_has_h264", lambda: False)
    assert write_mp4(frames, tmp_path / "b.mp4", fps=3.0) == "mp4v"
    assert count_frames(tmp_path / "b.mp4")[0] == 6
    files = save_heatmaps(np.stack(frames[:2]), np.ones((2, 2, 2)), tmp_path / "c")
    assert files.codec == "mp4v" and "browsers" in files.note

    # every encoder fails: an error, and neither the target nor a temporary file is left
    monkeypatch.setattr(heatmap, "_write_opencv", lambda *a: "OpenCV: no encoder")
    with pytest.raises(OSError, match="no MP4 encoder"):
        write_mp4(frames, tmp_path / "d.mp4", fps=3.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4", "c"]


def test_write_mp4_bad_frames(tmp_path):
    with pytest.raises(InputError):
        write_mp4([], tmp_path / "x.mp4", fps=2.0)
    mixed = [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)]
    with pytest.raises(InputError):
        write_mp4(mixed, tmp_path / "x.mp4", fps=2.0)
    with pytest.raises(InputError):
        write_mp4([np.zeros((8, 8, 3), np.uint8)], tmp_path / "x.mp4", fps=0)
    assert list(tmp_path.iterdir()) == []
