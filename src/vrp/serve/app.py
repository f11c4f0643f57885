"""The HTTP prediction server of `vrp serve`: a FastAPI app around one loaded model (+ LoRA adapter).

Knows: the routes (`GET /` page, `GET /healthz`, `GET /v1/info`, `POST /v1/predict` JSON, `POST /v1/predict/file`
multipart upload, `GET /openapi.json`), defined once at module level (`router`); each reads its server's state
(`request.app.state`: settings, worker, request models, page). Both prediction bodies are read into one request
model (`vrp.serve.requests`), whose schemas this module puts into the OpenAPI document. It knows that every error
is the JSON error body (`vrp.serve.guard.error_response`; no stack traces, a 500 says only "internal error"), the
body limit, origin check and security headers (`vrp.serve.guard.Guard`), and which status a worker outcome becomes
(503 + Retry-After when the queue is full, 504 on timeout, 422 on bad input), and that every endpoint that generates
hands the worker its request's disconnect check, so a client that hangs up stops its job (answered 499, nginx's
"client closed request", which nobody receives). `GET /v1/info` lists each preset with its capabilities
(`vrp.presets.Preset.capabilities`), which the page reads instead of knowing preset names.
Uploads whose file name comes only as RFC 5987 `filename*` are accepted and validation messages never name a
Python type (both in `vrp.serve.uploads`).
Does not know: how the model is loaded (see `vrp.model.load_for_inference`, called by `vrp.cli.serve`) or how
generation is scheduled (see `vrp.serve.worker`).

Use `create_app(config, loaded=(model, tokenizer, info), prompt)`; tests inject a tiny model that way.
"""
import contextlib
import functools
import ipaddress
import logging
from importlib import resources
from typing import Any, AsyncIterator, Optional

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from vrp.errors import VrpError
from vrp.presets import PRESETS
from vrp.prompt_format import resolve_prompt_config
from vrp.prompts import PromptConfig
from vrp.rundir import prompt_settings
from vrp.serve.config import ServeConfig
from vrp.serve.guard import Guard, error_response
from vrp.serve.requests import InvalidRequest, details_of, job_of, read_form, read_json, request_models
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


ERRORS: dict[int | str, dict[str, Any]] = {  # the error bodies of the prediction routes
    c: {"model": ErrorResponse} for c in (413, 422, 500, 503, 504)}


def _request_body(media_type: str, schema: str) -> dict[str, Any]:
    """The OpenAPI `requestBody` of a route that reads its body itself: `schema` names a request model that
    `openapi_schema` adds to the components."""
    return {"requestBody": {"required": True, "content": {media_type: {"schema": {
        "$ref": f"#/components/schemas/{schema}"}}}}}


# --- errors ----------------------------------------------------------------------------------------------------
def invalid_response(details: list[dict[str, str]]) -> JSONResponse:
    """The 422 of a request that breaks a rule: its problems `{"loc", "msg"}`, the first five in the message."""
    message = "; ".join(f"{d['loc'].removeprefix('body.').removeprefix('body')}: {d['msg']}".lstrip(": ")
                        for d in details[:5]) or "invalid request"
    return error_response(422, "invalid_request", message, details)


async def on_invalid(_req: Any, exc: InvalidRequest) -> JSONResponse:
    """A request body that breaks a rule (`vrp.serve.requests`): 422."""
    return invalid_response(exc.details)


async def on_validation(_req: Any, exc: RequestValidationError) -> JSONResponse:
    """A parameter FastAPI validated itself: 422, as `on_invalid`."""
    return invalid_response(details_of(exc.errors(), ()))


async def on_http(_req: Any, exc: StarletteHTTPException) -> JSONResponse:
    """404, 405 and other HTTP errors as the JSON error body."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))


async def on_crash(_req: Any, exc: Exception) -> JSONResponse:
    """Anything unexpected: logged with its traceback, answered with a generic 500."""
    log.error("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "internal error; see the server log")


# --- routes ----------------------------------------------------------------------------------------------------
router = APIRouter()


async def run_job(request: Request, job: Job) -> Response:
    """Run `job` on the server's worker and answer with its comments, or with the error its outcome becomes."""
    worker: GenerationWorker = request.app.state.worker
    settings: ServeConfig = request.app.state.settings
    info: dict[str, Any] = request.app.state.info
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


@router.get("/", include_in_schema=False)
async def index(request: Request) -> Response:
    return Response(request.app.state.page["index.html"], media_type="text/html; charset=utf-8",
                    headers={"Content-Security-Policy": PAGE_CSP})


@router.get("/static/app.js", include_in_schema=False)
async def app_js(request: Request) -> Response:
    return Response(request.app.state.page["app.js"], media_type=STATIC_FILES["app.js"])


@router.get("/static/style.css", include_in_schema=False)
async def style_css(request: Request) -> Response:
    return Response(request.app.state.page["style.css"], media_type=STATIC_FILES["style.css"])


@router.get("/healthz", summary="liveness and load")
async def healthz(request: Request) -> dict[str, Any]:
    """`{status: "ok", running, queued, queue_size, avg_seconds}`."""
    return {"status": "ok", **request.app.state.worker.stats()}


@router.get("/v1/info", summary="model, adapter, presets and limits")
async def v1_info(request: Request) -> dict[str, Any]:
    """What is loaded and what requests may ask for; each preset with what it can and needs (`single_output`:
    exactly one comment whatever `num_comments` says; `rerankable`; `deterministic`; ...)."""
    state = request.app.state
    settings, prompt, info, tiers = state.settings, state.prompt, state.info, state.tiers
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
            "presets": [{"name": p.name, "description": p.description, **p.capabilities()}
                        for p in PRESETS.values()],
            "default_preset": settings.default_preset, "limits": limits,
            "tiers": {"trained": tiers, "choices": list(TIER_CHOICES) if tiers else ["any"],
                      "labels": {t: LABELS[t] for t in TIER_CHOICES}}}


@router.post("/v1/predict", response_model=PredictResponse, responses=ERRORS, summary="predict comments",
             openapi_extra=_request_body("application/json", "PredictRequest"))
async def v1_predict(request: Request) -> Response:
    """Predict `num_comments` comments for a title and a transcript (JSON)."""
    req = read_json(request.app.state.models.json, await request.body(), request.headers.get("content-type"))
    return await run_job(request, job_of(req))


@router.post("/v1/predict/file", response_model=PredictResponse, responses=ERRORS,
             summary="predict comments for an uploaded transcript file",
             openapi_extra=_request_body("multipart/form-data", "PredictFileRequest"))
async def v1_predict_file(request: Request) -> Response:
    """Predict comments for a caption file (multipart/form-data) plus form fields."""
    form = await request.form()
    try:
        req: Any = read_form(request.app.state.models.form, form)
        data = await req.file.read()
        return await run_job(request, job_of(req, upload=(data, req.file.filename or "upload")))
    finally:
        await form.close()


# --- app -------------------------------------------------------------------------------------------------------
def _static(name: str) -> bytes:
    return (resources.files("vrp.serve") / "static" / name).read_bytes()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Stop the worker when the server stops."""
    yield
    app.state.worker.close()


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document (built once): FastAPI's, plus the schemas of its request models, whose limits are
    the server's (`vrp.serve.requests.request_models`)."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for model in app.state.models:
            schemas[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
        app.openapi_schema = doc
    return app.openapi_schema


def create_app(settings: ServeConfig, loaded: tuple[Any, Any, dict[str, Any]], prompt: PromptConfig | None = None,
               generate_fn: GenerateFn | None = None, tiers: bool = False) -> FastAPI:
    """Build the app around an already loaded `(model, tokenizer, info)`; `info` as from `load_for_inference`
    (`model`, `adapter` (path or None), `precision`). `prompt`: how prompts are built (the run's settings, see
    `vrp.rundir.prompt_settings`; default: those without a run). `generate_fn` replaces
    `rerank.comments_for_prompt` (tests; it gets `no_video_ids` / `rerank` keywords only for `cad` / reranking).
    `tiers`: the model was trained with like tiers (`vrp.tiers.run_tier_source`), so requests may ask for a tier;
    otherwise only tier `any` is accepted (422). The page and its assets are read once here, from the installed
    package; the request models are built here from the settings (`vrp.serve.requests.request_models`)."""
    model, tokenizer, info = loaded
    # a model without run: `auto` becomes chat or plain here, once (said on stderr); a run's is recorded
    prompt = resolve_prompt_config(tokenizer, prompt or prompt_settings(None, settings.max_prompt_tokens),
                                   model=info.get("model"))
    app = FastAPI(title="vrp: video response prediction", version="1", lifespan=lifespan, docs_url=None,
                  redoc_url=None, description="Predict viewers' comments from a video's title and transcript.",
                  exception_handlers={InvalidRequest: on_invalid, RequestValidationError: on_validation,
                                      StarletteHTTPException: on_http, Exception: on_crash})
    app.state.worker = GenerationWorker(model, tokenizer, prompt, settings.queue_size, generate_fn,
                                        settings.rerank_lambda)
    app.state.settings, app.state.prompt, app.state.info, app.state.tiers = settings, prompt, info, tiers
    app.state.models = request_models(settings, prompt, tiers)
    app.state.page = {name: _static(name) for name in ("index.html", *STATIC_FILES)}
    app.include_router(router)
    app.openapi = functools.partial(openapi_schema, app)  # type: ignore[method-assign]
    app.add_middleware(Guard, max_body_bytes=settings.max_body_bytes)
    return app
