"""fvlm.progress: a few readable lines in a log, one redrawn line on a terminal."""

import io

from fvlm.progress import Progress, format_seconds, track


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_format_seconds():
    assert format_seconds(0) == "0:00"
    assert format_seconds(75.4) == "1:15"
    assert format_seconds(4000) == "1:06:40"


def test_log_gets_a_few_lines_not_one_per_update():
    log = io.StringIO()
    assert list(track(range(5000), "eval coarse_fine", stream=log)) == list(range(5000))
    lines = log.getvalue().splitlines()
    assert 2 <= len(lines) <= 12, lines
    assert "\r" not in log.getvalue()
    assert lines[0].startswith("eval coarse_fine") and "0/5000" in lines[0]
    assert "5000/5000" in lines[-1] and "100%" in lines[-1]


def test_log_lines_by_time_with_time_left(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("fvlm.progress.time.monotonic", clock)
    log = io.StringIO()
    bar = Progress(100, "e2e fVLM autoregressive 64 frames", stream=log, every_s=30, min_gap_s=2)
    for _ in range(4):  # 4 % done after 40 s: one line at 30 s (no tenth reached yet)
        clock.now += 10
        bar.update(1)
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and "3/100" in lines[1] and "0:30 elapsed" in lines[1]
    assert "~16:10 left" in lines[1]  # 10 s per item, 97 to go
    for _ in range(6):  # 10 % after 100 s: the tenth prints a line
        clock.now += 10
        bar.update(1)
    assert "10/100" in log.getvalue().splitlines()[-1]
    bar.write("a message")
    bar.close()
    lines = log.getvalue().splitlines()
    assert lines[-2] == "a message" and "10/100" in lines[-1]


def test_tenths_need_a_gap(monkeypatch):
    """Fast updates do not print each tenth: lines come at most every min_gap_s."""
    clock = FakeClock()
    monkeypatch.setattr("fvlm.progress.time.monotonic", clock)
    log = io.StringIO()
    bar = Progress(10, "fast", stream=log, min_gap_s=2)
    for _ in range(10):
        clock.now += 0.5
        bar.update(1)
    bar.close()
    assert len(log.getvalue().splitlines()) == 1 + 2 + 1  # start, at 2 s and 4 s, end


def test_the_last_line_is_not_repeated(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr("fvlm.progress.time.monotonic", clock)
    log = io.StringIO()
    with Progress(2, "two", stream=log) as bar:
        for _ in range(2):
            clock.now += 5
            bar.update(1)
    assert [x.split(" |")[0] for x in log.getvalue().splitlines()] == ["two  0/2   0%", "two  1/2  50%",
                                                                        "two  2/2 100%"]


def test_terminal_redraws_one_line():
    term = io.StringIO()
    with Progress(3, "make-shapes", stream=term, tty=True) as bar:
        for _ in range(3):
            bar.update(1)
    text = term.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and "\r" in text
    assert "[####################]" in text and "3/3" in text


def test_messages_go_to_their_own_stream():
    """Like tqdm.write: the trainer's metric lines on stdout, the bar on stderr, neither garbled."""
    bar_stream, out = io.StringIO(), io.StringIO()
    with Progress(2, "train", stream=bar_stream, tty=True) as bar:
        bar.update(1)
        bar.write("step 1: loss 2.3", out)
        bar.update(1)
    assert out.getvalue() == "step 1: loss 2.3\n"
    assert "step" not in bar_stream.getvalue() and "2/2" in bar_stream.getvalue()
    log, out = io.StringIO(), io.StringIO()
    with Progress(2, "train", stream=log) as bar:
        bar.write("step 1: loss 2.3", out)
        bar.update(2)
    assert out.getvalue() == "step 1: loss 2.3\n" and "2/2" in log.getvalue().splitlines()[-1]


def test_disabled_and_unknown_total():
    log = io.StringIO()
    with Progress(5, "quiet", stream=log, disable=True) as bar:
        bar.update(5)
        bar.write("hidden")
    assert log.getvalue() == ""
    list(track(iter(range(7)), "stream", stream=log))
    assert log.getvalue().splitlines()[-1].startswith("stream  7 |")


def test_make_shapes_log_is_a_few_lines(tmp_path, capsys):
    """`fvlm make-shapes ... 2> log`: per subset a start and an end line, not a line per clip."""
    from fvlm.shapesqa import generate

    assert generate.main([str(tmp_path), "--n", "24", "--eval-n", "2", "--no-videos", "--split", "easy"]) == 0
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("make-shapes")]
    assert "\r" not in err and 6 <= len(lines) < 24, lines
    assert any("24/24 clips 100%" in x for x in lines)
