"""The fvlm demo: watch a foveated video VLM decide where to look, frame by frame.

    python -m demo [--host 127.0.0.1] [--port 7860] [--share] [--model MODEL ...] [--allow-any-model]
                   [--max-upload-mb 50] [--max-duration-s 300] [--frame-interval-s 0.25]

Live updates: `run` is a generator over `model.stream(...)`. Each FrameEvent renders that frame's
overlay (written once as a PNG), appends it to the gallery, redraws the entropy plot and yields;
gradio pushes every yield to the browser. TextEvents update only the answer (gr.skip() for the
rest); the DoneEvent writes the overlay MP4. In autoregressive mode frames arrive as the model
reads them; in the other modes they all arrive after the prefill.

The Live tab sends webcam frames (gradio's streaming image input) or a video file played in real
time to a fvlm live session (fvlm/live.py), one per browser tab and source (LiveSessions); each
frame's overlay is streamed back and the answer refreshed every few seconds; closing the tab closes
its sessions.

The model is loaded on the first request (ModelCache), never at import. One request runs at a
time (queue default_concurrency_limit=1): other users wait in the queue.

Which models a web client may use is the operator's choice: the --model names given at start (saved
directories or hub ids; the shipped model when none), offered in a dropdown. Any other name a client
sends is refused by a string look-up (`pick_model`) before it reaches the filesystem or the hub,
unless the operator opts in with --allow-any-model.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import gradio as gr

from fvlm.config import FVLMConfig
from fvlm.errors import FVLMError
from fvlm.hub import DEFAULT_MODEL_DIR, MODEL_HELP, parse_hub_id

from . import render

EXAMPLES_DIR = DEFAULT_MODEL_DIR.parent / "examples"
SHIPPED_MODEL = "the ShapesQA model shipped with fvlm"  # its name in the model dropdown
MODES = ("autoregressive", "coarse_fine", "coarse_only")
# (clip in EXAMPLES_DIR, question from its examples.jsonl, mode); shown as one-click examples
EXAMPLES = [
    ("shapes_easy.mp4", "What color is the triangle?", "autoregressive"),
    ("shapes_motion.mp4", "Which way does the yellow star move?", "autoregressive"),
    ("shapes_hard.mp4", "What digit is on the purple cross?", "autoregressive"),
    ("shapes_easy.mp4", "What color is the triangle?", "coarse_fine"),
]
TEXT_INTERVAL_S = 0.1  # min seconds between answer updates while tokens stream in (the end always shows)
MODE_HELP = (
    "autoregressive: the LLM writes the next frame's query, frames shown live as they are read · "
    "coarse_fine: a static query pass, then the fine pass (both maps available) · "
    "coarse_only: the static query alone"
)


@dataclass
class Settings:
    models: tuple[str, ...] = ()  # what web clients may pick: directories or hub ids; (): the shipped model
    allow_any_model: bool = False  # also let clients name any directory or hub id (trusted users only)
    device: str | None = None  # None: cuda if available, else cpu
    max_upload_mb: float = 50.0
    max_duration_s: float = 300.0
    frame_interval_s: float = 0.25  # min seconds between live frame updates, so fast models stay watchable
    max_new_tokens: int = 32
    temperature: float = 0.0  # the sampling slider's initial value (0 = greedy)
    mp4_fps: float = 2.0
    workdir: Path | None = None  # per-request output folders go here; None: a fresh temp dir
    keep_runs: int = 32  # output folders kept (older ones are deleted; gradio has its own copies)
    max_queue: int = 32  # waiting requests beyond this are turned away with "queue is full"
    live_every_s: float = 0.5  # Live tab: seconds between webcam frames sent to the model
    live_answer_every_s: float = 3.0  # Live tab: seconds between answers
    live_time_limit_s: int = 600  # Live tab: longest webcam stream or real-time play, per start


class UploadError(ValueError):
    """The request breaks one of the demo's limits or lacks an input; the message says which."""


# -----------------------------------------------------------------------------
# input checks


def video_duration(path: str | os.PathLike) -> float | None:
    """Duration in seconds from the container header, or None when PyAV cannot tell.

    None is not an error here: fvlm's loader then decodes the file and reports precisely why it
    is unusable (corrupt, not a video, ...).
    """
    import av

    try:
        with av.open(str(path), metadata_errors="replace") as container:
            if container.duration is not None:
                return container.duration / 1e6  # microseconds
            for stream in container.streams.video:
                if stream.duration is not None and stream.time_base is not None:
                    return float(stream.duration * stream.time_base)
    except av.error.FFmpegError:
        return None  # unreadable: fvlm.video raises VideoDecodeError with the reason
    return None


def validate_upload(path: str | os.PathLike, max_upload_mb: float, max_duration_s: float) -> None:
    """Raise UploadError when the file is larger than max_upload_mb or longer than max_duration_s."""
    from fvlm.video import IMAGE_EXTENSIONS

    path = Path(path)
    if not path.is_file():
        raise UploadError(f"{path.name}: the upload is missing on the server; upload it again")
    size_mb = path.stat().st_size / 2**20
    if size_mb > max_upload_mb:
        raise UploadError(
            f"{path.name} is {size_mb:.1f} MB; this demo accepts files up to {max_upload_mb:g} MB. "
            "Trim or re-encode it (e.g. `ffmpeg -i in.mp4 -t 60 -vf scale=-2:480 out.mp4`)."
        )
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return
    duration = video_duration(path)
    if duration is not None and duration > max_duration_s:
        raise UploadError(
            f"{path.name} is {duration:.0f} s long; this demo accepts videos up to {max_duration_s:g} s. "
            f"Trim it (e.g. `ffmpeg -i in.mp4 -t {max_duration_s:g} out.mp4`)."
        )


# -----------------------------------------------------------------------------
# models and output folders


class ModelCache:
    """Models by name (a directory or hub id), loaded on first use, the `capacity` most recently used
    kept. Thread-safe. It loads whatever it is given: callers pass only what pick_model returned."""

    def __init__(self, device: str | None = None, capacity: int = 2):
        self.device, self.capacity = device, capacity
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, model: str | Path) -> bool:
        return str(model) in self._models

    def get(self, model: str | Path):
        key = str(model)
        with self._lock:  # one load at a time; a second request for the same model waits and reuses it
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            import torch

            from fvlm.hub import load

            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            loaded = load(model, device=device)
            self._models[key] = loaded
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
            return loaded


class RunDirs:
    """Numbered per-request output folders under one root; only the newest `keep` survive.

    root=None: a fresh temp dir, made on the first request (building the app writes nothing).
    """

    def __init__(self, root: Path | None, keep: int):
        self.root = None if root is None else Path(root)
        self.keep = keep
        self._count = itertools.count()
        self._lock = threading.Lock()

    def new(self) -> Path:
        with self._lock:
            if self.root is None:
                self.root = Path(tempfile.mkdtemp(prefix="fvlm-demo-"))
            self.root.mkdir(parents=True, exist_ok=True)
            path = Path(tempfile.mkdtemp(prefix=f"run{next(self._count):05d}-", dir=self.root))
            runs = sorted((p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("run")),
                          key=lambda p: p.name)
            for old in runs[: max(0, len(runs) - self.keep)]:
                shutil.rmtree(old, ignore_errors=True)  # gradio serves its own cached copies
            return path

    def cleanup(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


def offered_models(settings: Settings) -> dict[str, str | Path]:
    """Dropdown choice -> what it loads: the operator's --model names in order, else the shipped model."""
    if not settings.models:
        return {SHIPPED_MODEL: DEFAULT_MODEL_DIR}
    return {str(m): str(m) for m in settings.models}


def pick_model(choice: str | None, settings: Settings) -> tuple[str, str | Path]:
    """(name, what it loads) for a web client's model choice. A plain look-up among the offered models,
    so a name that was not offered is refused before anything reads the filesystem or asks the hub
    about it (unless the operator allowed any model). Empty: the first offered model."""
    offered = offered_models(settings)
    choice = (choice or "").strip()
    if not choice:
        return next(iter(offered.items()))
    if choice in offered:
        return choice, offered[choice]
    if settings.allow_any_model:
        return choice, choice
    raise UploadError(f"this demo does not offer the model {choice[:200]!r}; pick one of the listed models")


def model_markdown(name: str, config: FVLMConfig | None) -> str:
    """A short description of a model for the page, with its config notes (how it was trained)."""
    if config is None:
        return f"**Model:** {name} (loaded on the first request)"
    text = (f"**Model:** {name} ({config.architecture}, {config.layout}, {config.image_size}-px frames, "
            f"up to {config.max_frames} frames at {config.fps:g} fps)")
    if config.notes:
        text += f"\n\n> **Model note:** {config.notes}"
    return text


def saved_config(model: str | Path) -> FVLMConfig | None:
    """The config of an operator-named model when it is a local fvlm directory (no download), else None."""
    try:
        return FVLMConfig.load(model) if Path(model).is_dir() else None
    except (FVLMError, OSError, ValueError):
        return None  # e.g. an upstream checkpoint: described once loaded


OUTPUTS = ("status", "model_info", "gallery", "plot", "answer", "video", "mp4", "state")  # run()'s outputs


def _update(**values: Any) -> tuple:
    """One yield of run(): the given outputs by name, gr.skip() (leave as is) for the others."""
    unknown = set(values) - set(OUTPUTS)
    if unknown:
        raise TypeError(f"unknown outputs {sorted(unknown)}; expected some of {OUTPUTS}")
    return tuple(values[name] if name in values else gr.skip() for name in OUTPUTS)


# -----------------------------------------------------------------------------
# the Live tab: a live session per browser tab and source (webcam, file), closed when the tab closes


class LiveSessions:
    """The open fvlm LiveSessions by (browser session, source); a new question or model starts a new one.
    Thread-safe. close(browser session) runs when the browser tab closes (demo.unload)."""

    def __init__(self):
        self._open: dict[tuple[str, str], dict] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._open)

    def get(self, key: tuple[str, str], model, question: str, restart: bool = False) -> dict:
        """{"session", "question", "model", "last_answer_t"} for key, started afresh when asked to or
        when the question or the model changed."""
        with self._lock:
            entry = self._open.get(key)
            if entry is not None and (restart or entry["question"] != question or entry["model"] is not model):
                entry["session"].close()
                entry = None
            if entry is None:
                entry = {"session": model.live(question), "question": question, "model": model,
                         "last_answer_t": None}
                self._open[key] = entry
            return entry

    def close(self, browser_session: str) -> None:
        with self._lock:
            for key in [k for k in self._open if k[0] == browser_session]:
                self._open.pop(key)["session"].close()


def live_step(entry: dict, event, answer_every_s: float, final: bool = False) -> tuple:
    """(overlay image, status, answer or gr.skip()) after one pushed frame; an answer is due every
    answer_every_s seconds of the stream, and at the end (final)."""
    from fvlm.live import gaze

    session = entry["session"]
    img = render.frame_view(event.frame, event.attention, event.timestamp)
    g = gaze(event.attention)
    status = (f"**Live:** frame {event.index + 1}, t={event.timestamp:.1f}s · looked at "
              f"({g['peak'][0]:.2f}, {g['peak'][1]:.2f}) · entropy {event.entropy:.2f} nats · "
              f"window {session.window}/{session.config.max_frames} frames")
    last = entry["last_answer_t"]
    answer = gr.skip()
    if final or last is None or event.timestamp - last >= answer_every_s:
        entry["last_answer_t"] = event.timestamp
        answer = session.ask()
    return img, status, answer


def build_live_tab(settings: Settings, load: Callable[[str], Any], model_choice: gr.Component,
                   sessions: LiveSessions) -> None:
    """The Live tab's components and events (inside a gr.Tab of build_demo). The model is the one
    chosen in the Clip tab (`model_choice`, turned into a model by `load`)."""
    gr.Markdown(
        "Frames from your **camera** (or a video file played in real time) go to the model one by one: "
        "each becomes one visual token, read with the query the model chose after the frames before it. "
        f"The overlay shows where it looks now; the answer is refreshed every {settings.live_answer_every_s:g} s."
    )
    with gr.Row():
        with gr.Column(scale=2):
            question = gr.Textbox(label="Question", value="What color is the triangle?", elem_id="live-question",
                                  info="The model is the one chosen in the Clip tab.")
            webcam = gr.Image(label="Camera (click to start streaming)", sources=["webcam"], streaming=True,
                              type="numpy", webcam_options=gr.WebcamOptions(mirror=False), elem_id="live-webcam")
            clip = gr.File(label="…or a video file, played in real time", file_types=["video", "image"],
                           height=120, elem_id="live-file")
            with gr.Row():
                play = gr.Button("Play live", variant="primary", elem_id="live-play")
                stop = gr.Button("Stop", elem_id="live-stop")
        with gr.Column(scale=3):
            status = gr.Markdown("Start the camera, or play a video file.", elem_id="live-status")
            overlay = gr.Image(label="Where the model looks now", interactive=False, format="jpeg",
                               elem_id="live-overlay")
            answer = gr.Textbox(label="Answer", lines=2, interactive=False, elem_id="live-answer")

    def on_frame(frame, question: str, choice: str, request: gr.Request):
        if frame is None:
            return gr.skip(), gr.skip(), gr.skip()
        try:
            if not question or not question.strip():
                raise UploadError("Type a question for the live view.")
            entry = sessions.get((request.session_hash, "webcam"), load(choice), question.strip())
            return live_step(entry, entry["session"].push(frame), settings.live_answer_every_s)
        except (FVLMError, UploadError) as e:
            raise gr.Error(str(e), duration=None, print_exception=False) from e

    def on_play(path: str | None, question: str, choice: str, request: gr.Request) -> Iterator[tuple]:
        from fvlm.video import FrameStream

        try:
            if not path:
                raise UploadError("Upload a video file to play it live.")
            if not question or not question.strip():
                raise UploadError("Type a question for the live view.")
            validate_upload(path, settings.max_upload_mb, settings.max_duration_s)
            model = load(choice)
            entry = sessions.get((request.session_hash, "file"), model, question.strip(), restart=True)
            c = model.config
            event = None
            with FrameStream(path, fps=c.fps, realtime=True) as stream:
                for frame, t in stream:
                    event = entry["session"].push(frame, timestamp=t)
                    yield live_step(entry, event, settings.live_answer_every_s)
            if event is not None:
                img, text, reply = live_step(entry, event, settings.live_answer_every_s, final=True)
                yield img, text.replace("**Live:**", "**Done:**", 1), reply
        except (FVLMError, UploadError) as e:
            yield gr.skip(), f"**Error:** {e}", gr.skip()
            raise gr.Error(str(e), duration=None, print_exception=False) from e

    outputs = [overlay, status, answer]
    webcam.stream(on_frame, [webcam, question, model_choice], outputs, stream_every=settings.live_every_s,
                  time_limit=settings.live_time_limit_s, concurrency_limit=4, concurrency_id="live",
                  api_visibility="private")
    playing = play.click(on_play, [clip, question, model_choice], outputs, concurrency_limit=4,
                         concurrency_id="live", api_name="live_play")
    stop.click(None, cancels=[playing], api_visibility="private")


# -----------------------------------------------------------------------------
# the UI


def _gallery_items(state: dict, show_coarse: bool, out_dir: Path) -> list[tuple[str, str]]:
    """(png path, caption) per frame, rendered from a finished run's arrays."""
    items = []
    coarse = state["coarse"] if show_coarse else None
    for t, (frame, ts) in enumerate(zip(state["frames"], state["timestamps"])):
        attn = None if state["attention"] is None else state["attention"][t]
        img = render.frame_view(frame, attn, float(ts), None if coarse is None else coarse[t])
        entropy = None if state["entropy"] is None else float(state["entropy"][t])
        path = render.save_png(img, out_dir / f"frame_{t:03d}.png")
        items.append((str(path), render.caption(float(ts), entropy)))
    return items


def build_demo(settings: Settings | None = None) -> gr.Blocks:
    """The Blocks app. Nothing heavy happens here: the model loads on the first request."""
    settings = settings or Settings()
    cache = ModelCache(settings.device)
    dirs = RunDirs(settings.workdir, settings.keep_runs)

    def run(clip: str | None, question: str, mode: str, model: str, show_coarse: bool,
            temperature: float, seed: float | None, max_new_tokens: float) -> Iterator[tuple]:
        """Outputs: status, model info, gallery, entropy plot, answer, overlay video, MP4 file, state."""
        from fvlm.generation import DoneEvent, FrameEvent, TextEvent
        from fvlm.heatmap import save_heatmaps

        try:
            if not clip:
                raise UploadError("Upload a video or image, or click one of the examples.")
            if not question or not question.strip():
                raise UploadError("Type a question about the clip.")
            validate_upload(clip, settings.max_upload_mb, settings.max_duration_s)
            name, target = pick_model(model, settings)  # before anything else touches the name
            first = target not in cache
            loading = "loading the model (the first request takes a few seconds)" if first else "starting"
            yield _update(status=f"Working: {loading}…", model_info=model_markdown(name, None), gallery=[],
                          plot=render.entropy_plot([]), answer="", video=None, mp4=None, state=None)
            vlm = cache.get(target)
            out_dir = dirs.new()
            items: list[tuple[str, str]] = []
            entropies: list[float] = []
            stamps: list[float] = []
            t0 = last = time.perf_counter()
            last_text = 0.0
            yield _update(status=f"Working: reading frames ({mode})…", model_info=model_markdown(name, vlm.config))
            output = None
            for event in vlm.stream(clip, question, mode=mode, max_new_tokens=int(max_new_tokens),
                                      temperature=float(temperature), top_p=1.0,
                                      seed=None if seed is None else int(seed)):
                if isinstance(event, FrameEvent):
                    coarse = event.coarse_attention if show_coarse else None
                    img = render.frame_view(event.frame, event.attention, event.timestamp, coarse)
                    path = render.save_png(img, out_dir / f"frame_{event.index:03d}.png")
                    items.append((str(path), render.caption(event.timestamp, event.entropy)))
                    if event.entropy is not None:
                        entropies.append(event.entropy)
                        stamps.append(event.timestamp)
                    wait = settings.frame_interval_s - (time.perf_counter() - last)
                    if wait > 0:
                        time.sleep(wait)  # pace the live view; the model keeps working meanwhile
                    last = time.perf_counter()
                    yield _update(status=f"Working: frame {event.index + 1} read (t={event.timestamp:.1f}s)…",
                                  gallery=list(items), plot=render.entropy_plot(entropies, stamps))
                elif isinstance(event, TextEvent) and time.perf_counter() - last_text >= TEXT_INTERVAL_S:
                    last_text = time.perf_counter()
                    yield _update(status="Working: writing the answer…", answer=event.text)
                elif isinstance(event, DoneEvent):
                    output = event.output
            if output is None:
                raise RuntimeError("model.stream ended without a DoneEvent")
            seconds = time.perf_counter() - t0
            state = {"frames": output.frames, "attention": output.attention,
                     "coarse": output.coarse_attention, "timestamps": output.timestamps,
                     "entropy": output.entropy}
            notes = [f"**Done:** {len(output.frames)} frames, {mode}, {seconds:.1f} s."]
            mp4 = None
            if output.attention is not None:
                files = save_heatmaps(output.frames, output.attention, out_dir / "heatmaps",
                                      timestamps=output.timestamps, fps=settings.mp4_fps)
                mp4 = out_dir / f"{Path(clip).stem}-{mode}-overlay.mp4"
                os.replace(files.mp4, mp4)
                if files.note:
                    notes.append(f"Overlay MP4: {files.note}.")
            else:
                notes.append("This model has no query, so there are no attention maps.")
            if not output.text:
                notes.append("The model's answer is empty (it ended at once or wrote only whitespace).")
            mp4_path = None if mp4 is None else str(mp4)
            yield _update(status=" ".join(notes), model_info=model_markdown(name, vlm.config),
                          gallery=list(items), answer=output.text,
                          plot=render.entropy_plot(entropies, stamps), video=mp4_path, mp4=mp4_path,
                          state=state)
        except (FVLMError, UploadError) as e:  # bad input: the message says what to do
            yield _update(status=f"**Error:** {e}")
            raise gr.Error(str(e), duration=None, print_exception=False) from e
        except Exception as e:  # a bug: say so here too; gradio logs the traceback and keeps serving
            yield _update(status=f"**Internal error:** {type(e).__name__}: {e}")
            raise

    def rerender(state: dict | None, show_coarse: bool):
        """Redraw the gallery of the last run with or without the coarse maps (no model call)."""
        if not state:
            return gr.skip()
        return _gallery_items(state, show_coarse, dirs.new())

    offered = offered_models(settings)
    default_name, default_model = pick_model(None, settings)
    with gr.Blocks(title="fvlm: where does the model look?", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(
            "# fvlm: watch the model decide where to look\n"
            "Each frame becomes **one** visual token, made by a query that looks into the frame. "
            "In autoregressive mode the LLM writes the next frame's query, so each heatmap shows "
            "where the model chose to look (red = most attention)."
        )
        model_info = gr.Markdown(model_markdown(default_name, saved_config(default_model)), elem_id="model-info")
        with gr.Row():
            with gr.Column(scale=2):
                clip = gr.File(label="Video or image", file_types=["video", "image"], height=140,
                               elem_id="clip")
                question = gr.Textbox(label="Question", placeholder="What color is the triangle?",
                                      elem_id="question", render=False)
                mode = gr.Radio(list(MODES), value="autoregressive", label="Mode", info=MODE_HELP,
                                elem_id="mode", render=False)
                examples = gr.Examples(
                    [[str(EXAMPLES_DIR / f), q, m] for f, q, m in EXAMPLES],
                    inputs=[clip, question, mode],
                    label="Examples: click one to run it",
                    example_labels=[f"{Path(f).stem}: {q}" + ("" if m == "autoregressive" else f" ({m})")
                                    for f, q, m in EXAMPLES],
                    elem_id="examples",
                )
                question.render()
                mode.render()
                show_coarse = gr.Checkbox(True, label="Show the coarse (static-query) map beside the fine "
                                          "map (coarse_fine mode)", elem_id="show-coarse")
                model = gr.Dropdown(list(offered), value=default_name, label="Model",
                                    allow_custom_value=settings.allow_any_model, elem_id="model",
                                    info="or type a model directory or hub id owner/name[@revision]"
                                    if settings.allow_any_model else None)
                with gr.Accordion("Sampling", open=False):
                    temperature = gr.Slider(0.0, 2.0, value=settings.temperature, step=0.05,
                                            label="Temperature (0 = greedy)", elem_id="temperature")
                    seed = gr.Number(0, precision=0, label="Seed", elem_id="seed")
                    max_new = gr.Slider(1, 256, value=settings.max_new_tokens, step=1,
                                        label="Max new tokens", elem_id="max-new-tokens")
                ask = gr.Button("Ask", variant="primary", elem_id="ask")
            with gr.Column(scale=3):
                status = gr.Markdown("Click an example, or upload a clip and ask a question.",
                                     elem_id="status")
                gallery = gr.Gallery(label="Where the model looked: one overlay per sampled frame",
                                     columns=4, object_fit="contain", height="auto", elem_id="gallery")
                with gr.Row():
                    plot = gr.Image(label="Attention entropy per frame", show_label=False, format="png",
                                    interactive=False, elem_id="entropy")
                    answer = gr.Textbox(label="Answer", lines=4, interactive=False, elem_id="answer")
                with gr.Row():
                    video = gr.Video(label="Overlay video", interactive=False, height=300,
                                     elem_id="overlay-video")
                    mp4 = gr.File(label="Download the overlay MP4", interactive=False, elem_id="overlay-file")
        state = gr.State(None)

        inputs = [clip, question, mode, model, show_coarse, temperature, seed, max_new]
        outputs = [status, model_info, gallery, plot, answer, video, mp4, state]
        common = {"fn": run, "inputs": inputs, "outputs": outputs, "concurrency_id": "model"}
        ask.click(api_name="run", **common)
        question.submit(api_visibility="private", **common)
        examples.load_input_event.then(api_visibility="private", **common)
        show_coarse.change(rerender, [state, show_coarse], gallery, api_visibility="private")
    clip_tab, sessions = demo, LiveSessions()
    with gr.Blocks(title="fvlm: where does the model look?", delete_cache=(1800, 3600)) as demo:
        with gr.Tab("Clip", id="clip-tab"):
            clip_tab.render()
        with gr.Tab("Live", id="live-tab", elem_id="live-tab"):
            build_live_tab(settings, lambda choice: cache.get(pick_model(choice, settings)[1]), model,
                           sessions)

        def close_live(request: gr.Request) -> None:  # the browser tab closed
            sessions.close(request.session_hash)

        demo.unload(close_live)
    demo.run_dirs = dirs  # so launchers can delete the outputs on shutdown
    demo.live_sessions = sessions  # open live sessions (closed with their browser tab)
    return demo


def launch(demo: gr.Blocks, settings: Settings, host: str = "127.0.0.1", port: int = 7860,
           share: bool = False, prevent_thread_lock: bool = False, quiet: bool = False) -> gr.Blocks:
    """Queue (one request at a time, others wait) and serve the app."""
    demo.queue(default_concurrency_limit=1, max_size=settings.max_queue)
    demo.launch(
        server_name=host, server_port=port, share=share, prevent_thread_lock=prevent_thread_lock,
        max_file_size=int(settings.max_upload_mb * 2**20),
        allowed_paths=[str(EXAMPLES_DIR)],  # the shipped clips may live outside the cwd
        show_error=True, quiet=quiet,
    )
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo", description="The fvlm demo: watch foveation happen.")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true",
                   help="also open a public gradio.live link (off by default)")
    p.add_argument("--model", action="append", default=None, metavar="MODEL",
                   help=f"a model web clients may pick, repeat to offer several (the first is the default): "
                        f"{MODEL_HELP}")
    p.add_argument("--allow-any-model", action="store_true",
                   help="also let web clients type ANY model directory or hub id: they can then make this "
                        "server read any model path and download any hub repository (trusted users only)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available, else cpu)")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="largest upload accepted (default 50)")
    p.add_argument("--max-duration-s", type=float, default=300.0, help="longest video accepted (default 300)")
    p.add_argument("--frame-interval-s", type=float, default=0.25,
                   help="min seconds between live frame updates, so a fast model stays watchable (0: off)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in args.model or []:
        if not Path(name).is_dir() and parse_hub_id(name) is None:
            print(f"demo: --model {name}: no such directory, and not a hub id owner/name[@revision]",
                  file=sys.stderr)
            return 2
    for name in ("max_upload_mb", "max_duration_s"):
        if not getattr(args, name) > 0:
            print(f"demo: --{name.replace('_', '-')} must be > 0", file=sys.stderr)
            return 2
    settings = Settings(
        models=tuple(args.model or ()), allow_any_model=args.allow_any_model, device=args.device,
        max_upload_mb=args.max_upload_mb, max_duration_s=args.max_duration_s,
        frame_interval_s=max(0.0, args.frame_interval_s),
    )
    demo = build_demo(settings)
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:  # `kill` cleans up like Ctrl-C does
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        launch(demo, settings, host=args.host, port=args.port, share=args.share)  # blocks until Ctrl-C
    except OSError as e:  # e.g. the port is taken
        print(f"demo: could not serve on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    finally:
        demo.run_dirs.cleanup()
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    return 0
