"""The generation worker behind `vrp serve` (`vrp.serve.worker`) with the real app on uvicorn and a tiny random Llama:
a client that hangs up stops its generation within a few decoding steps, on every endpoint that generates, and a
queued job of a client that hung up is dropped before it starts."""
from __future__ import annotations

import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from helpers import VTT, live_server, tiny_llama

from vrp.serve.app import create_app
from vrp.serve.config import ServeConfig

INFO = {"model": "tiny-llama", "adapter": None, "precision": "cpu-fp32"}
STEP_S = 0.05  # each forward pass (one decoding step) is slowed down to this, so a whole job takes 10 s
JOB = {"num_comments": 1, "max_new_tokens": 200, "preset": "nucleus", "seed": 1}


class SlowModel:
    """A tiny Llama whose forward passes each take `STEP_S` seconds and are counted."""

    def __init__(self, tokenizer: Any) -> None:
        self.model = tiny_llama(tokenizer, seed=2)
        self.steps = 0
        self.model.register_forward_pre_hook(self._slow)

    def _slow(self, _module: Any, _args: Any) -> None:
        self.steps += 1
        time.sleep(STEP_S)


def app_for(slow: SlowModel, tokenizer: Any, **kw: Any) -> Any:
    return create_app(ServeConfig(**{"max_new_tokens": 256, **kw}), (slow.model, tokenizer, INFO))


def open_request(url: str, path: str, **request: Any) -> socket.socket:
    """Send one HTTP request over a raw socket and return the socket without reading the answer (a client that
    may hang up at any time, as `curl -m 5` does)."""
    req = httpx.Request("POST", url + path, **request)
    body = req.read()
    head = [f"POST {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in req.headers.items()]
    sock = socket.create_connection((urlsplit(url).hostname, urlsplit(url).port))
    sock.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + body)
    return sock


def wait_for(cond: Any, timeout: float = 10.0) -> float:
    """Seconds until `cond()` was true (polled every 10 ms); fails after `timeout`."""
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "condition not reached"
        time.sleep(0.01)
    return time.monotonic() - t0


def health(url: str) -> dict[str, Any]:
    return httpx.get(url + "/healthz").json()


@pytest.mark.slow
@pytest.mark.parametrize("endpoint", ["json", "file"])
def test_a_client_that_hangs_up_stops_its_generation(tokenizer, endpoint) -> None:
    slow = SlowModel(tokenizer)
    app = app_for(slow, tokenizer)
    request = ({"json": {"title": "t", "transcript": "bread and butter " * 50, **JOB}} if endpoint == "json" else
               {"files": {"file": ("talk.vtt", VTT)}, "data": {k: str(v) for k, v in JOB.items()}})
    path = "/v1/predict" if endpoint == "json" else "/v1/predict/file"
    with live_server(app) as url:
        sock = open_request(url, path, **request)
        wait_for(lambda: slow.steps >= 5)  # generating
        assert health(url)["running"] is True
        sock.close()  # the client hangs up
        at_hangup = slow.steps
        seconds = wait_for(lambda: health(url)["running"] is False)
        stopped = slow.steps
        time.sleep(0.3)
        assert slow.steps == stopped  # nothing runs after the cancellation
    # the poll (0.2 s) + one step, with room for a busy machine; the whole job would take 200+ steps
    assert stopped - at_hangup <= 20 and seconds < 3, (at_hangup, stopped, seconds)
    assert len(slow.model._forward_pre_hooks) == 1  # the server's cancel hook was removed


@pytest.mark.slow
def test_a_queued_job_of_a_client_that_hung_up_is_dropped(tokenizer) -> None:
    slow = SlowModel(tokenizer)
    app = app_for(slow, tokenizer, queue_size=2)
    started: list[str] = []
    predict = app.state.worker._predict

    def recording(job: Any, cancel: threading.Event) -> Any:  # which jobs reached the model
        started.append(job.title)
        return predict(job, cancel)

    app.state.worker._predict = recording
    with live_server(app) as url:
        first = open_request(url, "/v1/predict", json={"title": "first", "transcript": "x " * 30, **JOB})
        wait_for(lambda: slow.steps >= 3)
        second = open_request(url, "/v1/predict", json={"title": "second", "transcript": "y " * 30, **JOB})
        wait_for(lambda: health(url)["queued"] == 1)
        second.close()  # gone while waiting for the worker
        wait_for(lambda: health(url)["queued"] == 0, timeout=3)
        assert health(url)["running"] is True  # the first job goes on
        first.close()
        wait_for(lambda: health(url)["running"] is False, timeout=3)
        time.sleep(0.3)
        assert started == ["first"] and health(url)["running"] is False
