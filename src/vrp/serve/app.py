"""The HTTP prediction server of `vrp serve`: a FastAPI app around one loaded model (+ LoRA adapter).

Knows: the routes (`GET /` page, `GET /healthz`, `GET /v1/info`, `POST /v1/predict` JSON, `POST /v1/predict/file`
multipart upload, `GET /openapi.json`), request validation and its limits (`vrp.serve.config.ServeConfig`), that
every error is the JSON error body (`vrp.serve.guard.error_response`; no stack traces, a 500 says only "internal
error"), the body limit, origin check and security headers (`vrp.serve.guard.Guard`), and which
status a worker outcome becomes (503 + Retry-After when the queue is full, 504 on timeout, 422 on bad input), and
that every endpoint that generates hands the worker its request's disconnect check, so a client that hangs up
stops its job (answered 499, nginx's "client closed request", which nobody receives).
Uploads whose file name comes only as RFC 5987 `filename*` are accepted and validation messages never name a
Python type (both in `vrp.serve.uploads`).
Does not know: how the model is loaded (see `vrp.model.load_for_inference`, called by `vrp.cli.serve`) or how
generation is scheduled (see `vrp.serve.worker`).

Use `create_app(config, loaded=(model, tokenizer, info), prompt)`; tests inject a tiny model that way.
"""
import contextlib
import ipaddress
import logging
from importlib import resources
from typing import Annotated, Any, AsyncIterator, Literal, Optional

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from vrp.clean import check_text
from vrp.errors import ConfigError, VrpError
from vrp.options import SEED_MAX
from vrp.presets import PRESETS, check_rerank
from vrp.prompt_format import resolve_prompt_config
from vrp.prompts import PromptConfig
from vrp.rundir import prompt_settings
from vrp.serve.config import ServeConfig
from vrp.serve.guard import Guard, error_response, repeated_json_keys
from vrp.serve.uploads import plain_message
from vrp.serve.worker import (
    UPLOAD_SUFFIXES,
    ClientGone,
    GenerateFn,
    GenerationWorker,
    Job,
    JobCancelled,
    JobResult,
    JobTimeout,
    QueueFull,
)
from vrp.tiers import LABELS, TIER_CHOICES

log = logging.getLogger("vrp.serve.app")
FILE_FORM_FIELDS = {"file", "title", "num_comments", "preset", "max_new_tokens", "seed", "tier", "rerank"}
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


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
    pmi: Optional[float] = Field(None, description="with `rerank`: the score the comment was chosen by, mean "
                                 "log p(comment | video) - lambda * mean log p(comment | no video) per token")


class PredictResponse(BaseModel):
    """Predicted comments and how they were made. seconds: generation time; queue_seconds: wait for the worker."""

    comments: list[CommentOut]
    model: str
    adapter: Optional[str]
    preset: str
    tier: str = Field("any", description="the like tier asked for (any, top, typical, low)")
    rerank: int = Field(0, description="samples the comments were chosen from (0: not reranked)")
    seconds: float
    queue_seconds: float
    prompt_tokens: int
    transcript_tokens: int
    transcript_truncated: bool
    notes: list[str] = Field(default_factory=list, description="what was assumed about an uploaded file, e.g. "
                             "the encoding guessed for a file that is not UTF-8")


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
    """`value`, or ValueError (a 422 naming the field) when it holds an unpaired surrogate (`clean.check_text`)."""
    try:
        return check_text(value, "the text")
    except VrpError as e:
        raise ValueError(str(e)) from None


def _tier_problem(tier: str, tiers: bool) -> str | None:
    """Why `tier` cannot be served (a tier other than `any` for a model trained without tiers), or None."""
    if tier != "any" and not tiers:
        return (f"tier {tier!r} needs a run trained with like tiers; this model was trained without them, so use "
                f"tier 'any'")
    return None


def default_comments(preset: str, default: int) -> int:
    """Comments to return when a request names none: 1 for greedy (it gives exactly one), else `default`."""
    return 1 if preset == "greedy" else default


def _rerank_problem(rerank: int, num_comments: int, preset: str) -> str | None:
    """Why `rerank` cannot be served with these fields (`vrp.presets.check_rerank`), or None."""
    try:
        check_rerank(rerank, num_comments, [preset])
    except ConfigError as e:
        return "rerank " + e.message.replace("`num_comments`", "num_comments")
    return None


def _request_model(s: ServeConfig, prompt: PromptConfig, tiers: bool = False) -> type[BaseModel]:
    preset_names = tuple(PRESETS)

    class PredictRequest(BaseModel):
        """A video to predict comments for. Extra fields are rejected (a request cannot choose files or models);
        whole numbers must be JSON integers (`true` or `"2"` is not read as a number)."""

        model_config = ConfigDict(extra="forbid")
        title: str = Field("", max_length=s.max_title_chars, description="video title")
        transcript: str = Field(..., min_length=1, max_length=s.max_body_bytes,
                                description=f"transcript text; cut to the {prompt.max_prompt_tokens}-token "
                                            f"prompt budget ({prompt.truncation})")
        num_comments: Optional[int] = Field(strict=True, default=None, ge=1, le=s.max_num_comments,
                                            description=f"comments to return (omitted: {s.default_num_comments}, or "
                                                        f"1 for greedy, which gives exactly one)")
        preset: Literal[preset_names] = Field(s.default_preset, description="decoding preset")  # type: ignore
        max_new_tokens: int = Field(strict=True, default=s.default_max_new_tokens, ge=1, le=s.max_new_tokens)
        seed: Optional[int] = Field(strict=True, default=None, ge=0, le=SEED_MAX,
                                    description="sampling seed (omit for random)")
        tier: Literal[TIER_CHOICES] = Field(  # type: ignore[valid-type]
            "any", description="like tier, for a run trained with tiers: top (the top comment), typical, low (an "
                               "ignored comment); any = no tier (the only choice for an untiered model)")

        rerank: int = Field(strict=True, default=0, ge=0, le=s.max_rerank,
                            description="sample this many comments and return the best `num_comments` by PMI with "
                                        "the video, near-duplicates dropped (0 = off)")

        _check_text = field_validator("title", "transcript")(_utf8)

        @field_validator("tier")
        @classmethod
        def _tier_served(cls, value: str) -> str:
            problem = _tier_problem(value, tiers)
            if problem:
                raise ValueError(problem)
            return value

        @model_validator(mode="after")
        def _greedy_one(self) -> "PredictRequest":
            if self.num_comments is None:
                self.num_comments = default_comments(self.preset, s.default_num_comments)
            if self.preset == "greedy" and self.num_comments > 1:
                raise ValueError("preset greedy gives exactly one comment; use num_comments=1 or another preset")
            problem = _rerank_problem(self.rerank, self.num_comments, self.preset)
            if problem:
                raise ValueError(problem)
            return self

    return PredictRequest


# --- errors ----------------------------------------------------------------------------------------------------
def _digits(value: Any) -> Any:
    """A form field's whole number as plain digits (`12`), as the JSON endpoint takes only JSON integers: `1_0`,
    `1.0`, `+1` or ` 2 ` would otherwise be read as numbers. Raises ValueError for anything else."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError(f"must be a whole number in digits, e.g. 3, got {value!r}")
    return value


FormInt = Annotated[int, BeforeValidator(_digits)]  # inside Optional; a plain int field puts Form() in its Annotated


def _validation_details(exc: RequestValidationError) -> list[dict[str, str]]:
    out = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e.get("loc", ()))
        msg = str(e.get("msg", "invalid"))
        if e.get("type") == "json_invalid":
            loc, msg = "body", "the request body is not valid JSON"
        elif e.get("type") in ("model_attributes_type", "missing") and loc == "body":  # no JSON content type, empty
            msg = "the body must be a JSON object, sent with Content-Type: application/json"
        out.append({"loc": loc, "msg": plain_message(msg)})
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


# --- app -------------------------------------------------------------------------------------------------------
def _static(name: str) -> bytes:
    return (resources.files("vrp.serve") / "static" / name).read_bytes()


def create_app(settings: ServeConfig, loaded: tuple[Any, Any, dict[str, Any]], prompt: PromptConfig | None = None,
               generate_fn: GenerateFn | None = None, tiers: bool = False) -> FastAPI:
    """Build the app around an already loaded `(model, tokenizer, info)`; `info` as from `load_for_inference`
    (`model`, `adapter` (path or None), `precision`). `prompt`: how prompts are built (the run's settings, see
    `vrp.rundir.prompt_settings`; default: those without a run). `generate_fn` replaces
    `rerank.comments_for_prompt` (tests; it gets `no_video_ids` / `rerank` keywords only for `cad` / reranking).
    `tiers`: the model was trained with like tiers (`vrp.tiers.run_tier_source`), so requests may ask for a tier;
    otherwise only tier `any` is accepted (422). The page and its assets are read once here, from the installed
    package."""
    model, tokenizer, info = loaded
    # a model without run: `auto` becomes chat or plain here, once (said on stderr); a run's is recorded
    prompt = resolve_prompt_config(tokenizer, prompt or prompt_settings(None, settings.max_prompt_tokens),
                                   model=info.get("model"))
    worker = GenerationWorker(model, tokenizer, prompt, settings.queue_size, generate_fn, settings.rerank_lambda)
    page = {name: _static(name) for name in ("index.html", *STATIC_FILES)}
    PredictRequest = _request_model(settings, prompt, tiers)
    errors: dict[int | str, dict[str, Any]] = {c: {"model": ErrorResponse} for c in (413, 422, 500, 503, 504)}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        worker.close()

    app = FastAPI(title="vrp: video response prediction", version="1", lifespan=lifespan, docs_url=None,
                  redoc_url=None, description="Predict viewers' comments from a video's title and transcript.")
    app.state.worker, app.state.settings, app.state.prompt, app.state.info = worker, settings, prompt, info
    _install_error_handlers(app)
    app.add_middleware(Guard, max_body_bytes=settings.max_body_bytes)

    async def run_job(job: Job, request: Request) -> Response:
        try:  # a client that hangs up stops its job at the next decoding step (`GenerationWorker.run`)
            res: JobResult = await worker.run(job, settings.timeout_s, request.is_disconnected)
        except ClientGone:
            log.info("client closed the connection; its generation was stopped")
            return error_response(499, "client_closed_request", "the client closed the connection")
        except QueueFull as e:
            return error_response(503, "busy", f"the server is busy (one generation at a time, {settings.queue_size}"
                                  f" waiting); retry in about {e.retry_after} s",
                                  headers={"Retry-After": str(e.retry_after)})
        except JobTimeout:
            return error_response(504, "timeout", f"no result within {settings.timeout_s:g} s; try fewer "
                                  "comments, fewer max_new_tokens or a shorter transcript")
        except VrpError as e:
            return error_response(422, "invalid_request", str(e))
        except JobCancelled:
            return error_response(503, "cancelled", "the server is shutting down", headers={"Retry-After": "5"})
        except Exception as e:  # noqa: BLE001 - logged with traceback, answered without one
            log.error("prediction failed", exc_info=e)
            return error_response(500, "internal_error", "internal error during prediction; see the server log")
        body = PredictResponse(
            comments=[CommentOut(text=c.text, tokens=c.tokens, logprob=round(c.logprob, 4), finished=c.finished,
                                 pmi=None if getattr(c, "pmi", None) is None else round(float(c.pmi), 4))
                      for c in res.comments],
            model=str(info.get("model")), adapter=info.get("adapter"), preset=job.preset, tier=job.tier,
            rerank=job.rerank,
            seconds=round(res.seconds, 3), queue_seconds=round(res.queue_seconds, 3),
            prompt_tokens=res.prompt_tokens, transcript_tokens=res.transcript_tokens,
            transcript_truncated=res.transcript_truncated, notes=res.notes)
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
        limits = {"max_body_bytes": settings.max_body_bytes, "max_num_comments": settings.max_num_comments,
                  "default_num_comments": settings.default_num_comments,
                  "max_new_tokens_limit": settings.max_new_tokens,
                  "default_max_new_tokens": settings.default_max_new_tokens,
                  "max_title_chars": settings.max_title_chars, "queue_size": settings.queue_size,
                  "request_timeout_s": settings.timeout_s, "default_preset": settings.default_preset,
                  "max_prompt_tokens": prompt.max_prompt_tokens, "truncation": prompt.truncation,
                  "prompt_format": prompt.prompt_format,
                  "upload_suffixes": list(UPLOAD_SUFFIXES), "max_rerank": settings.max_rerank,
                  "rerank_lambda": settings.rerank_lambda}
        return {"model": info.get("model"), "adapter": info.get("adapter"), "precision": info.get("precision"),
                "presets": [{"name": p.name, "description": p.description, "deterministic": p.deterministic}
                            for p in PRESETS.values()],
                "default_preset": settings.default_preset, "limits": limits,
                "tiers": {"trained": tiers, "choices": list(TIER_CHOICES) if tiers else ["any"],
                          "labels": {t: LABELS[t] for t in TIER_CHOICES}}}

    @app.post("/v1/predict", response_model=PredictResponse, responses=errors, summary="predict comments")
    async def v1_predict(req: PredictRequest, request: Request) -> Response:  # type: ignore[valid-type]
        """Predict `num_comments` comments for a title and a transcript (JSON)."""
        r: Any = req
        if repeated := repeated_json_keys(await request.body()):
            return error_response(422, "invalid_request", f"field(s) given more than once: {repeated}",
                                  [{"loc": "body", "msg": f"field(s) given more than once: {repeated}"}])
        return await run_job(Job(title=r.title, preset=r.preset, num_comments=r.num_comments,
                                 max_new_tokens=r.max_new_tokens, seed=r.seed, transcript=r.transcript, tier=r.tier,
                                 rerank=r.rerank), request)

    preset_names = tuple(PRESETS)

    @app.post("/v1/predict/file", response_model=PredictResponse, responses=errors,
              summary="predict comments for an uploaded transcript file")
    async def v1_predict_file(
        request: Request,
        file: UploadFile = File(..., description=f"caption file: {', '.join(UPLOAD_SUFFIXES)}"),
        title: str = Form("", max_length=settings.max_title_chars),
        num_comments: Optional[FormInt] = Form(None, ge=1, le=settings.max_num_comments),
        preset: Literal[preset_names] = Form(settings.default_preset),  # type: ignore[valid-type]
        max_new_tokens: Annotated[int, BeforeValidator(_digits), Form(ge=1, le=settings.max_new_tokens)]
        = settings.default_max_new_tokens,
        seed: Optional[FormInt] = Form(None, ge=0, le=SEED_MAX),
        tier: Literal[TIER_CHOICES] = Form("any"),  # type: ignore[valid-type]
        rerank: Annotated[int, BeforeValidator(_digits), Form(ge=0, le=settings.max_rerank)] = 0,
    ) -> Response:
        """Predict comments for a caption file (multipart/form-data) plus form fields."""
        problems = []
        if num_comments is None:
            num_comments = default_comments(str(preset), settings.default_num_comments)
        form = await request.form()
        extra = sorted(set(form.keys()) - FILE_FORM_FIELDS)  # as the JSON endpoint: no extras
        if extra:
            problems.append({"loc": "body", "msg": f"unknown field(s) {extra}; allowed: {sorted(FILE_FORM_FIELDS)}"})
        if repeated := sorted(k for k in set(form.keys()) if len(form.getlist(k)) > 1):  # else the last one wins
            problems.append({"loc": "body", "msg": f"field(s) given more than once: {repeated}"})
        if preset == "greedy" and num_comments > 1:
            problems.append({"loc": "body.num_comments", "msg": "preset greedy gives exactly one comment; use "
                             "num_comments=1 or another preset"})
        try:
            _utf8(title)
        except ValueError as e:
            problems.append({"loc": "body.title", "msg": str(e)})
        if (problem := _tier_problem(str(tier), tiers)) is not None:
            problems.append({"loc": "body.tier", "msg": problem})
        if (problem := _rerank_problem(rerank, num_comments, str(preset))) is not None:
            problems.append({"loc": "body.rerank", "msg": problem})
        if problems:
            return error_response(422, "invalid_request", "; ".join(p["msg"] for p in problems), problems)
        data = await file.read()
        return await run_job(Job(title=title, preset=str(preset), num_comments=num_comments,
                                 max_new_tokens=max_new_tokens, seed=seed, tier=str(tier), rerank=rerank,
                                 upload=(data, file.filename or "upload")), request)

    return app

