"""Presets as data (`vrp.presets`): what each preset declares, and that every consumer asks the preset, not its name.
A new single-output preset (`one-shot`, patched into `PRESETS`) must be treated as single-output by `vrp generate`'s
and `vrp evaluate`'s configs and CLI, the generation count, decoding, `vrp bench generate`, the server (both bodies)
and its page through `GET /v1/info`: each check would give another value if that consumer compared names with
`greedy`."""
from __future__ import annotations

import os
from typing import Any

import pytest
from helpers import CHROMIUM, CHROMIUM_ARGS, VTT, live_server, one_line_error, tiny_llama

from vrp.decoding import GeneratedComment, generate_comments
from vrp.errors import ConfigError, VrpError
from vrp.evaluate.config import EvaluateConfig
from vrp.generate.config import GenerateConfig
from vrp.generate.run import predict
from vrp.presets import PRESETS, Preset, check_rerank, get_preset, needs_no_video_prompt
from vrp.prompts import PromptConfig, build_prompt_ids
from vrp.records import Video
from vrp.serve.app import create_app
from vrp.serve.config import ServeConfig

BODY = {"title": "Bread", "transcript": "Feed the starter, use less water, bake it hot."}


@pytest.fixture(scope="module")
def tiny(tokenizer):
    return tiny_llama(tokenizer, seed=2)


@pytest.fixture
def one_shot(monkeypatch) -> Preset:
    """A new single-output preset (greedy search with a repetition guard), registered for one test."""
    p = Preset("one-shot", "greedy search with a repetition guard", {"do_sample": False, "num_beams": 1},
               repetition_penalty=1.3, single_output=True)
    monkeypatch.setitem(PRESETS, p.name, p)
    return p


class Counter:
    """A fake generator for the server: records how many comments each call asked for and gives that many."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    def __call__(self, model, tok, prompt_ids, preset, n, max_new_tokens, seed, **_kw):
        self.asked.append((preset, n))
        return [GeneratedComment(text=f"c{i}", tokens=2, logprob=-1.0, finished=True) for i in range(n)]


def test_presets_declare_what_they_can_and_need() -> None:
    caps = {n: p.capabilities() for n, p in PRESETS.items()}
    assert [n for n, c in caps.items() if c["single_output"]] == ["greedy"]
    assert [n for n, c in caps.items() if c["needs_no_video_prompt"]] == ["cad"]
    assert [n for n, c in caps.items() if c["samples"]] == ["beam-sample", "nucleus", "cad"]
    assert {n: c["beams"] for n, c in caps.items()} == {"greedy": 1, "beam": 5, "beam-temperature": 5,
                                                         "beam-sample": 5, "nucleus": 1, "cad": 1}
    assert [n for n, c in caps.items() if not c["rerankable"]] == ["greedy"]
    assert [get_preset(n).comment_count(4) for n in ("greedy", "beam", "nucleus")] == [1, 4, 4]
    assert needs_no_video_prompt("cad") and needs_no_video_prompt("nucleus", rerank=5)
    assert not needs_no_video_prompt("nucleus")
    # decoding without sampling or beams can only give one comment: a preset must say so
    with pytest.raises(ValueError, match="preset plain: decoding without sampling or beams gives one comment; "
                                         "declare single_output=True"):
        Preset("plain", "greedy without the flag", {"do_sample": False, "num_beams": 1})


def test_a_new_single_output_preset_is_refused_rerank_by_every_config(one_shot, capsys, tmp_path) -> None:
    from vrp.bench.config import BenchGenerateConfig, engine_presets

    with pytest.raises(ConfigError, match="rerank: preset one-shot gives a single comment"):
        check_rerank(3, 1, ["nucleus", "one-shot"])
    with pytest.raises(ConfigError, match="rerank: preset one-shot gives a single comment"):
        GenerateConfig(preset="one-shot", num_comments=1, rerank=3)
    with pytest.raises(ConfigError, match="rerank: preset one-shot gives a single comment"):
        EvaluateConfig(presets="nucleus,one-shot", num_comments=1, rerank=[0, 3])
    assert GenerateConfig(preset="one-shot", num_comments=4).num_comments == 4  # the count is the preset's to give
    one_line_error(capsys, ["generate", "--model", str(tmp_path / "no-model"), "--transcript", "hi", "--preset",
                            "one-shot", "--rerank", "3", "--out", str(tmp_path / "g.csv")],
                   "error: --rerank: preset one-shot gives a single comment")
    assert "one-shot" in engine_presets() and "beam" not in engine_presets() and "cad" not in engine_presets()
    with pytest.raises(ConfigError, match="num_comments: one-shot gives exactly one comment per prompt"):
        BenchGenerateConfig(run="r", preset="one-shot", num_comments=2)


def test_a_new_single_output_preset_gives_one_comment_in_generate_and_evaluate(one_shot, tiny, tokenizer) -> None:
    cfg = EvaluateConfig(presets="one-shot,nucleus", num_comments=3, max_new_tokens=3)
    videos = [Video("a", "t1", "one two"), Video("b", "", "three four")]
    loaded = (tiny, tokenizer, {"model": "tiny", "adapter": None})
    counts = {}
    for _label, preset, rerank in cfg.setups():
        rows = predict(videos, cfg.generate_config(preset, rerank), progress=False, loaded=loaded)
        counts[preset] = [sum(r["video_id"] == v.video_id for r in rows) for v in videos]
    assert counts == {"one-shot": [1, 1], "nucleus": [3, 3]}
    ids = build_prompt_ids(tokenizer, "t", "one two", PromptConfig())
    with pytest.raises(VrpError, match=r"preset one-shot gives exactly one comment; .*\(beam, beam-temperature, "
                                       r"beam-sample, nucleus, cad\)"):
        generate_comments(tiny, tokenizer, ids, "one-shot", 2, max_new_tokens=2)


def _client(tiny: Any, tokenizer: Any, gen: Counter) -> Any:
    from starlette.testclient import TestClient

    app = create_app(ServeConfig(default_num_comments=5, max_rerank=6, default_max_new_tokens=2),
                     (tiny, tokenizer, {"model": "tiny", "adapter": None, "precision": "fp32"}), generate_fn=gen)
    return TestClient(app, raise_server_exceptions=False)


def test_the_server_asks_the_preset_for_the_comment_count(one_shot, tiny, tokenizer) -> None:
    gen = Counter()
    c = _client(tiny, tokenizer, gen)
    info = {p["name"]: p for p in c.get("/v1/info").json()["presets"]}
    assert (info["one-shot"]["single_output"], info["one-shot"]["rerankable"]) == (True, False)
    assert (info["nucleus"]["single_output"], info["nucleus"]["rerankable"]) == (False, True)
    assert info["one-shot"]["description"] == "greedy search with a repetition guard"
    # no num_comments: one comment from the single-output preset, the default 5 from another
    json_one = c.post("/v1/predict", json={**BODY, "preset": "one-shot"})
    file_one = c.post("/v1/predict/file", files={"file": ("t.vtt", VTT)}, data={"preset": "one-shot"})
    five = c.post("/v1/predict", json={**BODY, "preset": "nucleus"})
    assert [len(r.json()["comments"]) for r in (json_one, file_one, five)] == [1, 1, 5]
    assert gen.asked == [("one-shot", 1), ("one-shot", 1), ("nucleus", 5)]
    for bad, words in (({"num_comments": 2}, "preset one-shot gives exactly one comment"),
                       ({"num_comments": 1, "rerank": 3}, "rerank preset one-shot gives a single comment")):
        for r in (c.post("/v1/predict", json={**BODY, "preset": "one-shot", **bad}),
                  c.post("/v1/predict/file", files={"file": ("t.vtt", VTT)},
                         data={"preset": "one-shot", **{k: str(v) for k, v in bad.items()}})):
            assert r.status_code == 422 and words in r.json()["message"], r.text
    assert len(gen.asked) == 3  # nothing was generated for the refused requests


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="/usr/bin/chromium not found")
def test_the_page_reads_single_output_from_v1_info(one_shot, tiny, tokenizer, tmp_path) -> None:
    from playwright.sync_api import expect, sync_playwright

    gen = Counter()
    app = create_app(ServeConfig(default_num_comments=3, max_rerank=6, default_max_new_tokens=2),
                     (tiny, tokenizer, {"model": "tiny", "adapter": None, "precision": "fp32"}), generate_fn=gen)
    with live_server(app) as url, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                    headless=True, args=CHROMIUM_ARGS)
        try:
            page = ctx.new_page()
            page.goto(url + "/")
            expect(page.locator("#loaded")).to_contain_text("Model: tiny")
            page.fill("#transcript", BODY["transcript"])
            page.fill("#rerank", "4")
            page.select_option("#preset", "one-shot")
            expect(page.locator("#num-comments")).to_have_value("1")
            expect(page.locator("#num-comments")).to_have_attribute("max", "1")
            expect(page.locator("#rerank")).to_be_disabled()
            expect(page.locator("#rerank")).to_have_value("0")
            with page.expect_response(lambda r: r.url.endswith("/v1/predict")) as resp:
                page.click("#submit")
            assert resp.value.status == 200 and len(resp.value.json()["comments"]) == 1
            expect(page.locator("#rerank")).to_be_disabled()  # still, after the busy state enabled every field
            page.select_option("#preset", "nucleus")
            expect(page.locator("#rerank")).to_be_enabled()
            expect(page.locator("#num-comments")).to_have_attribute("max", "20")
        finally:
            ctx.close()
    assert gen.asked == [("one-shot", 1)]
