"""demo.app's LiveSessions: one live session per browser tab and source, restarted on a new question."""

import numpy as np
import pytest

pytest.importorskip("gradio")

from demo import app


def test_live_sessions_per_tab_and_source(make_model):
    model = make_model(seed=0)
    sessions = app.LiveSessions()
    a = sessions.get(("tab1", "webcam"), model, "Q1?")
    assert sessions.get(("tab1", "webcam"), model, "Q1?") is a  # same question: the same session goes on
    b = sessions.get(("tab1", "webcam"), model, "Q2?")  # new question: a fresh session
    assert b is not a and a["session"].closed and not b["session"].closed
    c = sessions.get(("tab1", "file"), model, "Q2?")
    d = sessions.get(("tab2", "webcam"), model, "Q2?")
    assert len(sessions) == 3
    assert sessions.get(("tab1", "file"), model, "Q2?", restart=True) is not c and c["session"].closed
    sessions.close("tab1")
    assert len(sessions) == 1 and b["session"].closed and not d["session"].closed


def testlive_step_answers_when_due(make_model):
    model = make_model(seed=0)
    entry = app.LiveSessions().get(("t", "webcam"), model, "What is it?")
    frame = np.zeros((32, 32, 3), np.uint8)
    replies = []
    for t in (0.0, 1.0, 3.5, 4.0):
        img, status, reply = app.live_step(entry, entry["session"].push(frame, t), answer_every_s=3.0)
        assert img.dtype == np.uint8 and f"t={t:.1f}s" in status
        replies.append(isinstance(reply, str))
    assert replies == [True, False, True, False]  # at the start, then 3 s of stream later
    _, _, reply = app.live_step(entry, entry["session"].push(frame, 4.5), 3.0, final=True)
    assert isinstance(reply, str)
