"""The demo in a real browser: Debian's chromium driven by Python playwright (never `playwright install`).

Skipped only when /usr/bin/chromium is absent (CI installs it: `apt-get install -y chromium`).
Leaves a screenshot in test-artifacts/demo_browser.png.
"""

import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

from demo.screenshot import (
    CHROMIUM,
    click_example,
    free_port,
    launch_browser,
    open_app,
    status_text,
    wait_done,
)

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is absent: install Debian's chromium "
                       "(apt-get install -y chromium) to run the browser test"),
    pytest.mark.filterwarnings("ignore::Warning:gradio.queueing"),  # pandas deprecations inside gradio
]
ARTIFACTS = ROOT / "test-artifacts"
# records every distinct number of gallery images seen, to prove the gallery grows frame by frame
WATCH_GALLERY = """() => {
    window.__galleryCounts = [];
    const seen = () => {
        const n = document.querySelectorAll('#gallery img').length;
        if (window.__galleryCounts.at(-1) !== n) window.__galleryCounts.push(n);
    };
    new MutationObserver(seen).observe(document.body, {childList: true, subtree: true});
}"""


@pytest.fixture(scope="module")
def url(tmp_path_factory, tokenizer):
    pytest.importorskip("playwright", reason="the playwright Python package is not installed")
    from demo import app
    from fvlm.tiny import tiny_model

    model_dir = tiny_model(seed=0, tokenizer=tokenizer).save_pretrained(tmp_path_factory.mktemp("model"))
    settings = app.Settings(models=(str(model_dir),), device="cpu", frame_interval_s=0.15, max_new_tokens=8,
                            temperature=1.0,  # sampled: the random model then writes some text
                            workdir=tmp_path_factory.mktemp("runs"))
    demo = app.build_demo(settings)
    port = free_port()
    app.launch(demo, settings, port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_browser_bad_upload_then_example(url, tmp_path):
    from playwright.sync_api import sync_playwright

    junk = tmp_path / "broken.mp4"
    junk.write_bytes(b"this is not a video" * 100)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = launch_browser(pw, str(tmp_path / "profile"))
        page = None
        try:
            page = browser.new_page()
            open_app(page, url)

            # a corrupt upload: a visible error, in the status box and a toast
            page.locator("#clip input[type=file]").set_input_files(str(junk))
            page.locator('#clip a[download="broken.mp4"]').wait_for(timeout=20_000)  # upload done
            page.locator("#question textarea").fill("What color is the triangle?")
            page.locator("#ask").click()
            assert "broken.mp4: not a readable video" in wait_done(page)
            toast = page.get_by_test_id("toast-body")
            toast.first.wait_for(timeout=10_000)
            assert "not a readable video" in toast.first.inner_text()

            # the server keeps serving
            page.evaluate(WATCH_GALLERY)
            previous = status_text(page)
            click_example(page, "shapes_easy: What color is the triangle?")
            status = wait_done(page, timeout_s=60, previous=previous)
            assert status.startswith("Done: 8 frames, autoregressive"), status
            assert page.locator("#answer textarea").input_value(), "no answer text"
            assert page.locator("#gallery img").count() == 8  # one overlay per sampled frame
            counts = page.evaluate("window.__galleryCounts")
            assert any(0 < n < 8 for n in counts), f"the gallery never showed a partial run: {counts}"
            assert page.locator("#question textarea").input_value() == "What color is the triangle?"
        finally:
            if page is not None:  # also on failure: the artifact shows what the page looked like
                page.wait_for_timeout(300)  # let the last images paint
                page.screenshot(path=str(ARTIFACTS / "demo_browser.png"), full_page=True)
            browser.close()


# -----------------------------------------------------------------------------
# the Live tab: Chromium's fake camera plays a ShapesQA clip


def write_y4m(src: Path, path: Path, size: int = 256) -> Path:
    """A video file -> an uncompressed y4m (I420) at size x size, what Chromium's fake camera plays."""
    import cv2

    cap = cv2.VideoCapture(str(src))
    fps = round(cap.get(cv2.CAP_PROP_FPS))
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{size} H{size} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            bgr = cv2.resize(bgr, (size, size), interpolation=cv2.INTER_NEAREST)
            f.write(b"FRAME\n" + cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).tobytes())
    return path


@pytest.fixture(scope="module")
def live_app(tmp_path_factory):
    """The demo with the shipped model (so answers are words), answers every second."""
    pytest.importorskip("playwright", reason="the playwright Python package is not installed")
    from demo import app

    settings = app.Settings(device="cpu", live_answer_every_s=1.0, workdir=tmp_path_factory.mktemp("runs"))
    demo = app.build_demo(settings)
    port = free_port()
    app.launch(demo, settings, port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", demo
    demo.close()


def test_browser_live_tab_webcam_and_file(live_app, tmp_path):
    """Webcam: overlays stream back, an answer arrives, and closing the tab closes the session.
    Then a video file played in real time ends with a final answer."""
    from playwright.sync_api import sync_playwright

    from demo import app
    from demo.screenshot import CHROMIUM_ARGS

    url, demo = live_app
    camera = write_y4m(app.EXAMPLES_DIR / "shapes_easy.mp4", tmp_path / "camera.y4m")
    fake_camera = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                   f"--use-file-for-fake-video-capture={camera}"]
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS + fake_camera, viewport={"width": 1280, "height": 1000})
        try:
            page = browser.new_page()
            open_app(page, url)
            page.get_by_role("tab", name="Live").click()
            page.locator("#live-webcam button", has_text="Click to Access Webcam").click()
            page.locator("#live-webcam button", has_text="Record").click()
            page.wait_for_function(  # a few frames in, with an answer
                """() => /frame ([3-9]|\\d\\d)/.test(document.querySelector('#live-status')?.innerText ?? '')
                         && document.querySelector('#live-answer textarea')?.value""", timeout=90_000)
            assert page.locator("#live-overlay img").count() == 1
            assert page.locator("#live-answer textarea").input_value() in {"red", "green", "blue", "yellow"}
            assert len(demo.live_sessions) == 1
            page.wait_for_timeout(300)
            page.screenshot(path=str(ARTIFACTS / "demo_live.png"), full_page=True)
            page.close()  # closing the tab closes its live session
            deadline = time.monotonic() + 30
            while len(demo.live_sessions) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert len(demo.live_sessions) == 0, "the closed tab's live session is still open"

            page = browser.new_page()  # a video file, played in real time
            open_app(page, url)
            page.get_by_role("tab", name="Live").click()
            page.locator("#live-file input[type=file]").set_input_files(str(app.EXAMPLES_DIR / "shapes_easy.mp4"))
            page.locator('#live-file a[download="shapes_easy.mp4"]').wait_for(timeout=20_000)
            t0 = time.monotonic()
            page.locator("#live-play").click()
            page.wait_for_function("() => /Done:/.test(document.querySelector('#live-status')?.innerText ?? '')",
                                   timeout=90_000)
            assert time.monotonic() - t0 > 6.5  # real time: the last sampled frame is at 7 s
            assert "frame 8, t=7.0s" in page.locator("#live-status").inner_text()
            assert page.locator("#live-answer textarea").input_value() == "red"
        finally:
            browser.close()
