"""Regenerate demo/screenshot.png for the README: serve the demo, click an example in headless
Chromium, wait until the run is done, take a screenshot and shrink it to <= 200 KB.

    python -m demo.screenshot [--out demo/screenshot.png] [--model DIR] [--example shapes_easy]

Needs Debian's chromium (`apt-get install -y chromium`) and the playwright Python package; it
drives /usr/bin/chromium directly (never `playwright install`). The browser test uses the helpers.
"""

from __future__ import annotations

import argparse
import io
import socket
import sys
import tempfile
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
MAX_BYTES = 200_000


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_browser(playwright, user_data_dir: str):
    """Headless Debian chromium via playwright, profile in user_data_dir (pass a fresh, empty dir)."""
    return playwright.chromium.launch_persistent_context(
        user_data_dir, executable_path=str(CHROMIUM),
        headless=True, args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 1000},
    )


def open_app(page, url: str, timeout_s: float = 60) -> None:
    """Load the app and wait until gradio has rendered it (it renders client-side)."""
    page.goto(url, wait_until="load", timeout=timeout_s * 1000)
    page.wait_for_selector("#examples button", timeout=timeout_s * 1000)


def status_text(page) -> str:
    return page.locator('#status [data-testid="markdown"]').inner_text()


def wait_done(page, timeout_s: float = 60, previous: str | None = None) -> str:
    """Wait until the status box reports "Done:" or "Error:" (and differs from `previous`); its text."""
    page.wait_for_function(
        """previous => {
            const text = document.querySelector('#status [data-testid=markdown]')?.innerText ?? '';
            return /Done:|Error:/.test(text) && text !== previous;
        }""",
        arg=previous, timeout=timeout_s * 1000,
    )
    return status_text(page)


def click_example(page, text: str) -> None:
    page.locator("#examples button", has_text=text).first.click()


def shrink_png(png: bytes, out: Path, max_bytes: int = MAX_BYTES) -> Path:
    """Write the screenshot as a 256-colour PNG, downscaled until it fits in max_bytes."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    while True:
        buf = io.BytesIO()
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(buf, "PNG", optimize=True)
        if buf.tell() <= max_bytes or img.width < 400:
            break
        img = img.resize((int(img.width * 0.85), int(img.height * 0.85)), Image.Resampling.LANCZOS)
    out.write_bytes(buf.getvalue())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.screenshot", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("screenshot.png"))
    p.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped one)")
    p.add_argument("--example", default="shapes_easy", help="text of the example button to click")
    args = p.parse_args(argv)
    if not CHROMIUM.is_file():
        print(f"{CHROMIUM} not found; install it with `apt-get install -y chromium`", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    from .app import Settings, build_demo, launch

    settings = Settings(models=() if args.model is None else (str(args.model),))
    demo = build_demo(settings)
    port = free_port()
    launch(demo, settings, port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="fvlm-chromium-") as profile:
            browser = launch_browser(pw, profile)
            page = browser.new_page()
            open_app(page, f"http://127.0.0.1:{port}/")
            click_example(page, args.example)
            status = wait_done(page, timeout_s=120)
            page.wait_for_timeout(500)  # let the last images paint
            png = page.screenshot(full_page=True)
            browser.close()
    finally:
        demo.close()
        demo.run_dirs.cleanup()
    out = shrink_png(png, args.out)
    print(f"{out}: {out.stat().st_size / 1000:.0f} KB ({status.splitlines()[0]})")
    return 0 if "Done:" in status else 1


if __name__ == "__main__":
    sys.exit(main())
