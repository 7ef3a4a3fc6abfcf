"""The `fvlm` command line.

    fvlm generate VIDEO --prompt "What color is the triangle?" [--heatmaps DIR] [--mode M] [--json]
    fvlm live SOURCE --prompt "..." [--fps 1] [--every 10] [--realtime] [--heatmaps DIR]
    fvlm info [MODEL_DIR]
    fvlm make-shapes OUT --n N --seed S
    fvlm eval-shapes MODEL_DIR --index INDEX
    fvlm demo [--port P ...]                  (pip install 'fvlm[demo]')
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .config import MODES
from .errors import FVLMError

COMMANDS_GROUP = "fvlm.commands"  # entry points of app commands: `fvlm demo` -> fvlm_demo.app:main
SHAPES_COMMANDS = {  # fvlm.shapesqa.generate and .score: their add_arguments and run
    "make-shapes": "generate ShapesQA clips, shards and an index",
    "eval-shapes": "ShapesQA accuracy per question type and gaze metrics",
}


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .resolve import MODEL_HELP

    p.add_argument("--model", default=None, metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")


def _load_model(args):
    import torch

    from .hub import load

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return load(args.model, device=device)


def cmd_generate(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    model = _load_model(args)
    t_load = time.perf_counter() - t0
    out = model.generate(
        args.video, args.prompt, mode=args.mode, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_p=args.top_p, seed=args.seed,
        return_attention=True,
    )
    t_gen = time.perf_counter() - t0 - t_load
    files = None
    if args.heatmaps:
        from .heatmap import save_heatmaps

        files = save_heatmaps(out.frames, out.attention, args.heatmaps, timestamps=out.timestamps)
    if args.json:
        print(json.dumps({
            "text": out.text,
            "mode": out.mode,
            "frames": int(len(out.timestamps)),
            "timestamps": [round(float(t), 3) for t in out.timestamps],
            "entropy": None if out.entropy is None else [round(float(e), 4) for e in out.entropy],
            "heatmaps": None if files is None else {
                "pngs": [str(p) for p in files.pngs],
                "mp4": None if files.mp4 is None else str(files.mp4),
                "codec": files.codec,
                "note": files.note,
            },
            "seconds": {"load": round(t_load, 3), "generate": round(t_gen, 3)},
        }))
    else:
        print(out.text)
        if files is not None:
            mp4 = f" and {Path(files.mp4).name}" if files.mp4 else " (no MP4)"
            print(f"[heatmaps: {len(files.pngs)} PNGs{mp4} in {args.heatmaps}]", file=sys.stderr)
            if files.note:
                print(f"[note: {files.note}]", file=sys.stderr)
    return 0


def cmd_live(args: argparse.Namespace) -> int:
    """Watch SOURCE (camera index, file or URL): one line per sampled frame, an answer every --every
    seconds of the stream and at its end; Ctrl-C ends with a final answer."""
    from .live import gaze
    from .video import FrameStream

    model = _load_model(args)
    session = model.live(args.prompt, max_frames=args.max_frames, keep_frames=args.keep_frames,
                         max_new_tokens=args.max_new_tokens)
    out_dir = Path(args.heatmaps) if args.heatmaps else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    next_answer = args.every

    def answer(label: str, t: float) -> None:
        print(f"t={t:8.2f}s  {label} ({session.frames_seen} frames): {session.ask()}", flush=True)

    t = 0.0
    with FrameStream(args.source, fps=args.fps, realtime=args.realtime, timeout_s=args.timeout) as stream, session:
        try:
            for frame, t in stream:
                ev = session.push(frame, timestamp=t)
                g = gaze(ev.attention)
                print(f"t={t:8.2f}s  frame {ev.index:<5d} peak ({g['peak'][0]:.2f}, {g['peak'][1]:.2f})  "
                      f"centroid ({g['centroid'][0]:.2f}, {g['centroid'][1]:.2f})  entropy {ev.entropy:.3f}",
                      flush=True)
                if out_dir is not None:
                    _write_overlay(out_dir / f"frame_{ev.index:06d}.png", ev.frame, ev.attention, t)
                if args.every > 0 and t >= next_answer:
                    answer("answer", t)
                    next_answer = (t // args.every + 1) * args.every
        except KeyboardInterrupt:
            print("[interrupted: the final answer follows]", file=sys.stderr, flush=True)
        if session.frames_seen == 0:
            print(f"fvlm: {stream.name} gave no frame", file=sys.stderr)
            return 1
        answer("final answer", t)
    if stream.dropped:
        print(f"[{stream.dropped} sampled frames dropped: the model read slower than {stream.name} came; "
              "lower --fps]", file=sys.stderr)
    return 0


def add_live_parser(sub) -> None:
    """The `fvlm live` subcommand's arguments."""
    lv = sub.add_parser("live", help="watch a camera, a video file or a stream as it plays",
                        description="Read SOURCE frame by frame as it comes (one visual token per frame, "
                                    "each query chosen after the frames before it): print where each frame "
                                    "was looked at and answer the prompt every --every seconds and at the "
                                    "end. Ctrl-C ends with a final answer.")
    lv.add_argument("source", help="a camera index (0), a video or animated image file, or a URL OpenCV "
                                   "opens (rtsp://, http://)")
    lv.add_argument("--prompt", "-p", required=True, help="the question; it also steers the gaze (text_first)")
    lv.add_argument("--fps", type=float, default=1.0, help="frames read per second of the source (default 1)")
    lv.add_argument("--every", type=float, default=10.0,
                    help="answer every this many seconds of the stream (default 10; 0: only at the end)")
    lv.add_argument("--realtime", action="store_true",
                    help="play a file at its own rate (default: as fast as it decodes)")
    lv.add_argument("--heatmaps", metavar="DIR", help="write each frame's overlay PNG as it comes")
    lv.add_argument("--max-frames", type=int, default=None,
                    help="frames the LLM sees at most: the sliding window (default: the model's max_frames)")
    lv.add_argument("--keep-frames", type=int, default=None,
                    help="frames kept when the window slides (default: half the window)")
    lv.add_argument("--max-new-tokens", type=int, default=32)
    lv.add_argument("--timeout", type=float, default=10.0,
                    help="seconds to wait for a frame before giving up on a stalled source (default 10)")
    _add_model_args(lv)
    lv.set_defaults(func=cmd_live)


def _write_overlay(path: Path, frame, attention, t: float) -> None:
    import cv2

    from .heatmap import overlay_frames

    img = overlay_frames(frame[None], attention[None], [t])[0]
    if not cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: could not write the overlay PNG; check the --heatmaps folder")


def cmd_info(args: argparse.Namespace) -> int:
    from .hub import DEFAULT_MODEL_DIR, WEIGHTS_NAME, checkpoint_format, load, resolve

    source = resolve(args.model_dir or DEFAULT_MODEL_DIR, required=(WEIGHTS_NAME,))
    fmt = checkpoint_format(source.path)
    model = load(source, device="cpu")
    c = model.config
    groups = model.num_parameters_by_group()
    print(f"model:        {args.model_dir or 'the ShapesQA model shipped with fvlm'}")
    print(f"files:        {source.describe()}")
    print("format:       " + ("fvlm (config.json + model.safetensors)" if fmt == "fvlm" else
                            "upstream fVLM checkpoint, rebuilt with the upstream recipe "
                            "(save_pretrained writes the fvlm format)"))
    print(f"class:        {type(model).__name__} ({c.architecture}, {model.visual_tokens_per_frame} "
          f"visual token(s) per frame)")
    print(f"layout:       {c.layout}")
    if c.notes:
        print(f"notes:        {c.notes}")
    if (card := source.path / "README.md").is_file():
        print(f"model card:   {card}")
    for name, n in groups.items():
        print(f"params {name + ':':<10}{n:>12,}")
    print(f"params total: {sum(groups.values()):>12,}")
    print("config:")
    print(json.dumps(c.to_dict(), indent=2))
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; given the command that runs, the ShapesQA ones other than it
    are listed without their arguments, so that `fvlm generate` does not import their modules."""
    parser = argparse.ArgumentParser(
        prog="fvlm",
        description="Foveated video VLM: one visual token per frame; the LLM chooses where to look.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="answer a question about a video or image",
                       description="Answer a question about a video (or image) and optionally "
                                   "write per-frame attention heatmaps.")
    g.add_argument("video", help="video file (mp4, avi, ...) or image (jpg, png, ...)")
    g.add_argument("--prompt", "-p", required=True, help="the question or instruction")
    g.add_argument("--mode", choices=MODES, default="autoregressive",
                   help="autoregressive: frame by frame, each query chosen by the LLM (default); "
                        "coarse_fine: two passes (training mode); coarse_only: one static query")
    g.add_argument("--heatmaps", metavar="DIR", help="write overlay PNGs and an MP4 of the attention")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of plain text")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    g.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    _add_model_args(g)
    g.set_defaults(func=cmd_generate)
    add_live_parser(sub)

    from .resolve import MODEL_HELP

    i = sub.add_parser("info", help="what a model is: format, files, architecture, parameter counts, config")
    i.add_argument("model_dir", nargs="?", default=None, metavar="MODEL", help=MODEL_HELP)
    i.set_defaults(func=cmd_info)

    for name, help_text in SHAPES_COMMANDS.items():
        s = sub.add_parser(name, help=help_text)
        if command in (None, name):  # their modules import cv2 and torch: only when one runs
            from .shapesqa import generate, score

            shapes = generate if name == "make-shapes" else score
            s.description = (shapes.__doc__ or "").strip().split("\n\n")[0]
            shapes.add_arguments(s)
            s.set_defaults(func=shapes.run)
    d = sub.add_parser("demo", add_help=False,
                       help="the gradio demo with live heatmaps (pip install 'fvlm[demo]')",
                       description="Pass-through to the demo's own command line; see `fvlm demo --help`.")
    d.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def run_command(name: str, argv: list[str]) -> int:
    """`fvlm NAME ...` for a command an app registers in the `fvlm.commands` entry point group
    (the demo: its own flags --host, --port, --share, --model, ...). The library imports no app."""
    from importlib.metadata import entry_points

    found = entry_points(group=COMMANDS_GROUP, name=name)
    try:
        if not found:
            raise ImportError(f"no {COMMANDS_GROUP!r} entry point named {name!r}")
        command = next(iter(found)).load()
    except ImportError as e:
        print(f"fvlm: `fvlm {name}` needs its extra: pip install 'fvlm[{name}]' ({e})", file=sys.stderr)
        return 2
    return int(command(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo"]:
        return run_command("demo", argv[1:])
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FVLMError as e:
        print(f"fvlm: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
