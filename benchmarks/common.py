"""Shared by the benchmarks: timing, memory, the machine description, output files and a PNG plot.

Timing: warm-up calls, then the median of repeated calls, each bracketed by a device synchronize
(CUDA) so the host clock sees the device work. Memory: on CUDA the allocator's peak
(torch.cuda.max_memory_allocated after reset_peak_memory_stats); on CPU the process RSS sampled
every millisecond by a thread (approximate: the allocator may keep freed pages). "Transient" is the
peak during the call minus what was allocated just before it (so weights and caches that outlive
the call are excluded). For the CPU numbers glibc's malloc is told to map every block of 64 KiB or
more on its own (mallopt M_MMAP_THRESHOLD), so freed tensors leave the RSS instead of being reused
unseen from the heap.
"""

from __future__ import annotations

import ctypes
import datetime
import functools
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

MiB = 1 << 20


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], device: str, warmup: int, repeat: int) -> float:
    """Median wall time of fn() in milliseconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def setup(device: str) -> None:
    """Call first: on CPU, make RSS follow tensor memory (see the module docstring)."""
    if device == "cpu":
        _malloc_maps_large_blocks()


@functools.cache
def _malloc_maps_large_blocks() -> bool:
    """mallopt(M_MMAP_THRESHOLD, 64 KiB) (also stops glibc raising the threshold as blocks are freed)."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 16))
    except (OSError, AttributeError):  # not glibc: RSS deltas may then miss reused heap memory
        return False


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_mib(fn: Callable[[], object], device: str) -> dict[str, float]:
    """Run fn() once: {"peak_MiB": the peak, "transient_MiB": the peak minus the level before}."""
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        sync(device)
        peak = torch.cuda.max_memory_allocated()
    else:
        _malloc_maps_large_blocks()
        before = peak = _rss()
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _rss())
                time.sleep(1e-3)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            fn()
        finally:
            done.set()
            sampler.join()
        peak = max(peak, _rss())
    return {"peak_MiB": round(peak / MiB, 1), "transient_MiB": round((peak - before) / MiB, 1)}


def allocated_mib(device: str) -> float:
    """Memory held now (CUDA: allocated by torch; CPU: process RSS)."""
    sync(device)
    return (torch.cuda.memory_allocated() if device == "cuda" else _rss()) / MiB


def machine(device: str) -> dict[str, object]:
    import transformers

    info: dict[str, object] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "torch_threads": torch.get_num_threads(),
    }
    if device == "cuda":
        info["device"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    else:
        info["device"] = f"cpu ({platform.processor() or platform.machine()})"
        info["cpu_memory"] = "RSS sampled every 1 ms" + (", malloc maps blocks >= 64 KiB"
                                                         if _malloc_maps_large_blocks() else "")
    return info


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path | None, name: str, result: dict, text: str) -> None:
    """out/name.md (the table) and out/name.json (everything), if out is given."""
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")


# ---- a line chart with PIL (matplotlib is not a dependency) --------------------------------------
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def line_chart(path: Path, title: str, panels: list[dict], width: int = 1400, height: int = 560) -> None:
    """Side-by-side panels, each {"title", "ylabel", "x": [..], "series": {name: [y or None, ..]}},
    x on a log2 axis, y linear from 0. Written as a PNG."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    draw.text((20, 10), title, fill="black", font=font)
    pw = width // len(panels)
    for i, panel in enumerate(panels):
        _panel(draw, font, panel, x0=i * pw, y0=30, w=pw, h=height - 30)
    img.save(path)


def _panel(draw, font, panel: dict, x0: int, y0: int, w: int, h: int) -> None:
    import math

    left, right, top, bottom = x0 + 70, x0 + w - 20, y0 + 30, y0 + h - 170
    xs = [math.log2(x) for x in panel["x"]]
    ys = [y for s in panel["series"].values() for y in s if y is not None]
    ymax = max(ys, default=1.0) * 1.08 or 1.0
    xmin, xmax = min(xs), max(xs)
    span = (xmax - xmin) or 1.0

    def px(x: float) -> float:
        return left + (x - xmin) / span * (right - left)

    def py(y: float) -> float:
        return bottom - y / ymax * (bottom - top)

    draw.text((left, y0 + 8), panel["title"], fill="black", font=font)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")
    for k in range(6):  # y grid and labels
        y = ymax * k / 5
        draw.line([(left, py(y)), (right, py(y))], fill=(225, 225, 225))
        draw.text((x0 + 5, py(y) - 6), f"{y:.0f}" if y >= 100 else f"{y:.3g}", fill="black", font=font)
    for x, lx in zip(panel["x"], xs):
        draw.line([(px(lx), bottom), (px(lx), bottom + 4)], fill="black")
        draw.text((px(lx) - 6, bottom + 8), str(x), fill="black", font=font)
    draw.text(((left + right) // 2 - 20, bottom + 24), "frames", fill="black", font=font)
    draw.text((x0 + 5, top - 22), panel["ylabel"], fill="black", font=font)
    for j, (name, series) in enumerate(panel["series"].items()):
        color = PALETTE[j % len(PALETTE)]
        pts = [(px(lx), py(y)) for lx, y in zip(xs, series) if y is not None]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        for x, y in pts:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        ly = bottom + 44 + 14 * j  # legend below the axis
        draw.line([(left, ly + 6), (left + 24, ly + 6)], fill=color, width=3)
        draw.text((left + 30, ly), name, fill="black", font=font)
