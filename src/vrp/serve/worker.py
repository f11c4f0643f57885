"""The generation worker behind `vrp serve`: one generation at a time, a bounded wait queue, deadlines, cancellation.

Knows: how a prediction job (title + transcript text or an uploaded caption file, preset, number of comments, token
budget, seed, like tier) becomes prompt token ids (`prompts.build_prompt_ids`, with the server's `PromptConfig`, then
the tier's marker, `vrp.tiers.prompt_with_tier`) and generated
comments (`rerank.comments_for_prompt`: plain decoding, or reranking from `rerank` samples by PMI, with the no-video
prompt that `cad` and reranking need) on a single worker thread; how many jobs may be admitted (the running one +
`queue_size` waiting, else `QueueFull` with a Retry-After estimate); and how a job that passed its deadline is
stopped: a forward pre-hook on the model raises at the next forward pass (one decoding step), so a timed-out request
or one whose client hung up (checked every `DISCONNECT_POLL_S` while it waits, `GenerationWorker.run`) frees the
worker within one step instead of running to `max_new_tokens`, and a queued one is dropped before it starts.
Does not know: HTTP, JSON, status codes or the web page (see `vrp.serve.app`), nor how the model was loaded.

Why a thread and not the event loop: `generate` holds the CPU for seconds; running it on the loop would stall
every other request (health checks, queue rejections). Torch releases the GIL inside its kernels, so the loop
stays responsive while the worker computes.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from vrp import clean
from vrp.decoding import GeneratedComment
from vrp.embeddings import load_embedder
from vrp.errors import VrpError
from vrp.presets import DEFAULT_RERANK_LAMBDA, needs_no_video_prompt
from vrp.prompts import PromptConfig, build_prompt_ids, no_video_prompt_ids
from vrp.rerank import comments_for_prompt
from vrp.tiers import prompt_with_tier
from vrp.transcripts import SUPPORTED_SUFFIXES as UPLOAD_SUFFIXES  # the caption formats an upload may have
from vrp.transcripts import parse_transcript_bytes, segments_to_text

GenerateFn = Callable[..., "list[GeneratedComment]"]
DISCONNECT_POLL_S = 0.2  # how often a waiting request checks whether its client is still connected (seconds)


class QueueFull(Exception):
    """The worker is busy and `queue_size` jobs already wait. `retry_after`: suggested wait in whole seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy; retry in about {retry_after} s")
        self.retry_after = retry_after


class JobTimeout(Exception):
    """A job did not finish (queue wait + generation) within the request timeout; it has been cancelled."""


class ClientGone(Exception):
    """The client closed its connection before its job finished; the job has been cancelled."""


class JobCancelled(Exception):
    """Raised inside the worker thread (from the model's forward pre-hook) to abandon a timed-out job, or when the
    worker is closing."""


@dataclass
class Job:
    """One prediction request, already validated. Exactly one of `transcript` / `upload` is set;
    `upload` is `(file bytes, file name)`, the name used only for its suffix and in error messages. tier: `any` or
    a like tier whose marker follows the prompt (`vrp.tiers`; the app admits a tier only for a tiered run)."""

    title: str
    preset: str
    num_comments: int
    max_new_tokens: int
    seed: int | None = None
    transcript: str | None = None
    upload: tuple[bytes, str] | None = None
    tier: str = "any"
    rerank: int = 0  # sample this many and keep the best `num_comments` by PMI (`vrp.rerank`); 0 = off


@dataclass
class JobResult:
    """What a job produced. seconds: prompt building + generation wall time; queue_seconds: time spent waiting
    for the worker; prompt_tokens: length of the rendered prompt; transcript_tokens: the whole transcript's
    length before truncation (tokens); transcript_truncated: whether part of the transcript was cut; notes: what
    was assumed about an uploaded file (e.g. the encoding guessed for a file that is not UTF-8)."""

    comments: list[GeneratedComment]
    seconds: float
    queue_seconds: float
    prompt_tokens: int
    transcript_tokens: int
    transcript_truncated: bool
    notes: list[str] = field(default_factory=list)


def transcript_from_upload(data: bytes, filename: str, notes: list[str] | None = None) -> str:
    """Transcript text of an uploaded caption file (`.vtt`, `.srt`, `.sbv`, `.json3`, `.json`, `.txt`).

    Uses `vrp.transcripts` (cue parsing, tag stripping, rolling-caption de-duplication, encoding detection).
    Only the suffix of `filename` is looked at; nothing is read from the file system. What was assumed about the
    file (a guessed encoding) is appended to `notes`. Raises VrpError on an unsupported suffix, undecodable bytes
    or an empty transcript."""
    name = os.path.basename(filename.replace("\\", "/"))[:120] or "upload"
    suffix = os.path.splitext(name)[1].lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise VrpError(f"{name}: unsupported transcript file type {suffix or '(none)'!r}; "
                       f"upload one of {', '.join(UPLOAD_SUFFIXES)}")
    text = segments_to_text(parse_transcript_bytes(data, name, notes))
    if not text.strip():
        raise VrpError(f"{name}: the file holds no transcript text")
    return text


class GenerationWorker:
    """Runs prediction jobs one at a time on a dedicated thread.

    Admission: at most `1 + queue_size` jobs are pending (running or waiting); `submit` raises `QueueFull` beyond.
    A slot is released when the job's thread future is done (finished, failed or cancelled), not when the HTTP
    request returns, so a timed-out job still holds its slot until its cancellation lands (one decoding step).
    """

    def __init__(self, model: Any, tokenizer: Any, prompt_config: PromptConfig, queue_size: int,
                 generate_fn: GenerateFn | None = None, rerank_lambda: float = DEFAULT_RERANK_LAMBDA) -> None:
        if queue_size < 0:
            raise VrpError(f"queue_size must be >= 0, got {queue_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.prompt_config = prompt_config
        self.queue_size = queue_size
        # the default generation stops at the tokens of the prompts' format (an injected one is called as it is)
        self.generate_fn: GenerateFn = generate_fn or functools.partial(comments_for_prompt,
                                                                        prompt_format=prompt_config.prompt_format)
        self.rerank_lambda = rerank_lambda
        self._embedder: Any = None  # MiniLM, loaded on the first reranked job (worker thread)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vrp-generate")
        self._lock = threading.Lock()
        self._pending = 0
        self._running = False
        self._avg_seconds: float | None = None  # exponential moving average of job run time
        self._current_cancel: threading.Event | None = None

    def stats(self) -> dict[str, Any]:
        """`{running: bool, queued: int (waiting, not running), queue_size: int, avg_seconds: float|None}`."""
        with self._lock:
            return {"running": self._running, "queued": max(0, self._pending - int(self._running)),
                    "queue_size": self.queue_size,
                    "avg_seconds": None if self._avg_seconds is None else round(self._avg_seconds, 3)}

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the average job time times the pending jobs, within [1, 600]."""
        with self._lock:
            avg, pending = self._avg_seconds, self._pending
        return int(min(600, max(1, math.ceil((avg or 1.0) * max(1, pending)))))

    def submit(self, job: Job, cancel: threading.Event) -> concurrent.futures.Future[JobResult]:
        """Admit `job` or raise `QueueFull`. `cancel` set by the caller abandons the job at the next model step."""
        with self._lock:
            full = self._pending >= 1 + self.queue_size
            if not full:
                self._pending += 1
        if full:
            raise QueueFull(self.retry_after())
        try:
            fut = self._executor.submit(self._execute, job, cancel, time.perf_counter())
        except RuntimeError:  # executor shut down
            self._release(None)
            raise QueueFull(self.retry_after()) from None
        fut.add_done_callback(self._release)
        return fut

    def _release(self, _fut: object) -> None:
        with self._lock:
            self._pending -= 1

    async def run(self, job: Job, timeout_s: float, disconnected: Callable[[], Awaitable[bool]] | None = None,
                  poll_s: float = DISCONNECT_POLL_S) -> JobResult:
        """Run `job` on the worker thread without blocking the event loop.

        `disconnected`: an async check whether the client is gone (Starlette's `Request.is_disconnected`), called
        every `poll_s` seconds while the job waits or runs: once it says so the job is abandoned - dropped from the
        queue at once if it has not started, else stopped at its next model forward pass (one decoding step).
        Raises QueueFull (not admitted), JobTimeout (queue wait + run exceeded `timeout_s` seconds; the job is
        cancelled), ClientGone (the client hung up; the job is cancelled), VrpError (bad input found while building
        the prompt) or whatever generation raised.
        """
        cancel = threading.Event()
        fut = self.submit(job, cancel)
        waiter = asyncio.wrap_future(fut)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    self._abandon(fut, waiter, cancel)
                    raise JobTimeout(f"no result within {timeout_s:g} s")
                done, _ = await asyncio.wait({waiter}, timeout=left if disconnected is None else min(left, poll_s))
                if done:
                    return waiter.result()
                if disconnected is not None and await disconnected():
                    self._abandon(fut, waiter, cancel)
                    raise ClientGone("the client closed the connection; its job was cancelled")
        except asyncio.CancelledError:  # the request task itself was cancelled (server shutting down)
            self._abandon(fut, waiter, cancel)
            raise

    def _abandon(self, fut: concurrent.futures.Future[JobResult], waiter: asyncio.Future[JobResult],
                 cancel: threading.Event) -> None:
        """Stop a job nobody waits for: the running job at its next forward pass (`cancel`), a queued one at once
        (`Future.cancel` takes it off the executor's queue and frees its slot); the asyncio side is cancelled so
        that the job's late JobCancelled is not logged as an unretrieved exception."""
        cancel.set()
        fut.cancel()
        waiter.cancel()

    def close(self) -> None:
        """Cancel the running job and any waiting ones; do not wait for the thread."""
        cancel = self._current_cancel
        if cancel is not None:
            cancel.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- worker thread -------------------------------------------------------------------------------------------
    def _execute(self, job: Job, cancel: threading.Event, submitted: float) -> JobResult:
        started = time.perf_counter()
        if cancel.is_set():
            raise JobCancelled()
        with self._lock:
            self._running = True
            self._current_cancel = cancel
        try:
            result = self._predict(job, cancel)
        finally:
            with self._lock:
                self._running = False
                self._current_cancel = None
        result.queue_seconds = started - submitted
        result.seconds = time.perf_counter() - started
        with self._lock:
            a = self._avg_seconds
            self._avg_seconds = result.seconds if a is None else 0.7 * a + 0.3 * result.seconds
        return result

    def _predict(self, job: Job, cancel: threading.Event) -> JobResult:
        tok, cfg = self.tokenizer, self.prompt_config
        notes: list[str] = []
        transcript = job.transcript if job.upload is None else transcript_from_upload(*job.upload, notes=notes)
        # NULs, zero-width spaces and other invisible characters are no transcript: a text of only those is empty
        transcript = clean.remove_invisible(transcript or "")
        if not transcript.strip():
            raise VrpError("transcript: empty; paste the video's transcript or upload a caption file")
        prompt_ids = build_prompt_ids(tok, job.title, transcript, cfg)
        fed = prompt_with_tier(tok, prompt_ids, job.tier)
        overhead = len(build_prompt_ids(tok, job.title, "", cfg))
        n_transcript = len(tok(transcript.strip(), add_special_tokens=False)["input_ids"])
        if cancel.is_set():
            raise JobCancelled()

        def check_cancel(_module: Any, _args: Any) -> None:
            if cancel.is_set():
                raise JobCancelled()

        register = getattr(self.model, "register_forward_pre_hook", None)
        hook = register(check_cancel) if register is not None else None
        extra: dict[str, Any] = {}  # only what the job needs, so simple generate_fns keep working
        if needs_no_video_prompt(job.preset, job.rerank):
            extra["no_video_ids"] = prompt_with_tier(tok, no_video_prompt_ids(tok, cfg), job.tier)
        if job.rerank:
            if self._embedder is None:
                self._embedder = load_embedder()
            extra.update(rerank=job.rerank, rerank_lambda=self.rerank_lambda, embedder=self._embedder)
        try:
            comments = self.generate_fn(self.model, tok, fed, job.preset, job.num_comments, job.max_new_tokens,
                                        job.seed, **extra)
        finally:
            if hook is not None:
                hook.remove()
        return JobResult(comments=list(comments), seconds=0.0, queue_seconds=0.0, prompt_tokens=len(prompt_ids),
                         transcript_tokens=n_transcript,
                         transcript_truncated=overhead + n_transcript > cfg.max_prompt_tokens, notes=notes)
