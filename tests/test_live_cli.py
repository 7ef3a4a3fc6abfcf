"""`fvlm live` and FrameStream: files, animated images, Ctrl-C, sources that fail, stall or end."""

import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fvlm.cli import main
from fvlm.errors import FVLMError, VideoDecodeError, VideoNotFoundError
from fvlm.live import LiveSession, gaze
from fvlm.video import FrameStream

EXAMPLE = Path(__file__).resolve().parents[1] / "fvlm" / "assets" / "examples" / "shapes_easy.mp4"
FRAME_LINE = re.compile(r"^t=\s*([\d.]+)s  frame (\d+)\s+peak \(([\d.]+), ([\d.]+)\)  "
                        r"centroid \(([\d.]+), ([\d.]+)\)  entropy ([\d.]+)$")


@pytest.fixture
def saved_model(make_model, tmp_path):
    path = tmp_path / "model"
    make_model(seed=3, max_frames=4).save_pretrained(path)
    return str(path)


def live(saved_model, source, *extra) -> list[str]:
    return ["live", str(source), "-p", "What color is the square?", "--model", saved_model, "--device", "cpu",
            "--max-new-tokens", "3", *extra]


def test_live_file_lines_answers_and_heatmaps(saved_model, tmp_path, capsys):
    """An 8-s clip at --fps 1: 8 frame lines at t = 0..7 s, answers at 3 and 6 s and at the end, one
    overlay PNG per frame; the window (max_frames 4) slides on the way."""
    rc = main(live(saved_model, EXAMPLE, "--every", "3", "--heatmaps", str(tmp_path / "maps")))
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0
    frames = [FRAME_LINE.match(x) for x in lines if " frame " in x]
    assert all(frames) and [float(m[1]) for m in frames] == [float(t) for t in range(8)]
    assert [int(m[2]) for m in frames] == list(range(8))
    assert all(0 <= float(v) <= 1 for m in frames for v in m.groups()[2:6])
    answers = [x for x in lines if "answer" in x]
    assert [a.split("answer")[0].strip() for a in answers] == ["t=    3.00s", "t=    6.00s", "t=    7.00s  final"]
    assert "(8 frames)" in answers[-1]
    assert len(sorted((tmp_path / "maps").glob("frame_*.png"))) == 8


def test_live_animated_gif_has_its_frame_times(saved_model, tmp_path, capsys):
    frames = [Image.fromarray(np.full((32, 32, 3), v, np.uint8)) for v in range(0, 250, 10)]  # 25 x 200 ms
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=200, loop=0)
    assert main(live(saved_model, tmp_path / "a.gif", "--fps", "2", "--every", "0")) == 0
    lines = capsys.readouterr().out.splitlines()
    times = [float(FRAME_LINE.match(x)[1]) for x in lines if " frame " in x]
    assert times == [0.0, 0.6, 1.0, 1.6, 2.0, 2.6, 3.0, 3.6, 4.0, 4.6]  # 0.5-s grid, frames start every 0.2 s
    assert lines[-1].startswith("t=    4.60s  final answer (10 frames): ")


def test_live_ctrl_c_ends_with_a_final_answer(saved_model, capsys, monkeypatch):
    push = LiveSession.push
    calls = []

    def interrupted(self, frame, timestamp=None):
        calls.append(timestamp)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return push(self, frame, timestamp)

    monkeypatch.setattr(LiveSession, "push", interrupted)
    assert main(live(saved_model, EXAMPLE)) == 0
    out = capsys.readouterr()
    assert "interrupted" in out.err
    assert "final answer (2 frames)" in out.out.splitlines()[-1]


@pytest.mark.parametrize("source, words", [
    ("missing.mp4", ["missing.mp4", "no such file"]),
    ("97", ["camera 97", "cannot be opened", "another index"]),
    ("http://127.0.0.1:9/none.mp4", ["http://127.0.0.1:9/none.mp4", "cannot be opened", "URL"]),
])
def test_live_sources_that_do_not_open(saved_model, tmp_path, capsys, source, words):
    source = tmp_path / source if source.endswith(".mp4") and "://" not in source else source
    assert main(live(saved_model, source, "--timeout", "5")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err


def test_frame_stream_errors_are_fvlm_errors(tmp_path):
    with pytest.raises(VideoNotFoundError, match="nope.mp4"):
        FrameStream(str(tmp_path / "nope.mp4"))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    with pytest.raises(VideoDecodeError, match="junk.mp4"):
        list(FrameStream(str(junk), timeout_s=10))
    with pytest.raises(FVLMError, match="fps"):
        FrameStream(str(EXAMPLE), fps=0)


def test_frame_stream_that_stalls_raises_instead_of_hanging(tmp_path):
    """A pipe nobody writes to: no frame ever comes; the stream raises after its timeout."""
    fifo = tmp_path / "stalled.mp4"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    try:
        with pytest.raises(VideoDecodeError, match=r"stalled.mp4: no frame for 1 s, the source stalled"):
            list(FrameStream(str(fifo), timeout_s=1))
        assert time.monotonic() - t0 < 10
    finally:  # let the reader thread's open() return and end on the empty pipe
        threading.Thread(target=lambda: os.close(os.open(fifo, os.O_WRONLY)), daemon=True).start()


def test_frame_stream_ends_with_the_source_and_plays_in_real_time():
    t0 = time.monotonic()
    items = list(FrameStream(str(EXAMPLE), fps=2, realtime=True))
    took = time.monotonic() - t0
    assert [t for _, t in items] == [i / 2 for i in range(16)]
    assert 7.0 <= took < 20, took  # the last frame is at 7.5 s
    assert items[0][0].shape == (128, 128, 3) and items[0][0].dtype == np.uint8


def test_gaze():
    a = np.zeros((4, 4))
    a[1, 3] = 1.0
    assert gaze(a) == {"peak": (0.875, 0.375), "centroid": (0.875, 0.375)}
    g = gaze(np.ones((2, 2)))
    assert g["centroid"] == (0.5, 0.5)


def test_frame_stream_live_source_drops_what_a_slow_reader_misses():
    """In real time a slow consumer gets current frames (old ones dropped); read as fast as it decodes,
    a file gives every sampled frame, however slow the consumer."""
    seen = []
    with FrameStream(str(EXAMPLE), fps=8, realtime=True) as stream:
        for _, t in stream:
            seen.append(t)
            time.sleep(0.4)
    assert stream.dropped > 0 and len(seen) + stream.dropped == 64
    assert seen == sorted(seen) and seen[-1] == 63 / 8
    with FrameStream(str(EXAMPLE), fps=8) as stream:
        times = []
        for _, t in stream:
            times.append(t)
            time.sleep(0.002)
    assert stream.dropped == 0 and times == [i / 8 for i in range(64)]
