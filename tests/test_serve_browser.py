"""Real-browser test of the `vrp serve` page: Debian's /usr/bin/chromium driven by Playwright (no browser download)
against uvicorn on 127.0.0.1, with the tiny random Llama (or, for a nicer docs screenshot, the model named by env
VRP_SCREENSHOT_MODEL, e.g. smollm2-135m). Saves docs/serve.png when VRP_UPDATE_SCREENSHOT=1, else a temp file."""
from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import pytest
from helpers import CHROMIUM, CHROMIUM_ARGS, VTT, live_server, tiny_llama

from vrp.decoding import generate_comments
from vrp.presets import PRESETS
from vrp.serve.app import create_app
from vrp.serve.config import ServeConfig

DOCS_PNG = Path(__file__).resolve().parents[1] / "docs" / "serve.png"
TITLE = "Three tips for better sourdough bread"
TRANSCRIPT = ("Hi everyone, welcome back to the kitchen. Today I'll show you three simple tricks for a better "
              "sourdough loaf: feed your starter the night before, use less water than you think, and bake it in "
              "a very hot covered pot. Let me know in the comments how yours turns out!")

pytestmark = [pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                 reason=f"{CHROMIUM} not found: install Debian's browser with "
                                        "`apt-get install -y chromium` (this test never downloads one)"),
              pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                                 reason="playwright not installed: pip install -e '.[dev]'"),
              pytest.mark.browser]


def _loaded(tokenizer):
    name = os.environ.get("VRP_SCREENSHOT_MODEL")
    if name:
        from vrp.model import load_for_inference

        return load_for_inference(model=name, precision="fp32")
    return tiny_llama(tokenizer), tokenizer, {"model": "tiny-llama", "adapter": "runs/demo/adapter",
                                              "precision": "cpu-fp32"}


def test_page_predicts_comments_in_chromium(tokenizer, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    gate = threading.Event()  # holds the first generation so the busy state can be observed

    def gated(*args, **kwargs):
        assert gate.wait(30), "the test never opened the gate"
        return generate_comments(*args, **kwargs)

    loaded = _loaded(tokenizer)
    real = bool(os.environ.get("VRP_SCREENSHOT_MODEL"))
    wait_ms = 600_000 if real else 60_000  # a real model on a busy 2-core CPU can take minutes
    settings = ServeConfig(default_num_comments=3, default_max_new_tokens=30 if real else 8, timeout_s=wait_ms / 1000)
    app = create_app(settings, loaded, generate_fn=gated)
    outside: list[str] = []
    with live_server(app) as url, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                    headless=True, args=CHROMIUM_ARGS,
                                                    viewport={"width": 960, "height": 1000})
        try:
            page = ctx.new_page()
            page_errors: list[str] = []
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url)
                       else (outside.append(route.request.url), route.abort()))
            page.goto(url + "/")
            expect(page.locator("#loaded")).to_contain_text(f"Model: {loaded[2]['model']}")
            if not real:
                expect(page.locator("#loaded")).to_contain_text("adapter runs/demo/adapter")
            expect(page.locator("#preset option")).to_have_count(len(PRESETS))

            # 1. nothing typed: a readable error, no request
            page.click("#submit")
            expect(page.locator("#error")).to_have_text("Paste a transcript or drop a transcript file first.")

            # 2. title + pasted transcript: busy state while generating, then 3 comments
            page.fill("#title", TITLE)
            page.fill("#transcript", TRANSCRIPT)
            page.fill("#num-comments", "3")
            page.select_option("#preset", "nucleus")
            page.click("#submit")
            expect(page.locator("#busy")).to_be_visible()
            expect(page.locator("#submit")).to_be_disabled()
            expect(page.locator("#predict-form")).to_have_attribute("aria-busy", "true")
            expect(page.locator("#error")).to_be_hidden()
            gate.set()
            expect(page.locator("#comments li.comment")).to_have_count(3, timeout=wait_ms)
            expect(page.locator("#busy")).to_be_hidden()
            expect(page.locator("#submit")).to_be_enabled()
            expect(page.locator("#summary")).to_contain_text("3 comments · preset nucleus")
            assert all(t.strip() for t in page.locator("#comments .meta").all_inner_texts())
            shot = DOCS_PNG if os.environ.get("VRP_UPDATE_SCREENSHOT") == "1" else tmp_path / "serve.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

            # 3. the server's 422 shown readably (greedy allows one comment; the page caps it, so force 2)
            page.select_option("#preset", "greedy")
            page.evaluate("document.getElementById('num-comments').max = '20'")
            page.fill("#num-comments", "2")
            page.click("#submit")
            expect(page.locator("#error")).to_contain_text("Error 422: preset greedy gives exactly one comment",
                                                            timeout=wait_ms)

            # 4. a caption file chosen instead of pasted text: 2 comments via /v1/predict/file
            page.select_option("#preset", "beam")
            page.fill("#num-comments", "2")
            page.set_input_files("#file", files=[{"name": "talk.vtt", "mimeType": "text/vtt", "buffer": VTT}])
            expect(page.locator("#file-chosen")).to_contain_text("talk.vtt")
            expect(page.locator("#transcript")).to_be_disabled()
            with page.expect_response(lambda r: r.url.endswith("/v1/predict/file"), timeout=wait_ms) as resp:
                page.click("#submit")
            assert resp.value.status == 200
            expect(page.locator("#error")).to_be_hidden()
            expect(page.locator("#summary")).to_contain_text("2 comments · preset beam", timeout=wait_ms)
            expect(page.locator("#comments li.comment")).to_have_count(2)
            assert page_errors == []
        finally:
            ctx.close()
    assert outside == [], f"the page requested non-local URLs: {outside}"
