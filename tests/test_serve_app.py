"""API tests of `vrp serve` (tiny random Llama over the real SmolLM2 tokenizer, or a fake generator where only the
HTTP behaviour matters), the `vrp serve` CLI wiring and schemathesis against /openapi.json; `vrp bench serve` is
tests/test_bench_serve.py."""
from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from typing import Any

import httpx
import pytest
from helpers import INFO, VTT, Recorder, client, one_line_error, tiny_llama

from vrp.errors import ConfigError
from vrp.presets import PRESETS
from vrp.prompts import PromptConfig
from vrp.serve.app import create_app, is_loopback
from vrp.serve.config import ServeConfig

BODY = {"title": "Three sourdough tips", "transcript": "Feed the starter, use less water, bake it hot."}


@pytest.fixture(scope="module")
def tiny(tokenizer):
    """A tiny random Llama shared by the tests of this module (never given hooks that outlive a test)."""
    return tiny_llama(tokenizer)


def make_app(model: Any, tokenizer: Any, generate_fn: Any = None, prompt: PromptConfig | None = None, **kw: Any):
    """An app with small test limits; `kw` overrides ServeConfig fields."""
    config = ServeConfig(**{"default_max_new_tokens": 4, "max_new_tokens": 32, **kw})
    return create_app(config, (model, tokenizer, INFO), prompt, generate_fn=generate_fn)


# --- info, page, schema ----------------------------------------------------------------------------------------
def test_info_health_page_and_schema(tiny, tokenizer):
    c = client(make_app(tiny, tokenizer, max_num_comments=7))
    info = c.get("/v1/info").json()
    assert (info["model"], info["adapter"]) == ("tiny-llama", "runs/demo/adapter")
    assert [p["name"] for p in info["presets"]] == list(PRESETS)
    assert info["limits"]["max_num_comments"] == 7 and info["limits"]["max_prompt_tokens"] == 1024
    assert info["limits"]["max_body_bytes"] == 2_000_000
    assert c.get("/healthz").json() == {"status": "ok", "running": False, "queued": 0, "queue_size": 8,
                                        "avg_seconds": None}
    page = c.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert 'id="predict-form"' in page.text and "http://" not in page.text and "https://" not in page.text
    js = c.get("/static/app.js")
    assert js.status_code == 200 and "/v1/predict/file" in js.text and "https://" not in js.text
    assert c.get("/static/style.css").headers["content-type"].startswith("text/css")
    schema = c.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/predict/file", "/v1/info", "/healthz"} <= set(schema["paths"])
    req = schema["components"]["schemas"]["PredictRequest"]["properties"]
    # num_comments may be omitted (null): its integer branch carries the limit
    assert [a.get("maximum") for a in req["num_comments"]["anyOf"]] == [7, None]
    assert req["max_new_tokens"]["maximum"] == 32
    missing = c.get("/docs")  # Swagger UI would load from a CDN, so it is off
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


# --- successful predictions with the real tiny model ---------------------------------------------------------------
def test_predict_returns_requested_comments_and_is_seeded(tiny, tokenizer):
    c = client(make_app(tiny, tokenizer))
    body = {**BODY, "num_comments": 3, "preset": "nucleus", "max_new_tokens": 5, "seed": 7}
    r = c.post("/v1/predict", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["comments"]) == 3
    for com in out["comments"]:
        assert isinstance(com["text"], str) and 1 <= com["tokens"] <= 5
        assert math.isfinite(com["logprob"]) and com["logprob"] < 0
        assert com["finished"] or com["tokens"] == 5
    assert (out["model"], out["adapter"], out["preset"]) == ("tiny-llama", "runs/demo/adapter", "nucleus")
    assert out["seconds"] > 0 and out["queue_seconds"] >= 0
    assert out["prompt_tokens"] > out["transcript_tokens"] > 5 and out["transcript_truncated"] is False
    again = c.post("/v1/predict", json=body).json()
    assert [x["text"] for x in again["comments"]] == [x["text"] for x in out["comments"]]


def test_predict_defaults_and_beam(tiny, tokenizer):
    c = client(make_app(tiny, tokenizer, default_num_comments=5, default_max_new_tokens=2))
    r = c.post("/v1/predict", json=BODY)
    assert r.status_code == 200 and len(r.json()["comments"]) == 5 and r.json()["preset"] == "nucleus"
    assert all(x["tokens"] <= 2 for x in r.json()["comments"])
    beam = c.post("/v1/predict", json={**BODY, "preset": "beam", "num_comments": 2, "max_new_tokens": 2})
    assert beam.status_code == 200 and len(beam.json()["comments"]) == 2
    greedy = c.post("/v1/predict", json={**BODY, "preset": "greedy", "num_comments": 1, "max_new_tokens": 2})
    assert greedy.status_code == 200 and len(greedy.json()["comments"]) == 1
    # greedy without num_comments: one comment (it gives exactly one), not the default 5 and a 422
    for r in (c.post("/v1/predict", json={**BODY, "preset": "greedy", "max_new_tokens": 2}),
              c.post("/v1/predict/file", files={"file": ("t.txt", b"hi there")},
                     data={"preset": "greedy", "max_new_tokens": "2"})):
        assert r.status_code == 200 and len(r.json()["comments"]) == 1 and r.json()["preset"] == "greedy", r.text


# --- validation -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("patch, where", [
    ({"num_comments": 0}, "num_comments"), ({"num_comments": 21}, "num_comments"),
    ({"num_comments": "many"}, "num_comments"), ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"max_new_tokens": 33}, "max_new_tokens"), ({"preset": "bogus"}, "preset"),
    ({"preset": "greedy", "num_comments": 2}, "greedy"), ({"transcript": ""}, "transcript"),
    ({"transcript": None}, "transcript"), ({"title": "x" * 501}, "title"), ({"seed": -1}, "seed"),
    ({"model": "/etc/passwd"}, "model"), ({"adapter_path": "/tmp/evil"}, "adapter_path"),
    ({"num_comments": True}, "num_comments"), ({"num_comments": "2"}, "num_comments"), ({"seed": 1.5}, "seed"),
    ({"rerank": False}, "rerank"), ({"max_new_tokens": "4"}, "max_new_tokens"),
])
def test_invalid_requests_give_422_with_readable_message(tiny, tokenizer, patch, where):
    rec = Recorder()
    c = client(make_app(tiny, tokenizer, generate_fn=rec))
    r = c.post("/v1/predict", json={**BODY, **patch})
    assert r.status_code == 422, r.text
    err = r.json()
    assert err["status"] == 422 and err["error"] == "invalid_request" and where in err["message"]
    assert "Traceback" not in r.text and rec.prompts == []


def test_blank_transcript_bad_json_and_lone_surrogate(tiny, tokenizer):
    c = client(make_app(tiny, tokenizer, generate_fn=Recorder()))
    blank = c.post("/v1/predict", json={**BODY, "transcript": "   \n "})
    assert blank.status_code == 422 and "transcript" in blank.json()["message"]
    hdr = {"content-type": "application/json"}
    bad = c.post("/v1/predict", content=b'{"transcript": ', headers=hdr)
    assert bad.status_code == 422 and "not valid JSON" in bad.json()["message"]
    sur = c.post("/v1/predict", content=b'{"transcript": "a\\ud800b"}', headers=hdr)
    assert sur.status_code == 422 and "transcript" in sur.json()["message"]


def test_transcript_is_cut_to_the_prompt_budget(tiny, tokenizer):
    rec = Recorder()
    c = client(make_app(tiny, tokenizer, generate_fn=rec, prompt=PromptConfig(max_prompt_tokens=80)))
    long = " ".join(f"word{i}" for i in range(400))
    out = c.post("/v1/predict", json={**BODY, "transcript": long, "num_comments": 2}).json()
    assert out["prompt_tokens"] == len(rec.prompts[0]) and 60 < out["prompt_tokens"] <= 80
    assert out["transcript_tokens"] >= 400 and out["transcript_truncated"] is True
    assert [x["text"] for x in out["comments"]] == ["comment 0", "comment 1"]
    text = tokenizer.decode(rec.prompts[0])
    assert "word0 " in text and "word399" not in text
    short = c.post("/v1/predict", json=BODY).json()
    assert short["transcript_truncated"] is False


# --- limits: 413, 503, 504, 500, cross-origin ------------------------------------------------------------------------
def test_body_limit_413_on_content_length_and_on_streamed_body(tiny, tokenizer):
    rec = Recorder()
    app = make_app(tiny, tokenizer, generate_fn=rec, max_body_mb=0.002048)
    c = client(app)
    r = c.post("/v1/predict", json={**BODY, "transcript": "x" * 3000})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large" and "2048" in r.json()["message"]
    up = c.post("/v1/predict/file", files={"file": ("big.txt", b"y" * 4000)})
    assert up.status_code == 413
    assert c.post("/v1/predict", json={**BODY, "transcript": "x" * 1500}).status_code == 200

    async def chunked() -> httpx.Response:
        async def body():
            for _ in range(5):
                yield b'{"transcript": "' + b"z" * 600
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as ac:
            return await ac.post("/v1/predict", content=body(), headers={"content-type": "application/json"})
    r = asyncio.run(chunked())
    assert "content-length" not in r.request.headers and r.status_code == 413
    assert len(rec.prompts) == 1  # only the request under the limit reached the generator


@pytest.mark.parametrize("queue_size", [0, 1])
def test_full_queue_gives_503_with_retry_after(tiny, tokenizer, queue_size):
    release = threading.Event()
    rec = Recorder(release)
    app = make_app(tiny, tokenizer, generate_fn=rec, queue_size=queue_size)

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as ac:
            admitted = [asyncio.create_task(ac.post("/v1/predict", json=BODY)) for _ in range(queue_size + 1)]
            assert await asyncio.to_thread(rec.started.wait, 20)
            await asyncio.sleep(0.05)
            health = (await ac.get("/healthz")).json()
            refused = await ac.post("/v1/predict", json=BODY)
            release.set()
            return health, refused, [await t for t in admitted]

    health, refused, done = asyncio.run(scenario())
    assert health["running"] is True and health["queued"] == queue_size
    assert refused.status_code == 503 and refused.json()["error"] == "busy"
    assert int(refused.headers["retry-after"]) >= 1
    assert [r.status_code for r in done] == [200] * (queue_size + 1)
    assert app.state.worker.stats()["running"] is False and app.state.worker.stats()["queued"] == 0


def test_timeout_gives_504_and_stops_generation(tokenizer):
    model = tiny_llama(tokenizer, seed=1)
    calls = []

    def slow_forward(_m, _a):
        calls.append(time.monotonic())
        time.sleep(0.05)

    model.register_forward_pre_hook(slow_forward)
    app = make_app(model, tokenizer, timeout_s=0.4)
    c = client(app)
    t0 = time.monotonic()
    r = c.post("/v1/predict", json={**BODY, "num_comments": 1, "max_new_tokens": 32, "preset": "nucleus"})
    assert r.status_code == 504 and r.json()["error"] == "timeout" and time.monotonic() - t0 < 5
    deadline = time.monotonic() + 10
    while app.state.worker.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    settled = len(calls)
    time.sleep(0.3)
    assert app.state.worker.stats()["running"] is False and len(calls) == settled
    assert settled < 20  # a finished generation would have taken 32+ forward passes
    assert len(model._forward_pre_hooks) == 1  # the server's cancel hook was removed


def test_internal_error_is_a_generic_500_without_traceback(tiny, tokenizer):
    def broken(*_a, **_k):
        raise RuntimeError("boom in /secret/path/model.py")

    c = client(make_app(tiny, tokenizer, generate_fn=broken))
    r = c.post("/v1/predict", json=BODY)
    assert r.status_code == 500 and r.json() == {"status": 500, "error": "internal_error",
                                                 "message": "internal error during prediction; see the server log"}
    assert "secret" not in r.text and "Traceback" not in r.text


def test_cross_origin_post_is_refused(tiny, tokenizer):
    rec = Recorder()
    c = client(make_app(tiny, tokenizer, generate_fn=rec))
    r = c.post("/v1/predict", json=BODY, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and rec.prompts == []
    sandboxed = c.post("/v1/predict", json=BODY, headers={"Origin": "null"})  # sandboxed iframe, file: page
    assert sandboxed.status_code == 403 and sandboxed.json()["error"] == "forbidden" and rec.prompts == []
    ok = c.post("/v1/predict", json=BODY, headers={"Origin": "http://testserver"})
    assert ok.status_code == 200


# --- file upload -----------------------------------------------------------------------------------------------------
def test_file_upload_parses_captions(tiny, tokenizer):
    rec = Recorder()
    c = client(make_app(tiny, tokenizer, generate_fn=rec))
    r = c.post("/v1/predict/file", files={"file": ("../../etc/talk.vtt", VTT)},
               data={"title": "Bread day", "num_comments": "2", "preset": "beam"})
    assert r.status_code == 200, r.text
    assert len(r.json()["comments"]) == 2 and r.json()["preset"] == "beam"
    prompt = tokenizer.decode(rec.prompts[0])
    assert "Title: Bread day" in prompt and "hello viewers today we bake bread" in prompt
    assert "-->" not in prompt and "<b>" not in prompt and "WEBVTT" not in prompt


@pytest.mark.parametrize("files, data, status, words", [
    ({"file": ("slides.pdf", b"%PDF")}, {}, 422, "unsupported transcript file type"),
    ({"file": ("talk.txt", b"caf\xe9 au lait \x00\x81\xff")}, {}, 422, "talk.txt"),  # fits no encoding
    ({"file": ("empty.vtt", b"WEBVTT\n\n")}, {}, 422, "empty.vtt"),
    ({"file": ("t.txt", b"hi there")}, {"preset": "greedy", "num_comments": "2"}, 422, "greedy"),
    ({"file": ("t.txt", b"hi there")}, {"num_comments": "21"}, 422, "num_comments"),
    ({"file": ("t.txt", b"hi there")}, {"max_new_tokens": "1000"}, 422, "max_new_tokens"),
    ({}, {"title": "no file"}, 422, "file"),
    ({"file": ("t.txt", b"hi there")}, {"model": "/etc/passwd"}, 422, "unknown field(s) ['model']"),
    ({"file": ("t.txt", b"hi there")}, {"preset": ["nucleus", "greedy"], "seed": ["1", "2"]}, 422,
     "field(s) given more than once: ['preset', 'seed']"),
    ({"file": ("t.txt", b"hi there")}, {"num_comments": "1_0"}, 422, "whole number in digits"),
    ({"file": ("t.txt", b"hi there")}, {"max_new_tokens": "1.0"}, 422, "whole number in digits"),
    ({"file": ("t.txt", b"hi there")}, {"seed": "+1"}, 422, "whole number in digits"),
    ({"file": ("t.txt", b"hi there")}, {"rerank": "1_0"}, 422, "whole number in digits"),
])
def test_bad_uploads_give_clear_errors(tiny, tokenizer, files, data, status, words):
    rec = Recorder()
    c = client(make_app(tiny, tokenizer, generate_fn=rec))
    r = c.post("/v1/predict/file", files=files or None, data=data)
    assert r.status_code == status, r.text
    assert words in r.json()["message"] and rec.prompts == []


# --- schemathesis: no 500s -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_schemathesis_finds_no_server_errors(tiny, tokenizer):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error

    app = make_app(tiny, tokenizer, max_num_comments=3, default_num_comments=2, max_new_tokens=2,
                   default_max_new_tokens=2, max_title_chars=60, max_body_mb=0.02,
                   prompt=PromptConfig(max_prompt_tokens=96))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    t0 = time.monotonic()
    ops = [res.ok() for res in schema.get_all_operations()]
    assert {op.path for op in ops} >= {"/v1/predict", "/v1/predict/file", "/v1/info", "/healthz"}
    for op in ops:
        examples = 12 if op.method.upper() == "POST" else 3

        @given(case=op.as_strategy())
        @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate(checks=[not_a_server_error])

        check()
    assert time.monotonic() - t0 < 60


# --- CLI wiring --------------------------------------------------------------------------------------------------
def test_is_loopback():
    assert all(map(is_loopback, ["127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "10.0.0.5", "example.com", "::"]))


def test_cli_serve_builds_settings_from_run_and_warns_off_loopback(tmp_path, monkeypatch, capsys, tiny, tokenizer):
    import os

    import torch
    import uvicorn

    import vrp.model
    from vrp.cli import build_parser

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: smollm2-135m\nmax_prompt_tokens: 300\ntruncation: head_tail\n")
    seen: dict[str, Any] = {}
    monkeypatch.setattr(vrp.model, "load_for_inference",
                        lambda *a, **k: seen.setdefault("load", (a, k)) and (tiny, tokenizer, INFO))
    def fake_run(server: Any, sockets: Any = None) -> None:
        c = server.config
        seen.update(app=c.app, host=c.host, port=c.port, bound=[s.getsockname()[:2] for s in sockets])
        server.started = True

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    from vrp.bench.serve import free_port

    port = free_port()
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.update(threads=n))
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    args = build_parser().parse_args(["serve", "--run", str(run), "--host", "0.0.0.0", "--port", str(port),
                                      "--queue-size", "2", "--max-body-mb", "0.5", "--timeout-s", "9",
                                      "--threads", "1"])
    assert args._run(args) == 0
    s, prompt = seen["app"].state.settings, seen["app"].state.prompt
    assert (prompt.max_prompt_tokens, prompt.truncation) == (300, "head_tail")
    assert (s.queue_size, s.max_body_bytes, s.timeout_s) == (2, 500_000, 9.0)
    assert (seen["host"], seen["port"]) == ("0.0.0.0", port) and str(seen["load"][0][1]) == str(run)
    assert seen["bound"] == [("0.0.0.0", port)]  # uvicorn serves on the socket bound before the model loaded
    assert seen["threads"] == 1
    assert "warning: binding to 0.0.0.0" in capsys.readouterr().err
    args = build_parser().parse_args(["serve", "--model", "x", "--max-prompt-tokens", "64", "--port",
                                      str(free_port())])
    args._run(args)
    assert seen["app"].state.prompt.max_prompt_tokens == 64 and seen["host"] == "127.0.0.1"
    assert seen["threads"] == 3  # 4 usable cores - 1 for the event loop and clients
    assert "warning" not in capsys.readouterr().err


def test_serve_refuses_a_busy_port_or_a_bad_host_before_loading_the_model(monkeypatch, capsys):
    import socket

    import vrp.model

    def no_load(*a: Any, **k: Any) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(vrp.model, "load_for_inference", no_load)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        one_line_error(capsys, ["serve", "--model", "m", "--port", str(port)], f"error: --port: cannot listen on "
                                                                              f"127.0.0.1:{port} (")
    one_line_error(capsys, ["serve", "--model", "m", "--host", "999.1.1.1"], "error: --host: cannot use '999.1.1.1'")
    one_line_error(capsys, ["serve", "--model", "m", "--host", "203.0.113.7"], "error: --host: cannot listen on "
                                                                               "203.0.113.7:8000 (")


def test_serve_options_are_checked_by_the_config(capsys):

    with pytest.raises(ConfigError, match=r"default_num_comments: must be <= 3 \(`max_num_comments`\), got 5"):
        ServeConfig(max_num_comments=3, default_num_comments=5)
    assert ServeConfig(max_num_comments=3).default_num_comments == 3 and ServeConfig().default_max_new_tokens == 150
    assert ServeConfig(max_body_mb=0.5).max_body_bytes == 500_000
    one_line_error(capsys, ["serve", "--model", "m", "--port", "0"], "error: --port: must be >= 1, got 0")
    one_line_error(capsys, ["serve", "--model", "m", "--max-new-tokens", "8", "--default-max-new-tokens", "9"],
                   "error: --default-max-new-tokens: must be <= 8 (--max-new-tokens), got 9")
    one_line_error(capsys, ["serve", "--checkpoint", "latest", "--model", "m"], "error: --checkpoint: needs a --run")
    one_line_error(capsys, ["serve"], "error: --model: give a --model or a --run")
    one_line_error(capsys, ["bench", "serve", "--requests", "5"],
                   "error: --url: give either a --url (a running server) or a --model/--run (start one)")
    one_line_error(capsys, ["bench", "serve", "--model", "m", "--concurrency", "0"],
                   "error: --concurrency: must be >= 1, got 0")


def test_a_json_field_given_twice_is_refused_not_the_last_one_taken(tiny, tokenizer):
    rec = Recorder()
    c = client(make_app(tiny, tokenizer, generate_fn=rec))
    body = json.dumps(BODY)[:-1] + ', "num_comments": 2, "num_comments": 1}'
    r = c.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "field(s) given more than once: ['num_comments']" in r.json()["message"]
    assert rec.prompts == []
    ok = c.post("/v1/predict", content=json.dumps(BODY), headers={"content-type": "application/json"})
    assert ok.status_code == 200 and len(rec.prompts) == 1


def test_repeated_json_keys_in_one_pass():
    from vrp.serve.guard import repeated_json_keys

    body = ('{"transcript": "hi", ' + ", ".join(['"seed": 1'] * 200_000) + ', "title": "a", "title": "b"}').encode()
    assert repeated_json_keys(body) == ["seed", "title"]
    assert repeated_json_keys(b'{"a": {"b": 1, "b": 2}, "c": 3}') == ["b"]
    assert repeated_json_keys(b'{"a": 1}') == [] and repeated_json_keys(b"not json") == []


def test_a_json_body_without_its_content_type_is_named(tiny, tokenizer):
    c = client(make_app(tiny, tokenizer, generate_fn=Recorder()))
    r = c.post("/v1/predict", content=json.dumps(BODY), headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 422 and "Content-Type: application/json" in r.json()["message"], r.text


@pytest.mark.parametrize("body, words", [
    (b'{"transcript": "h\xe9"}', "not UTF-8 text: byte 0xE9 at offset 17"),
    (b"", "must be a JSON object, sent with Content-Type: application/json"),
])
def test_json_bodies_that_are_not_text_or_empty(tiny, tokenizer, body, words):
    rec = Recorder()
    c = client(make_app(tiny, tokenizer, generate_fn=rec))
    r = c.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and words in r.json()["message"], r.text
    assert rec.prompts == []
    utf16 = json.dumps(BODY).encode("utf-16")          # JSON in UTF-16 with a BOM is still read
    assert c.post("/v1/predict", content=utf16, headers={"content-type": "application/json"}).status_code == 200
