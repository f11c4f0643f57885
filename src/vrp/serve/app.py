"""The HTTP prediction server of `vrp serve`: a FastAPI app around one loaded model (+ LoRA adapter).

Knows: the routes (`GET /` page, `GET /healthz`, `GET /v1/info`, `POST /v1/predict` JSON, `POST /v1/predict/file`
multipart upload, `GET /openapi.json`), request validation and its limits (`ServeSettings`), the JSON error shape
`{status, error, message, details?}` used for every error (no stack traces; a 500 says only "internal error"), the
request body limit (413, checked on Content-Length and on the streamed body), security headers, and which
status a worker outcome becomes (503 + Retry-After when the queue is full, 504 on timeout, 422 on bad input).
Does not know: how the model is loaded (see `vrp.model.load_for_inference`, called by `vrp.cli.serve`) or how
generation is scheduled (see `vrp.serve.worker`).

Use `create_app(settings, loaded=(model, tokenizer, info))`; tests inject a tiny model that way.
"""
import contextlib
import ipaddress
import logging
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any, AsyncIterator, Literal, Optional

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from vrp.decoding import DEFAULT_PRESET, MAX_NEW_TOKENS, PRESETS
from vrp.errors import VrpError
from vrp.prompts import PromptConfig
from vrp.serve.worker import (
    GenerateFn,
    GenerationWorker,
    Job,
    JobCancelled,
    JobResult,
    JobTimeout,
    QueueFull,
)

log = logging.getLogger("vrp.serve.app")
SEED_MAX = 2**32 - 1
FILE_FORM_FIELDS = {"file", "title", "num_comments", "preset", "max_new_tokens", "seed"}
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


@dataclass
class ServeSettings:
    """Server limits and defaults. Sizes in bytes, times in seconds, budgets in tokens."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 2_000_000
    prompt: PromptConfig = field(default_factory=PromptConfig)
    max_num_comments: int = 20
    default_num_comments: int = 5
    max_new_tokens_limit: int = 256
    default_max_new_tokens: int = MAX_NEW_TOKENS
    max_title_chars: int = 500
    queue_size: int = 8
    request_timeout_s: float = 120.0
    default_preset: str = DEFAULT_PRESET

    def __post_init__(self) -> None:
        checks = [(self.max_body_bytes >= 1024, "max_body_bytes must be >= 1024"),
                  (1 <= self.default_num_comments <= self.max_num_comments,
                   "need 1 <= default_num_comments <= max_num_comments"),
                  (1 <= self.default_max_new_tokens <= self.max_new_tokens_limit,
                   "need 1 <= default_max_new_tokens <= max_new_tokens_limit"),
                  (self.queue_size >= 0, "queue_size must be >= 0"),
                  (self.request_timeout_s > 0, "request_timeout_s must be > 0"),
                  (self.max_title_chars >= 1, "max_title_chars must be >= 1"),
                  (self.default_preset in PRESETS, f"default_preset must be one of {list(PRESETS)}")]
        for ok, msg in checks:
            if not ok:
                raise VrpError(f"serve settings: {msg}")


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback IP literals (127.0.0.0/8, ::1)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --- schemas ---------------------------------------------------------------------------------------------------
class CommentOut(BaseModel):
    """One predicted comment. tokens: generated tokens (incl. end-of-turn); logprob: natural-log probability of
    those tokens under the model; finished: the model ended the comment itself (else it hit max_new_tokens)."""

    text: str
    tokens: int
    logprob: float
    finished: bool


class PredictResponse(BaseModel):
    """Predicted comments and how they were made. seconds: generation time; queue_seconds: wait for the worker."""

    comments: list[CommentOut]
    model: str
    adapter: Optional[str]
    preset: str
    seconds: float
    queue_seconds: float
    prompt_tokens: int
    transcript_tokens: int
    transcript_truncated: bool


class ErrorDetail(BaseModel):
    """One validation problem: where (`body.num_comments`) and what."""

    loc: str
    msg: str


class ErrorResponse(BaseModel):
    """Every error: HTTP status, a short code, a readable message and, for 422, the problems found."""

    status: int
    error: str
    message: str
    details: Optional[list[ErrorDetail]] = None


def _utf8(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None
    return value


def _request_model(s: ServeSettings) -> type[BaseModel]:
    preset_names = tuple(PRESETS)

    class PredictRequest(BaseModel):
        """A video to predict comments for. Extra fields are rejected (a request cannot choose files or models)."""

        model_config = ConfigDict(extra="forbid")
        title: str = Field("", max_length=s.max_title_chars, description="video title")
        transcript: str = Field(..., min_length=1, max_length=s.max_body_bytes,
                                description=f"transcript text; cut to the {s.prompt.max_prompt_tokens}-token "
                                            f"prompt budget ({s.prompt.truncation})")
        num_comments: int = Field(s.default_num_comments, ge=1, le=s.max_num_comments)
        preset: Literal[preset_names] = Field(s.default_preset, description="decoding preset")  # type: ignore
        max_new_tokens: int = Field(s.default_max_new_tokens, ge=1, le=s.max_new_tokens_limit)
        seed: Optional[int] = Field(None, ge=0, le=SEED_MAX, description="sampling seed (omit for random)")

        _check_text = field_validator("title", "transcript")(_utf8)

        @model_validator(mode="after")
        def _greedy_one(self) -> "PredictRequest":
            if self.preset == "greedy" and self.num_comments > 1:
                raise ValueError("preset greedy gives exactly one comment; use num_comments=1 or another preset")
            return self

    return PredictRequest


# --- errors ----------------------------------------------------------------------------------------------------
def error_response(status: int, error: str, message: str, details: list[dict[str, str]] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error every route returns (see `ErrorResponse`)."""
    body: dict[str, Any] = {"status": status, "error": error, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_details(exc: RequestValidationError) -> list[dict[str, str]]:
    out = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e.get("loc", ()))
        msg = str(e.get("msg", "invalid"))
        if e.get("type") == "json_invalid":
            loc, msg = "body", "the request body is not valid JSON"
        out.append({"loc": loc, "msg": msg.removeprefix("Value error, ")})
    return out


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _on_validation(_req: Any, exc: RequestValidationError) -> JSONResponse:
        details = _validation_details(exc)
        message = "; ".join(f"{d['loc'].removeprefix('body.').removeprefix('body')}: {d['msg']}".lstrip(": ")
                            for d in details[:5]) or "invalid request"
        return error_response(422, "invalid_request", message, details)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(_req: Any, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _on_crash(_req: Any, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return error_response(500, "internal_error", "internal error; see the server log")


# --- ASGI guard: body limit, origin check, security headers ----------------------------------------------------
class _Guard:
    """Pure ASGI middleware. Reads the whole request body (at most `max_body_bytes`, else 413 without reading
    further), rejects cross-origin POSTs (403), then replays the body to the app and adds security headers."""

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app, self.max = app, max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refused = self._refuse(scope, headers)
        if refused is None:
            chunks, size, more = [], 0, True
            while more:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                chunk = msg.get("body", b"")
                size += len(chunk)
                if size > self.max:
                    refused = error_response(413, "payload_too_large", f"request body over {self.max} bytes")
                    break
                chunks.append(chunk)
                more = msg.get("more_body", False)
        if refused is not None:
            return await refused(scope, receive, self._with_headers(send))
        body, sent = b"".join(chunks), False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, self._with_headers(send))

    def _refuse(self, scope: dict[str, Any], headers: dict[str, str]) -> Response | None:
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                return error_response(400, "bad_request", "invalid Content-Length header")
            if int(length) > self.max:
                return error_response(413, "payload_too_large",
                                      f"request body of {int(length)} bytes is over the limit of {self.max} bytes")
        origin = headers.get("origin")
        if scope.get("method") not in ("GET", "HEAD", "OPTIONS") and origin and origin != "null":
            host = headers.get("host", "")
            if origin.split("://", 1)[-1].rstrip("/") != host:
                return error_response(403, "forbidden", "cross-origin requests are not accepted")
        return None

    @staticmethod
    def _with_headers(send: Any) -> Any:
        async def wrapped(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                hs = list(msg.get("headers", []))
                hs += [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                       (b"cache-control", b"no-store")]
                msg = {**msg, "headers": hs}
            await send(msg)
        return wrapped


# --- app -------------------------------------------------------------------------------------------------------
def _static(name: str) -> bytes:
    return (resources.files("vrp.serve") / "static" / name).read_bytes()


def create_app(settings: ServeSettings, loaded: tuple[Any, Any, dict[str, Any]],
               generate_fn: GenerateFn | None = None) -> FastAPI:
    """Build the app around an already loaded `(model, tokenizer, info)`; `info` as from `load_for_inference`
    (`model`, `adapter` (path or None), `precision`). `generate_fn` replaces `generate.generate_comments` (tests).
    The page and its assets are read once here, from the installed package."""
    model, tokenizer, info = loaded
    worker = GenerationWorker(model, tokenizer, settings.prompt, settings.queue_size, generate_fn)
    page = {name: _static(name) for name in ("index.html", *STATIC_FILES)}
    PredictRequest = _request_model(settings)
    errors: dict[int | str, dict[str, Any]] = {c: {"model": ErrorResponse} for c in (413, 422, 500, 503, 504)}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        worker.close()

    app = FastAPI(title="vrp: video response prediction", version="1", lifespan=lifespan, docs_url=None,
                  redoc_url=None, description="Predict viewers' comments from a video's title and transcript.")
    app.state.worker, app.state.settings, app.state.info = worker, settings, info
    _install_error_handlers(app)
    app.add_middleware(_Guard, max_body_bytes=settings.max_body_bytes)

    async def run_job(job: Job) -> Response:
        try:
            res: JobResult = await worker.run(job, settings.request_timeout_s)
        except QueueFull as e:
            return error_response(503, "busy", f"the server is busy (one generation at a time, {settings.queue_size}"
                                  f" waiting); retry in about {e.retry_after} s",
                                  headers={"Retry-After": str(e.retry_after)})
        except JobTimeout:
            return error_response(504, "timeout", f"no result within {settings.request_timeout_s:g} s; try fewer "
                                  "comments, fewer max_new_tokens or a shorter transcript")
        except VrpError as e:
            return error_response(422, "invalid_request", str(e))
        except JobCancelled:
            return error_response(503, "cancelled", "the server is shutting down", headers={"Retry-After": "5"})
        except Exception as e:  # noqa: BLE001 - logged with traceback, answered without one
            log.error("prediction failed", exc_info=e)
            return error_response(500, "internal_error", "internal error during prediction; see the server log")
        body = PredictResponse(
            comments=[CommentOut(text=c.text, tokens=c.tokens, logprob=round(c.logprob, 4), finished=c.finished)
                      for c in res.comments],
            model=str(info.get("model")), adapter=info.get("adapter"), preset=job.preset,
            seconds=round(res.seconds, 3), queue_seconds=round(res.queue_seconds, 3),
            prompt_tokens=res.prompt_tokens, transcript_tokens=res.transcript_tokens,
            transcript_truncated=res.transcript_truncated)
        return JSONResponse(body.model_dump())

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return Response(page["index.html"], media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": PAGE_CSP})

    @app.get("/static/app.js", include_in_schema=False)
    async def app_js() -> Response:
        return Response(page["app.js"], media_type=STATIC_FILES["app.js"])

    @app.get("/static/style.css", include_in_schema=False)
    async def style_css() -> Response:
        return Response(page["style.css"], media_type=STATIC_FILES["style.css"])

    @app.get("/healthz", summary="liveness and load")
    async def healthz() -> dict[str, Any]:
        """`{status: "ok", running, queued, queue_size, avg_seconds}`."""
        return {"status": "ok", **worker.stats()}

    @app.get("/v1/info", summary="model, adapter, presets and limits")
    async def v1_info() -> dict[str, Any]:
        """What is loaded and what requests may ask for."""
        limits = {k: v for k, v in asdict(settings).items() if k not in ("host", "port", "prompt")}
        limits.update(max_prompt_tokens=settings.prompt.max_prompt_tokens, truncation=settings.prompt.truncation,
                      upload_suffixes=[".vtt", ".srt", ".json3", ".json", ".txt"])
        return {"model": info.get("model"), "adapter": info.get("adapter"), "precision": info.get("precision"),
                "presets": [{"name": p.name, "description": p.description, "deterministic": p.deterministic}
                            for p in PRESETS.values()],
                "default_preset": settings.default_preset, "limits": limits}

    @app.post("/v1/predict", response_model=PredictResponse, responses=errors, summary="predict comments")
    async def v1_predict(req: PredictRequest) -> Response:  # type: ignore[valid-type]
        """Predict `num_comments` comments for a title and a transcript (JSON)."""
        r: Any = req
        return await run_job(Job(title=r.title, preset=r.preset, num_comments=r.num_comments,
                                 max_new_tokens=r.max_new_tokens, seed=r.seed, transcript=r.transcript))

    preset_names = tuple(PRESETS)

    @app.post("/v1/predict/file", response_model=PredictResponse, responses=errors,
              summary="predict comments for an uploaded transcript file")
    async def v1_predict_file(
        request: Request,
        file: UploadFile = File(..., description=".vtt, .srt, .json3, .json or .txt transcript"),
        title: str = Form("", max_length=settings.max_title_chars),
        num_comments: int = Form(settings.default_num_comments, ge=1, le=settings.max_num_comments),
        preset: Literal[preset_names] = Form(settings.default_preset),  # type: ignore[valid-type]
        max_new_tokens: int = Form(settings.default_max_new_tokens, ge=1, le=settings.max_new_tokens_limit),
        seed: Optional[int] = Form(None, ge=0, le=SEED_MAX),
    ) -> Response:
        """Predict comments for a caption file (multipart/form-data) plus form fields."""
        problems = []
        extra = sorted(set((await request.form()).keys()) - FILE_FORM_FIELDS)  # as the JSON endpoint: no extras
        if extra:
            problems.append({"loc": "body", "msg": f"unknown field(s) {extra}; allowed: {sorted(FILE_FORM_FIELDS)}"})
        if preset == "greedy" and num_comments > 1:
            problems.append({"loc": "body.num_comments", "msg": "preset greedy gives exactly one comment; use "
                             "num_comments=1 or another preset"})
        try:
            _utf8(title)
        except ValueError as e:
            problems.append({"loc": "body.title", "msg": str(e)})
        if problems:
            return error_response(422, "invalid_request", "; ".join(p["msg"] for p in problems), problems)
        data = await file.read()
        return await run_job(Job(title=title, preset=str(preset), num_comments=num_comments,
                                 max_new_tokens=max_new_tokens, seed=seed,
                                 upload=(data, file.filename or "upload")))

    return app

