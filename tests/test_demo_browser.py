"""The demo in a real browser: Debian's chromium driven by Python playwright (never `playwright install`).

Skipped only when /usr/bin/chromium is absent (CI installs it: `apt-get install -y chromium`).
Leaves a screenshot in test-artifacts/demo_browser.png.
"""

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
