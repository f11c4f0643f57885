"""The request model of `vrp serve`: one pydantic model per server holds every rule of a prediction request, and
both bodies are read into it, the JSON one (`POST /v1/predict`) and the multipart form (`POST /v1/predict/file`,
its fields converted into the same model), so each rule is written once.

Knows: the fields (`title`, `transcript` or `file`, `num_comments`, `preset`, `max_new_tokens`, `seed`, `tier`,
`rerank`), their limits (`vrp.serve.config.ServeConfig`, per server) and the rules between them, asked of the
preset (`vrp.presets.Preset`): a request without `num_comments` gets the server's default, or 1 from a
single-output preset, which refuses more; reranking needs a rerankable preset (`vrp.presets.check_rerank`). Whole
numbers are JSON integers in JSON (`true` or `"2"` is not read as a number) and plain digits in a form (`1_0`,
`1.0`, `+1` are refused). Unknown fields and fields given twice are refused (a JSON parser and a form parser both
keep the last). Every problem becomes `{"loc": "body.<field>", "msg": ...}` without Python type names
(`vrp.serve.uploads.plain_message`), raised as `InvalidRequest`.
Does not know: routes, status codes or the error body (`vrp.serve.app`), how a job runs (`vrp.serve.worker`).
"""
import email.message
import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal, NamedTuple, Optional

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vrp.clean import check_text
from vrp.errors import ConfigError, VrpError
from vrp.options import SEED_MAX
from vrp.presets import PRESETS, check_rerank
from vrp.prompts import PromptConfig
from vrp.serve.config import ServeConfig
from vrp.serve.guard import repeated_json_keys
from vrp.serve.uploads import plain_message
from vrp.serve.worker import UPLOAD_SUFFIXES, Job
from vrp.tiers import TIER_CHOICES

INT_FIELDS = ("num_comments", "max_new_tokens", "seed", "rerank")
NOT_AN_OBJECT = "the body must be a JSON object, sent with Content-Type: application/json"


class InvalidRequest(ValueError):
    """A request that breaks a rule. details: `[{"loc": "body.<field>" or "body", "msg": ...}]`, in order."""

    def __init__(self, details: list[dict[str, str]]) -> None:
        super().__init__("; ".join(d["msg"] for d in details))
        self.details = details


class RequestModels(NamedTuple):
    """The request models of one server: `json` (with `transcript`) and `form` (with `file`), one set of rules."""

    json: type[BaseModel]
    form: type[BaseModel]


def _utf8(value: str) -> str:
    """`value`, or ValueError (a 422 naming the field) when it holds an unpaired surrogate (`clean.check_text`)."""
    try:
        return check_text(value, "the text")
    except VrpError as e:
        raise ValueError(str(e)) from None


def _digits(value: Any) -> Any:
    """A form field's whole number as plain digits (`12` -> 12), as the JSON endpoint takes only JSON integers: `1_0`,
    `1.0`, `+1` or ` 2 ` would otherwise be read as numbers. Raises ValueError for other text; other values pass."""
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()):
            raise ValueError(f"must be a whole number in digits, e.g. 3, got {value!r}")
        return int(value)
    return value


def request_models(s: ServeConfig, prompt: PromptConfig, tiers: bool = False) -> RequestModels:
    """The request models of a server with settings `s`, prompts built as `prompt`, and a model trained with like
    tiers or not (`tiers`; without them only tier `any` is valid). The limits are the server's, so the models
    (and the OpenAPI schema made from them) are built per server."""
    preset_names = tuple(PRESETS)

    class PredictOptions(BaseModel):
        """The options of a prediction, shared by both bodies. Extra fields are rejected (a request cannot choose
        files or models); whole numbers must be integers (`true` or `"2"` is not read as a number)."""

        model_config = ConfigDict(extra="forbid")
        title: str = Field("", max_length=s.max_title_chars, description="video title")
        preset: Literal[preset_names] = Field(s.default_preset, description="decoding preset")  # type: ignore
        num_comments: Optional[int] = Field(strict=True, default=None, ge=1, le=s.max_num_comments,
                                            description=f"comments to return (omitted: {s.default_num_comments}, or "
                                                        f"1 for a single-output preset such as greedy, which gives "
                                                        f"exactly one)")
        max_new_tokens: int = Field(strict=True, default=s.default_max_new_tokens, ge=1, le=s.max_new_tokens)
        seed: Optional[int] = Field(strict=True, default=None, ge=0, le=SEED_MAX,
                                    description="sampling seed (omit for random)")
        tier: Literal[TIER_CHOICES] = Field(  # type: ignore[valid-type]
            "any", description="like tier, for a run trained with tiers: top (the top comment), typical, low (an "
                               "ignored comment); any = no tier (the only choice for an untiered model)")
        rerank: int = Field(strict=True, default=0, ge=0, le=s.max_rerank,
                            description="sample this many comments and return the best `num_comments` by PMI with "
                                        "the video, near-duplicates dropped (0 = off)")

        _check_title = field_validator("title")(_utf8)

        @field_validator("tier")
        @classmethod
        def _tier_served(cls, value: str) -> str:
            if value != "any" and not tiers:
                raise ValueError(f"tier {value!r} needs a run trained with like tiers; this model was trained "
                                 f"without them, so use tier 'any'")
            return value

        @model_validator(mode="after")
        def _as_the_preset_gives(self) -> "PredictOptions":  # rules between fields: the problem names them
            preset = PRESETS[self.preset]
            if self.num_comments is None:
                self.num_comments = preset.comment_count(s.default_num_comments or 1)
            if preset.comment_count(self.num_comments) != self.num_comments:
                raise ValueError(f"preset {preset.name} gives exactly one comment; use num_comments=1 or another "
                                 f"preset")
            try:
                check_rerank(self.rerank, self.num_comments, [preset])
            except ConfigError as e:
                raise ValueError("rerank " + e.message.replace("`num_comments`", "num_comments")) from None
            return self

    class PredictRequest(PredictOptions):
        """A video to predict comments for (JSON)."""

        transcript: str = Field(..., min_length=1, max_length=s.max_body_bytes,
                                description=f"transcript text; cut to the {prompt.max_prompt_tokens}-token "
                                            f"prompt budget ({prompt.truncation})")
        _check_transcript = field_validator("transcript")(_utf8)

    class PredictFileRequest(PredictOptions):
        """A caption file to predict comments for, with the same options as form fields (whole numbers in
        digits)."""

        file: UploadFile = Field(..., description=f"caption file: {', '.join(UPLOAD_SUFFIXES)}")
        _form_numbers = field_validator(*INT_FIELDS, mode="before")(_digits)

    return RequestModels(PredictRequest, PredictFileRequest)



def details_of(errors: Iterable[Mapping[str, Any]], fields: Iterable[str]) -> list[dict[str, str]]:
    """Pydantic's errors (`ValidationError.errors()`) as problems `{"loc": "body.<field>", "msg": ...}` without
    Python type names; the unknown fields become one problem naming them and the `fields` allowed."""
    out, unknown = [], []
    for e in errors:
        loc = ".".join(str(p) for p in ("body", *e.get("loc", ())))
        if e.get("type") == "extra_forbidden":
            unknown.append(loc.removeprefix("body."))
            continue
        out.append({"loc": loc, "msg": plain_message(str(e.get("msg", "invalid")))})
    if unknown:
        out.insert(0, {"loc": "body", "msg": f"unknown field(s) {sorted(unknown)}; allowed: {sorted(fields)}"})
    return out


def _validated(model: type[BaseModel], data: Mapping[str, Any], repeated: list[str]) -> BaseModel:
    """`data` read into `model`; InvalidRequest with every problem (`repeated` fields first) when it breaks a rule."""
    problems = [{"loc": "body", "msg": f"field(s) given more than once: {repeated}"}] if repeated else []
    try:
        req = model.model_validate(data)
    except ValidationError as e:
        problems += details_of(e.errors(include_url=False), model.model_fields)
    if problems:
        raise InvalidRequest(problems)
    return req


def _is_json(content_type: str | None) -> bool:
    """True for `application/json` and `application/*+json`, as FastAPI reads a JSON body (strictly: a body without
    a Content-Type is not read as JSON)."""
    if content_type is None:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def read_json(model: type[BaseModel], body: bytes, content_type: str | None) -> BaseModel:
    """A JSON request body read into `model` (`RequestModels.json`). Raises InvalidRequest when the body is empty,
    not declared as JSON, not valid JSON, not an object, gives a key twice (`vrp.serve.guard.repeated_json_keys`)
    or breaks a rule of the model."""
    if not body or not _is_json(content_type):
        raise InvalidRequest([{"loc": "body", "msg": NOT_AN_OBJECT}])
    try:
        data = json.loads(body)  # UTF-8, or UTF-16/32 by BOM (RFC 8259 section 8.1); `Guard` refused other bytes
    except ValueError:
        raise InvalidRequest([{"loc": "body", "msg": "the request body is not valid JSON"}]) from None
    if not isinstance(data, dict):
        raise InvalidRequest([{"loc": "body", "msg": NOT_AN_OBJECT}])
    return _validated(model, data, repeated_json_keys(body))


def read_form(model: type[BaseModel], form: Any) -> BaseModel:
    """A multipart form (Starlette `FormData`) read into `model` (`RequestModels.form`): each field's value (a text
    or the uploaded file) as the model's field of that name. Raises InvalidRequest when a field comes twice or the
    fields break a rule of the model."""
    repeated = sorted(k for k in set(form.keys()) if len(form.getlist(k)) > 1)
    return _validated(model, {k: form[k] for k in form}, repeated)


def job_of(req: Any, upload: tuple[bytes, str] | None = None) -> Job:
    """The worker's `Job` for a validated request: its `transcript` (JSON) or `upload` = (file bytes, file name)."""
    return Job(title=req.title, preset=req.preset, num_comments=req.num_comments, max_new_tokens=req.max_new_tokens,
               seed=req.seed, transcript=None if upload else req.transcript, upload=upload, tier=req.tier,
               rerank=req.rerank)
