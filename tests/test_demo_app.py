"""demo.app: input checks, lazy model cache, and gradio_client round trips against a live server."""

import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from demo import app
from demo.screenshot import free_port

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")  # pandas deprecations in gradio
_AUDIT_HOOKS = []  # audit hooks cannot be removed, so one hook calls the tests' current ones
sys.addaudithook(lambda event, args: [hook(event, args) for hook in _AUDIT_HOOKS])
EXAMPLES_JSONL = app.EXAMPLES_DIR / "examples.jsonl"
CLIP = app.EXAMPLES_DIR / "shapes_easy.mp4"
QUESTION = "What color is the triangle?"


def _example_timestamps(clip: str) -> list[float]:
    for line in EXAMPLES_JSONL.read_text().splitlines():
        row = json.loads(line)
        if row["file"] == clip:
            return row["timestamps"]
    raise AssertionError(f"{clip} not in {EXAMPLES_JSONL}")


# -----------------------------------------------------------------------------
# units


def test_examples_exist_and_match_the_shipped_questions():
    rows = [json.loads(line) for line in EXAMPLES_JSONL.read_text().splitlines()]
    for clip, question, mode in app.EXAMPLES:
        assert (app.EXAMPLES_DIR / clip).is_file()
        assert any(r["file"] == clip and r["question"] == question for r in rows), (clip, question)
        assert mode in app.MODES
    from fvlm.config import MODES

    assert set(app.MODES) == set(MODES)


def test_parse_args_defaults_are_local_only():
    args = app.parse_args([])
    assert (args.host, args.port, args.share, args.model) == ("127.0.0.1", 7860, False, None)
    args = app.parse_args(["--host", "0.0.0.0", "--port", "9000", "--share", "--max-upload-mb", "5"])
    assert (args.host, args.port, args.share, args.max_upload_mb) == ("0.0.0.0", 9000, True, 5.0)


def test_main_rejects_a_missing_model_dir(tmp_path, capsys):
    assert app.main(["--model", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_validate_upload_limits(tmp_path, video_file):
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * (2 * 2**20))
    with pytest.raises(app.UploadError, match=r"2\.0 MB; this demo accepts files up to 1 MB"):
        app.validate_upload(big, max_upload_mb=1, max_duration_s=300)
    assert app.video_duration(video_file) == pytest.approx(8.0, abs=0.2)
    with pytest.raises(app.UploadError, match=r"8 s long; this demo accepts videos up to 5 s"):
        app.validate_upload(video_file, max_upload_mb=50, max_duration_s=5)
    app.validate_upload(video_file, max_upload_mb=50, max_duration_s=10)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    assert app.video_duration(junk) is None  # left to fvlm's loader, which says what is wrong
    app.validate_upload(junk, max_upload_mb=50, max_duration_s=10)


def test_model_markdown_shows_the_notes(model_dir):
    text = app.model_markdown(str(model_dir), app.saved_config(model_dir))
    assert "tiny test model for the demo" in text and str(model_dir) in text
    assert app.saved_config(model_dir / "missing") is None and app.saved_config("owner/name") is None
    assert "loaded on the first request" in app.model_markdown("owner/name", None)


def test_pick_model_offers_only_the_operators_models():
    shipped = app.Settings()
    assert app.pick_model(None, shipped) == (app.SHIPPED_MODEL, app.DEFAULT_MODEL_DIR)
    assert app.pick_model(" ", shipped) == (app.SHIPPED_MODEL, app.DEFAULT_MODEL_DIR)
    two = app.Settings(models=("runs/final", "sanps/fVLM-135M"))
    assert app.pick_model("", two) == ("runs/final", "runs/final")
    assert app.pick_model("sanps/fVLM-135M", two) == ("sanps/fVLM-135M", "sanps/fVLM-135M")
    for name in ["/etc", "evil/repo", "sanps/fVLM-135M@other", str(app.DEFAULT_MODEL_DIR), app.SHIPPED_MODEL]:
        with pytest.raises(app.UploadError, match="does not offer the model"):
            app.pick_model(name, two)
    opted_in = app.Settings(models=("runs/final",), allow_any_model=True)
    assert app.pick_model("evil/repo", opted_in) == ("evil/repo", "evil/repo")


def _dropdown(demo):
    (dropdown,) = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "model"]
    return dropdown


def test_the_dropdown_lists_the_models_named_at_start(tmp_path):
    demo = app.build_demo(app.Settings(workdir=tmp_path))
    assert [v for _, v in _dropdown(demo).choices] == [app.SHIPPED_MODEL]
    demo = app.build_demo(app.Settings(models=("runs/final", "sanps/fVLM-135M@v1"), workdir=tmp_path))
    dropdown = _dropdown(demo)
    assert [v for _, v in dropdown.choices] == ["runs/final", "sanps/fVLM-135M@v1"]
    assert dropdown.value == "runs/final" and dropdown.allow_custom_value is False
    demo = app.build_demo(app.Settings(models=("runs/final",), allow_any_model=True, workdir=tmp_path))
    assert _dropdown(demo).allow_custom_value is True


def test_parse_args_repeated_models_and_the_opt_in():
    args = app.parse_args(["--model", "runs/final", "--model", "sanps/fVLM-135M@v1"])
    assert args.model == ["runs/final", "sanps/fVLM-135M@v1"] and args.allow_any_model is False
    assert app.parse_args(["--allow-any-model"]).allow_any_model is True


def test_main_rejects_a_model_that_is_neither_a_dir_nor_a_hub_id(tmp_path, capsys):
    assert app.main(["--model", "a/b/c"]) == 2
    assert "not a hub id" in capsys.readouterr().err


def test_build_demo_does_not_load_a_model(monkeypatch, tmp_path):
    import fvlm.hub

    monkeypatch.setattr(fvlm.hub, "load", lambda *a, **k: pytest.fail("model loaded at build time"))
    demo = app.build_demo(app.Settings(workdir=tmp_path))
    assert demo.run_dirs.root == tmp_path


def test_model_cache_loads_once_per_dir_thread_safely(model_dir):
    cache = app.ModelCache(device="cpu")
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(model_dir))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 3 and all(m is got[0] for m in got)


def test_gallery_items_rerender_a_finished_run(tmp_path):
    from PIL import Image

    T = 3
    state = {"frames": np.zeros((T, 64, 64, 3), np.uint8), "attention": np.full((T, 4, 4), 1 / 16),
             "coarse": np.full((T, 4, 4), 1 / 16), "timestamps": np.arange(T) * 0.5,
             "entropy": np.full(T, 2.77)}
    items = app._gallery_items(state, show_coarse=True, out_dir=tmp_path)
    assert [c for _, c in items] == ["t=0.0s · H=2.77 nats", "t=0.5s · H=2.77 nats", "t=1.0s · H=2.77 nats"]
    assert Image.open(items[0][0]).size == (2 * 256 + 4, 256)
    assert Image.open(app._gallery_items(state, False, tmp_path)[0][0]).size == (256, 256)
    no_maps = dict(state, attention=None, coarse=None, entropy=None)  # a model without a query
    assert app._gallery_items(no_maps, True, tmp_path)[2][1] == "t=1.0s"


def test_run_dirs_keep_only_the_newest(tmp_path):
    dirs = app.RunDirs(tmp_path, keep=2)
    made = [dirs.new() for _ in range(4)]
    assert [p.exists() for p in made] == [False, False, True, True]
    dirs.cleanup()
    assert not tmp_path.exists()


# -----------------------------------------------------------------------------
# a live server, driven with gradio_client


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    """A tiny random-weight model saved like a real one (so --model DIR is exercised)."""
    from fvlm.tiny import tiny_model

    model = tiny_model(seed=0, tokenizer=tokenizer)
    model.config.notes = "tiny test model for the demo"
    return model.save_pretrained(tmp_path_factory.mktemp("demo_model"))


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    settings = app.Settings(models=(str(model_dir),), device="cpu", frame_interval_s=0.0, max_new_tokens=8,
                            workdir=tmp_path_factory.mktemp("demo_runs"))
    demo = app.build_demo(settings)
    port = free_port()
    app.launch(demo, settings, port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    """Returns server-side file paths (same machine) instead of downloading every streamed update."""
    from gradio_client import Client

    return Client(server, verbose=False, download_files=False)


def _image(item: dict):
    from PIL import Image

    return Image.open(item["image"]["path"])


def _ask(client, path, question=QUESTION, mode="autoregressive", **kw):
    from gradio_client import handle_file

    args = {"clip": handle_file(str(path)), "question": question, "mode": mode, "model": None,
            "show_coarse": True, "temperature": 1.0, "seed": 1, "max_new_tokens": 8} | kw
    return client.predict(api_name="/run", **args)


def test_client_round_trip_example_clip(server, tmp_path):
    from gradio_client import Client
    from PIL import Image

    client = Client(server, verbose=False, download_files=str(tmp_path))  # files fetched over HTTP
    status, _, gallery, plot, answer, video, mp4, *_ = _ask(client, CLIP)
    assert status.startswith("**Done:** 8 frames, autoregressive")
    assert isinstance(answer, str) and answer  # sampled tokens of a random model: some text
    expected = _example_timestamps("shapes_easy.mp4")
    assert len(gallery) == len(expected)  # one overlay per sampled frame
    for item, t in zip(gallery, expected):
        assert item["caption"].startswith(f"t={t:.1f}s · H=") and item["caption"].endswith(" nats")
        assert Image.open(item["image"]).size == (256, 256)
    assert Path(plot).is_file()
    assert Path(mp4).name == "shapes_easy-autoregressive-overlay.mp4" and Path(video).is_file()
    import av

    with av.open(mp4) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.frames == len(expected)


def test_client_streams_one_frame_at_a_time(client):
    from gradio_client import handle_file

    job = client.submit(handle_file(str(CLIP)), QUESTION, "autoregressive", None, True, 0.0, 0, 4,
                        api_name="/run")
    job.result(timeout=60)
    sizes = [len(out[2]) for out in job.outputs() if isinstance(out[2], list)]  # gr.skip() -> update dict
    assert sizes[0] == 0 and sizes[-1] == 8
    assert sorted(set(sizes)) == list(range(9))  # the gallery grew frame by frame: 0, 1, ..., 8


def test_client_coarse_fine_shows_both_maps(client):
    status, _, gallery, *_ = _ask(client, CLIP, mode="coarse_fine")
    assert status.startswith("**Done:**")
    assert _image(gallery[0]).size == (2 * 256 + 4, 256)  # coarse | fine
    _, _, gallery, *_ = _ask(client, CLIP, mode="coarse_fine", show_coarse=False)
    assert _image(gallery[0]).size == (256, 256)


def test_client_image_upload(client, tmp_path):
    from demo.render import save_png

    img = np.zeros((90, 120, 3), np.uint8)
    img[20:60, 30:70] = (255, 0, 0)
    status, _, gallery, *_ = _ask(client, save_png(img, tmp_path / "still.png"), "What color is the square?")
    assert status.startswith("**Done:** 8 frames")  # an image becomes 8 identical frames at t=0
    assert len(gallery) == 8 and gallery[0]["caption"].startswith("t=0.0s")


def test_bad_uploads_give_errors_and_the_server_keeps_serving(client, tmp_path):
    from gradio_client.exceptions import AppError

    junk = tmp_path / "broken.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(AppError, match="broken.mp4: not a readable video"):
        _ask(client, junk)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(AppError, match="Invalid file type"):
        _ask(client, text)
    with pytest.raises(AppError, match="Type a question"):
        _ask(client, CLIP, question="  ")
    status, _, gallery, *_ = _ask(client, CLIP)  # still serving
    assert status.startswith("**Done:**") and len(gallery) == 8


def test_concurrent_requests_are_queued(client):
    from gradio_client import handle_file

    jobs = [client.submit(handle_file(str(CLIP)), QUESTION, mode, None, True, 0.0, 0, 4, api_name="/run")
            for mode in ("autoregressive", "coarse_only", "coarse_fine")]
    for job in jobs:
        status, _, gallery, *_ = job.result(timeout=60)
        assert status.startswith("**Done:**") and len(gallery) == 8


def test_models_that_were_not_offered_are_refused_without_touching_files_or_the_hub(client, monkeypatch, tmp_path):
    """A web client naming a server path or a hub id the operator did not offer gets the same refusal
    whether the path exists or not, and nothing stats, opens, loads or downloads it."""
    import os

    import huggingface_hub
    from gradio_client.exceptions import AppError

    import fvlm.hub

    secret = tmp_path / "secret-model"
    secret.mkdir()
    (secret / "config.json").write_text("{}")
    watched = ("secret-model", "missing-model", "evil")
    touched = []
    real_stat = os.stat

    def stat(path, *a, **k):
        if any(w in str(path) for w in watched):
            touched.append(("stat", str(path)))
        return real_stat(path, *a, **k)

    def audit(event, args):
        if event in ("open", "os.listdir", "os.scandir") and args and any(w in str(args[0]) for w in watched):
            touched.append((event, str(args[0])))

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: touched.append(("hub", a)))
    monkeypatch.setattr(fvlm.hub, "load", lambda *a, **k: touched.append(("load", a)))
    _AUDIT_HOOKS.append(audit)
    try:
        messages = {}
        for name in [str(secret), str(tmp_path / "missing-model"), "evil/repo", "evil/repo@main"]:
            with pytest.raises(AppError) as e:
                _ask(client, CLIP, model=name)
            messages[name] = str(e.value).replace(name, "NAME")
            assert "NAME" in messages[name]
            assert "not in the list of choices" in messages[name] or "does not offer the model" in messages[name]
    finally:
        _AUDIT_HOOKS.remove(audit)
    assert touched == []
    assert messages[str(secret)] == messages[str(tmp_path / "missing-model")]  # existence is not told
    monkeypatch.undo()
    status, *_ = _ask(client, CLIP)  # still serving the offered model
    assert status.startswith("**Done:**")


def test_an_offered_hub_id_is_fetched_on_the_first_request(model_dir, monkeypatch, tmp_path):
    import huggingface_hub
    from gradio_client import Client

    calls = []

    def snapshot_download(repo_id, **kw):
        calls.append((repo_id, kw.get("revision")))
        return str(model_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    settings = app.Settings(models=("owner/name@v1", str(model_dir)), device="cpu", frame_interval_s=0.0,
                            max_new_tokens=4, workdir=tmp_path / "runs")
    demo = app.build_demo(settings)
    assert calls == []  # nothing is fetched to build the page
    port = free_port()
    app.launch(demo, settings, port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
        status, info, gallery, *_ = _ask(client, CLIP)  # the first offered model is the default
        assert status.startswith("**Done:**") and len(gallery) == 8
        assert calls == [("owner/name", "v1")]
        assert "owner/name@v1" in info and "tiny test model for the demo" in info
        status, info, *_ = _ask(client, CLIP, model=str(model_dir))
        assert status.startswith("**Done:**") and str(model_dir) in info and len(calls) == 1
    finally:
        demo.close()


def test_main_reports_a_taken_port(capsys):
    import signal
    import socket

    before = signal.getsignal(signal.SIGTERM)

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert app.main(["--port", str(port), "--frame-interval-s", "0"]) == 1
    assert f"could not serve on 127.0.0.1:{port}" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # main's SIGTERM handler is undone

