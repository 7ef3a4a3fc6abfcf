"""Live sessions (fvlm/live.py): equivalence with generate(autoregressive), the sliding window, bad input."""

import time

import numpy as np
import pytest
import torch

from fvlm.errors import FVLMError, InputError, PromptTooLongError

PROMPT = "What color is the square?"


@pytest.fixture
def model(make_model):
    return make_model(seed=3, max_frames=8)


@pytest.mark.parametrize("layout,gaze", [("text_first", False), ("video_first", False), ("text_first", True)])
def test_push_equals_generate_autoregressive(make_model, video_file, layout, gaze):
    """Pushing a clip's sampled frames one by one = generate(clip, mode="autoregressive"): same maps
    (<= 1e-5), entropies and greedy answer; timestamps as pushed. With the gaze embedding, each push
    gives it the same numbers, its move since the previous frame included."""
    model = make_model(seed=3, layout=layout, max_frames=8, gaze_embedding=gaze)
    seen = []
    if gaze:  # (the tiny model's maps are nearly flat: compare what the embedding reads, too)
        model.gaze_embed.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    out = model.generate(video_file, PROMPT, mode="autoregressive", max_new_tokens=12)
    clip = model.clip(video_file)
    session = model.live(PROMPT, max_new_tokens=12)
    events = [session.push(f, timestamp=t) for f, t in zip(clip.frames, clip.timestamps)]
    assert len(events) == len(out.attention) == 8
    np.testing.assert_allclose(np.stack([e.attention for e in events]), out.attention, atol=1e-5, rtol=0)
    np.testing.assert_allclose([e.entropy for e in events], out.entropy, atol=1e-5, rtol=0)
    np.testing.assert_array_equal([e.frame for e in events], out.frames)
    assert [e.timestamp for e in events] == [float(t) for t in out.timestamps]
    assert [e.index for e in events] == list(range(8))
    assert out.token_ids, "the random model wrote nothing: the answer comparison would be empty"
    assert session.ask() == out.text
    if gaze:
        assert len(seen) == 16
        torch.testing.assert_close(torch.cat(seen[8:]), torch.cat(seen[:8]), atol=1e-5, rtol=0)
        assert torch.cat(seen[:8])[1:, 4:].abs().sum() > 0


def test_ask_leaves_the_session_running(model, video_file):
    """ask() works on a copy of the cache: the frames after it read exactly as with no ask."""
    frames = model.clip(video_file).frames
    a, b = model.live(PROMPT), model.live(PROMPT)
    for f in frames[:4]:
        a.push(f)
        b.push(f)
    before = a.context_tokens
    a.ask(max_new_tokens=6)
    a.ask("Is there a circle?", max_new_tokens=6, temperature=1.0, seed=0)
    assert a.context_tokens == before
    for f in frames[4:]:
        np.testing.assert_array_equal(a.push(f).attention, b.push(f).attention)
    assert a.ask() == b.ask()


def test_other_question_follows_the_frames(model):
    s = model.live(PROMPT)
    tok = model.tokenizer
    assert s.suffix_ids(None) == s.suffix_ids(PROMPT) == s.chat.suffix_ids
    other = s.suffix_ids("Is there a circle?")
    assert other[-len(s.chat.suffix_ids):] == s.chat.suffix_ids
    assert "circle" in tok.decode(other)


def test_window_slides_with_bounded_memory_and_latency(model):
    """10x max_frames pushes: the cache never holds more than prefix + max_frames tokens and the window
    slides to keep_frames. Then the per-frame time is flat: a push to this session costs what a push
    to a young one (max_frames frames seen) costs, timed in alternation so machine load hits both."""
    W = model.config.max_frames
    s = model.live(PROMPT, keep_frames=3)
    P = len(s.chat.prefix_ids)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (8, 40, 56, 3), dtype=np.uint8)
    windows = []
    for i in range(10 * W):
        ev = s.push(frames[i % 8])
        windows.append(s.window)
        assert s.context_tokens == P + s.window <= P + W
        assert ev.index == i and np.isfinite(ev.entropy)
    assert windows[:W] == list(range(1, W + 1))
    assert windows[W] == 4  # full at W: the next push keeps 3, then adds itself
    assert max(windows) == W and s.frames_seen == 10 * W
    young = model.live(PROMPT, keep_frames=3)
    for i in range(W):
        young.push(frames[i % 8])
    old_t, young_t = [], []
    for i in range(4 * W):
        for sess, out in ((s, old_t), (young, young_t))[:: 1 if i % 2 else -1]:
            t0 = time.perf_counter()
            sess.push(frames[i % 8])
            out.append(time.perf_counter() - t0)
    assert np.median(old_t) < 2 * np.median(young_t), (np.median(old_t), np.median(young_t))
    assert isinstance(s.ask(max_new_tokens=4), str)


def test_window_slide_reprefills_from_the_kept_tokens(model, video_file):
    """After a slide, the next frame reads as a fresh session fed the kept frames' tokens would:
    the same as keep_frames=0 re-prefilling the prefix alone when nothing is kept."""
    frames = model.clip(video_file).frames
    s = model.live(PROMPT, max_frames=2, keep_frames=0)
    fresh = model.live(PROMPT, max_frames=2)
    s.push(frames[0])
    s.push(frames[1])
    np.testing.assert_allclose(s.push(frames[2]).attention, fresh.push(frames[2]).attention, atol=1e-6)
    assert s.window == 1


def test_timestamps_default_to_seconds_since_the_first_push(model):
    s = model.live(PROMPT)
    frame = np.zeros((32, 32, 3), np.uint8)
    t0 = s.push(frame).timestamp
    t1 = s.push(frame).timestamp
    assert t0 == 0.0 and t1 >= 0.0
    assert s.push(frame, timestamp=12.5).timestamp == 12.5


def test_frame_kinds_give_the_same_token(model):
    """uint8 array, tensor, RGBA and PIL image of the same pixels read the same."""
    from PIL import Image

    frame = np.random.default_rng(1).integers(0, 255, (36, 44, 3), dtype=np.uint8)
    rgba = np.concatenate([frame, np.full((36, 44, 1), 255, np.uint8)], -1)
    maps = []
    for f in (frame, torch.from_numpy(frame), rgba, Image.fromarray(frame)):
        maps.append(model.live(PROMPT).push(f).attention)
    for m in maps[1:]:
        np.testing.assert_array_equal(m, maps[0])


@pytest.mark.parametrize("frame, words", [
    (np.zeros((32, 32, 3), np.float32), "uint8"),
    (np.zeros((3, 32, 32), np.uint8), "channels first"),
    (np.zeros((4, 32, 32, 3), np.uint8), "one at a time"),
    (np.zeros((32, 32), np.uint8), "HxWx3"),
    (np.zeros((0, 32, 3), np.uint8), "HxWx3"),
    ("frame.png", "PIL image"),
])
def test_bad_frames_are_input_errors(model, frame, words):
    s = model.live(PROMPT)
    with pytest.raises(InputError, match=words):
        s.push(frame)
    s.push(np.zeros((32, 32, 3), np.uint8))  # the session still works
    assert s.frames_seen == 1


def test_bad_sessions(model):
    with pytest.raises(InputError, match="prompt"):
        model.live("  ")
    with pytest.raises(InputError, match="keep_frames"):
        model.live(PROMPT, max_frames=4, keep_frames=4)
    with pytest.raises(InputError, match="max_frames"):
        model.live(PROMPT, max_frames=0)
    with pytest.raises(PromptTooLongError, match="max_frames"):
        model.live(PROMPT, max_frames=model.context_length)
    s = model.live(PROMPT)
    with pytest.raises(InputError, match="question"):
        s.ask("")
    with pytest.raises(InputError, match="max_new_tokens"):
        s.ask(max_new_tokens=0)


def test_closed_session_errs_and_a_new_one_starts(model):
    frame = np.zeros((32, 32, 3), np.uint8)
    with model.live(PROMPT) as s:
        s.push(frame)
    for call in (lambda: s.push(frame), lambda: s.ask()):
        with pytest.raises(FVLMError, match="closed.*model.live"):
            call()
    s.close()  # twice is fine
    again = model.live(PROMPT)
    assert again.push(frame).index == 0 and isinstance(again.ask(max_new_tokens=2), str)
