"""How uploads reach `vrp serve`: file names sent only in the RFC 5987/2231 extended form, and validation
messages in plain words.

Knows: RFC 7578 (multipart/form-data) section 4.2 says a part names its file with `filename="..."` and forbids the
extended `filename*=UTF-8''caf%C3%A9.vtt` form of RFC 5987; older HTTP clients send it anyway, sometimes split
into RFC 2231 continuations (`filename*0*=...; filename*1*=...`). python-multipart (under Starlette) ignores the
extended parameters, so such a part arrives as a plain form field and the upload fails. `add_plain_filenames`
rewrites the body before parsing: a part whose Content-Disposition has an extended file name but no plain one
gets `filename="<decoded name>"` added (decoded by the standard library's `email.message.Message.get_filename`,
which implements RFC 2231 charsets, languages and continuations). The file bytes are not touched.
`plain_message` words FastAPI/pydantic validation messages without Python type names (`<class 'str'>`).
Does not know: routes or limits (see `vrp.serve.app`).
"""
from __future__ import annotations

import re
from email.message import Message
from typing import Any

_PLAIN_FILENAME_RE = re.compile(r";\s*filename\s*=", re.IGNORECASE)
_UNSAFE_IN_QUOTES_RE = re.compile(r'["\\\x00-\x1f\x7f]')


def boundary_of(content_type: str) -> str | None:
    """The `boundary` parameter of a `multipart/form-data` Content-Type header value, else None."""
    m = Message()
    m["Content-Type"] = content_type
    if m.get_content_type() != "multipart/form-data":
        return None
    boundary = m.get_param("boundary")
    return boundary if isinstance(boundary, str) and boundary else None


def extended_filename(disposition: str) -> str | None:
    """The file name of a Content-Disposition value that names its file only with `filename*` (RFC 5987 /
    RFC 2231, continuations included), decoded; None when it has a plain `filename=` or no file name at all."""
    if "filename*" not in disposition.lower() or _PLAIN_FILENAME_RE.search(disposition):
        return None
    m = Message()
    m["Content-Disposition"] = disposition
    name = m.get_filename()
    return name or None


def add_plain_filenames(body: bytes, boundary: str) -> bytes:
    """`body` (a whole multipart/form-data request body with this `boundary`) with `filename="..."` added to every
    part header that names its file only as `filename*` (see the module doc). Quotes, backslashes and control
    characters are dropped from the added name (it is used for the suffix and in messages only). Returns `body`
    itself when no part needs it; never raises on malformed input (the form parser reports that)."""
    if b"filename*" not in body.lower():
        return body
    delimiter = b"--" + boundary.encode("latin-1", "replace")
    pieces = body.split(delimiter)
    changed = False
    for k in range(1, len(pieces)):
        piece = pieces[k]
        end = piece.find(b"\r\n\r\n")
        if piece.startswith(b"--") or end < 0:  # the close delimiter, or no header block
            continue
        lines = piece[:end].split(b"\r\n")
        for j, line in enumerate(lines):
            name_, _, value = line.partition(b":")
            if name_.strip().lower() != b"content-disposition":
                continue
            decoded = extended_filename(value.decode("latin-1"))
            if decoded is not None:
                safe = _UNSAFE_IN_QUOTES_RE.sub("", decoded).encode("utf-8")
                lines[j] = line + b'; filename="' + safe + b'"'
                changed = True
        pieces[k] = b"\r\n".join(lines) + piece[end:]
    return delimiter.join(pieces) if changed else body


def with_plain_filenames(scope: dict[str, Any], headers: dict[str, str],
                          body: bytes) -> tuple[dict[str, Any], bytes]:
    """The ASGI `scope` and whole request `body` to pass on: for a multipart POST (`headers`: lower-case names to
    values) whose file part is named only by RFC 5987 `filename*`, the body with a plain `filename` added
    (`add_plain_filenames`) and a scope whose Content-Length fits it; otherwise both unchanged."""
    boundary = boundary_of(headers.get("content-type", "")) if scope.get("method") == "POST" else None
    new = body if boundary is None else add_plain_filenames(body, boundary)
    if new is body:
        return scope, body
    hs = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
    return {**scope, "headers": hs + [(b"content-length", str(len(new)).encode())]}, new


_PY_TYPE_RE = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>")
_TYPE_WORDS = {"str": "text", "bytes": "bytes", "int": "an integer", "float": "a number", "bool": "a boolean",
               "NoneType": "nothing", "list": "a list", "dict": "an object"}
NOT_A_FILE = ("expected a file upload: a multipart part with a file name (Content-Disposition: form-data; "
              "name=\"file\"; filename=\"talk.vtt\"), as `curl -F file=@talk.vtt` sends it; this part was a plain form "
              "field without a file name")


def plain_message(msg: str) -> str:
    """A validation message without Python type names (`<class 'str'>` -> `text`); FastAPI's UploadFile check
    becomes `NOT_A_FILE`."""
    msg = msg.removeprefix("Value error, ")
    if "Expected UploadFile" in msg:
        return NOT_A_FILE
    return _PY_TYPE_RE.sub(lambda m: _TYPE_WORDS.get(m.group(1), "a value"), msg)
