"""generate(): every mode and input type, KV-cache decoding vs full recompute, bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from fvlm.errors import ConfigError, InputError, PromptTooLongError, VideoDecodeError, VideoNotFoundError
from fvlm.generation import GenerateOutput, sample_next

MODES = ["coarse_only", "coarse_fine", "autoregressive"]


@pytest.mark.parametrize("mode", MODES)
def test_generate_every_mode(make_model, video_file, mode):
    model = make_model(seed=1)
    out = model.generate(video_file, "What color is the square?", mode=mode, max_new_tokens=6)
    assert isinstance(out, GenerateOutput) and isinstance(out.text, str)
    assert out.mode == mode
    assert 1 <= len(out.token_ids) <= 6 or out.text == ""
    T = len(out.timestamps)
    assert T == 8  # 8-second clip at 1 fps
    assert np.all(np.diff(out.timestamps) > 0)
    gh, gw = model.encoder.grid(model.config.image_size)
    assert out.attention.shape == (T, gh, gw)
    assert np.allclose(out.attention.sum((1, 2)), 1.0, atol=1e-4)
    assert out.frames.shape[0] == T and out.frames.shape[1] == out.frames.shape[2]
    assert out.frames.dtype == np.uint8
    assert out.entropy.shape == (T,) and np.all(out.entropy > 0)
    assert (out.coarse_attention is not None) == (mode == "coarse_fine")


@pytest.mark.parametrize("mode", MODES)
def test_cached_decoding_equals_full_recompute(make_model, video_file, mode):
    """Greedy tokens from prefill + KV-cache decode == argmax of a full forward at every step."""
    model = make_model(seed=2)
    eos = model.eos_ids[0]
    # forbid EOS so that both paths run all steps
    model.llm.get_output_embeddings().bias = torch.nn.Parameter(
        torch.zeros(model.llm.config.vocab_size).index_fill_(0, torch.tensor(model.eos_ids), -1e4))
    out = model.generate(video_file, "What color is the square?", mode=mode, max_new_tokens=5,
                         return_attention=False)
    assert len(out.token_ids) == 5 and eos not in out.token_ids

    clip = model.clip(video_file)
    prompt_sample = model.sample(clip, "What color is the square?")
    ids: list[int] = []
    with torch.no_grad():
        for _ in range(5):
            s = model.sample(clip, "What color is the square?")
            s.chat.suffix_ids = prompt_sample.chat.suffix_ids + ids + [0]  # dummy last target
            s.chat.suffix_targets = [False] * (len(s.chat.suffix_ids) - 1) + [True]
            o = model(model.collate([s]), mode=mode, return_hidden=True)
            pos = (o.labels[0] != -100).nonzero()[0, 0]
            logits = model.llm.get_output_embeddings()(o.hidden[0, pos])
            ids.append(int(logits.argmax()))
    assert out.token_ids == ids


def test_batch_of_paths_matches_single_calls(make_model, video_file, tmp_path):
    from conftest import write_video

    rng = np.random.default_rng(5)
    other = write_video(tmp_path / "short.mp4", rng.integers(0, 255, (24, 40, 40, 3), dtype=np.uint8))
    model = make_model(seed=3)
    both = model.generate([video_file, other], ["What color is the square?", "How many?"],
                          mode="autoregressive", max_new_tokens=4)
    assert isinstance(both, list) and len(both) == 2
    assert len(both[1].timestamps) == 3
    for vid, prompt, res in [(video_file, "What color is the square?", both[0]), (other, "How many?", both[1])]:
        single = model.generate(vid, prompt, mode="autoregressive", max_new_tokens=4)
        assert single.token_ids == res.token_ids
        assert np.allclose(single.attention, res.attention, atol=1e-5)


def test_input_types(make_model, tmp_path):
    model = make_model(seed=4)
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (5, 40, 48, 3), dtype=np.uint8)
    for video in [arr, torch.from_numpy(arr), [Image.fromarray(f) for f in arr]]:
        out = model.generate(video, "Describe the video.", max_new_tokens=2)
        assert len(out.timestamps) == 5
    Image.fromarray(arr[0]).save(tmp_path / "img.png")
    out = model.generate(str(tmp_path / "img.png"), "What shape?", max_new_tokens=2)
    assert len(out.timestamps) == model.config.image_frames == 8
    batch = model.generate([arr, arr[:2]], "Describe.", max_new_tokens=2)
    assert [len(o.timestamps) for o in batch] == [5, 2]


def test_sampling_is_seeded(make_model, video_file):
    model = make_model(seed=5)
    kw = dict(mode="coarse_only", max_new_tokens=8, temperature=1.5, top_p=0.9)
    a = model.generate(video_file, "Describe the video.", seed=7, **kw)
    b = model.generate(video_file, "Describe the video.", seed=7, **kw)
    assert a.token_ids == b.token_ids


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, 1.0, 0.7, g)) for _ in range(200)}
    assert draws == {0, 1}
    assert int(sample_next(logits, 0.0)) == 0


def test_bad_inputs(make_model, video_file, tmp_path):
    model = make_model()
    with pytest.raises(InputError, match="prompt"):
        model.generate(video_file, "   ")
    with pytest.raises(InputError, match="unknown mode"):
        model.generate(video_file, "Hi?", mode="fast")
    with pytest.raises(PromptTooLongError, match="context"):
        model.generate(video_file, "word " * 2000)
    with pytest.raises(VideoNotFoundError, match="nope.mp4"):
        model.generate(str(tmp_path / "nope.mp4"), "Hi?")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoDecodeError, match="empty.mp4"):
        model.generate(str(tmp_path / "empty.mp4"), "Hi?")
    with pytest.raises(InputError):
        model.generate(12345, "Hi?")
    with pytest.raises(InputError, match="2 videos"):
        model.generate([video_file, video_file], ["one prompt"])


@pytest.mark.parametrize("mode", MODES)
def test_stream_events_match_generate(make_model, video_file, mode):
    from fvlm.generation import DoneEvent, FrameEvent, TextEvent

    model = make_model(seed=6)
    events = list(model.stream(video_file, "What color is the square?", mode=mode, max_new_tokens=4))
    frames = [e for e in events if isinstance(e, FrameEvent)]
    texts = [e for e in events if isinstance(e, TextEvent)]
    assert isinstance(events[-1], DoneEvent)
    out = events[-1].output
    assert [f.index for f in frames] == list(range(8))
    assert all(f.sample == 0 for f in frames)
    for f in frames:  # the live map of each frame is the final map
        assert np.allclose(f.attention, out.attention[f.index], atol=1e-6)
        assert f.frame.shape == out.frames[f.index].shape
    assert (frames[0].coarse_attention is not None) == (mode == "coarse_fine")
    assert 1 <= len(texts) <= 4 and texts[-1].text.strip() == out.text
    reference = model.generate(video_file, "What color is the square?", mode=mode, max_new_tokens=4)
    assert reference.token_ids == out.token_ids


def test_stream_reraises_errors(make_model, tmp_path):
    model = make_model()
    with pytest.raises(VideoNotFoundError):
        list(model.stream(str(tmp_path / "gone.mp4"), "Hi?"))


@pytest.mark.parametrize("architecture", ["foveated", "multi_token"])
def test_fast_is_accepted_by_every_model(make_model, video_file, architecture, monkeypatch):
    """generate/stream take fast= on every model; a model without an engine (B1) runs its own path.
    The engine's equivalence with the reference path is tested in tests/test_engine.py."""
    monkeypatch.delenv("FVLM_FAST", raising=False)
    model = make_model(seed=1, architecture=architecture)
    ref = model.generate(video_file, "What color is the square?", max_new_tokens=4, fast=False)
    out = model.generate(video_file, "What color is the square?", max_new_tokens=4, fast=True)
    assert out.token_ids == ref.token_ids
    *_, done = model.stream(video_file, "What color is the square?", max_new_tokens=4, fast=True)
    assert done.output.token_ids == ref.token_ids
    monkeypatch.setenv("FVLM_FAST", "yes")
    with pytest.raises(ConfigError, match="FVLM_FAST"):
        model.generate(video_file, "What color is the square?", max_new_tokens=4)
