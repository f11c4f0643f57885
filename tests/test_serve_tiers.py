"""The tier field of `vrp serve`: the marker reaches the model's prompt (JSON and file upload), an untiered model
refuses tiers with a readable 422, /v1/info tells the page, and the page's selector (real Chromium) sends the tier."""
from __future__ import annotations

import os
import threading

import pytest
from helpers import CHROMIUM, CHROMIUM_ARGS, INFO, VTT, Recorder, client, live_server, tiny_llama

from vrp.serve.app import create_app
from vrp.serve.config import ServeConfig
from vrp.tiers import marker_ids

BODY = {"title": "Three sourdough tips", "transcript": "Feed the starter, use less water, bake it hot."}


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return tiny_llama(tokenizer)


def _app(tiny, tokenizer, tiers: bool, rec: Recorder):
    return create_app(ServeConfig(default_max_new_tokens=4, max_new_tokens=32), (tiny, tokenizer, INFO),
                      generate_fn=rec, tiers=tiers)


def test_tier_marker_follows_the_prompt(tiny, tokenizer):
    rec = Recorder()
    c = client(_app(tiny, tokenizer, True, rec))
    assert c.get("/v1/info").json()["tiers"]["choices"] == ["any", "top", "typical", "low"]
    r = c.post("/v1/predict", json={**BODY, "tier": "any"})
    assert r.status_code == 200 and r.json()["tier"] == "any"
    plain = rec.prompts[-1]
    for tier in ("top", "low"):
        r = c.post("/v1/predict", json={**BODY, "tier": tier})
        assert r.status_code == 200 and r.json()["tier"] == tier
        assert rec.prompts[-1] == plain + marker_ids(tokenizer, tier)
    r = c.post("/v1/predict/file", files={"file": ("talk.vtt", VTT, "text/vtt")}, data={"tier": "typical"})
    assert r.status_code == 200 and r.json()["tier"] == "typical"
    assert rec.prompts[-1][-len(marker_ids(tokenizer, "typical")):] == marker_ids(tokenizer, "typical")


def test_untiered_model_refuses_a_tier(tiny, tokenizer):
    rec = Recorder()
    c = client(_app(tiny, tokenizer, False, rec))
    info = c.get("/v1/info").json()["tiers"]
    assert info["trained"] is False and info["choices"] == ["any"]
    r = c.post("/v1/predict", json={**BODY, "tier": "top"})
    assert r.status_code == 422 and r.json()["details"][0]["loc"] == "body.tier"
    assert "needs a run trained with like tiers" in r.json()["message"]
    r = c.post("/v1/predict/file", files={"file": ("talk.vtt", VTT, "text/vtt")}, data={"tier": "low"})
    assert r.status_code == 422 and r.json()["details"][0]["loc"] == "body.tier"
    assert c.post("/v1/predict", json={**BODY, "tier": "any"}).status_code == 200
    assert rec.prompts and len(rec.prompts) == 1  # nothing was generated for the refused requests


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="/usr/bin/chromium not found")
@pytest.mark.parametrize("tiers", [True, False])
def test_page_tier_selector_in_chromium(tiny, tokenizer, tmp_path, tiers):
    from playwright.sync_api import expect, sync_playwright

    rec = Recorder(release=threading.Event())
    rec.release.set()
    app = _app(tiny, tokenizer, tiers, rec)
    with live_server(app) as url, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                    headless=True, args=CHROMIUM_ARGS)
        try:
            page = ctx.new_page()
            page.goto(url + "/")
            expect(page.locator("#loaded")).to_contain_text("Model: tiny-llama")
            page.fill("#transcript", BODY["transcript"])
            page.fill("#num-comments", "2")
            if not tiers:
                expect(page.locator("#tier-box")).to_be_hidden()
                with page.expect_response(lambda r: r.url.endswith("/v1/predict")) as resp:
                    page.click("#submit")
                assert resp.value.status == 200 and resp.value.json()["tier"] == "any"
                return
            expect(page.locator("#tier-box")).to_be_visible()
            expect(page.locator("#tier option")).to_have_text(["any comment", "the top comment", "a typical comment",
                                                               "an ignored comment"])
            page.select_option("#tier", label="an ignored comment")
            with page.expect_response(lambda r: r.url.endswith("/v1/predict")) as resp:
                page.click("#submit")
            assert resp.value.status == 200 and resp.value.json()["tier"] == "low"
            expect(page.locator("#summary")).to_contain_text("2 comments · preset nucleus · an ignored comment")
            assert rec.prompts[-1][-len(marker_ids(tokenizer, "low")):] == marker_ids(tokenizer, "low")
        finally:
            ctx.close()
