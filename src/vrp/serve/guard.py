"""The HTTP envelope of `vrp serve`: the JSON error body and the ASGI guard in front of the app.

Knows: the JSON error shape `{status, error, message, details?}` every route returns, and a pure ASGI middleware
that reads the whole request body up to a limit (413 on `Content-Length` or while streaming, without reading
further), refuses cross-origin POSTs (403, the opaque origin `null` included), replays the body to the app
(multipart file names given only as RFC 5987 `filename*` rewritten by `vrp.serve.uploads.with_plain_filenames`) and
adds security headers (`nosniff`, `no-referrer`, `no-store`); a JSON body that is not Unicode text gets a 422
naming the byte; which keys a JSON body gives twice
(`repeated_json_keys`, refused by the app: a JSON parser keeps the last).
Does not know: routes, request fields or the model (see `vrp.serve.app`).
"""
from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, Response

from vrp.serve.uploads import with_plain_filenames


def error_response(status: int, error: str, message: str, details: list[dict[str, str]] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error every route returns (see `ErrorResponse`)."""
    body: dict[str, Any] = {"status": status, "error": error, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=headers)


class Guard:
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
        if refused is None:
            refused = _undecodable_json(headers, b"".join(chunks))
        if refused is not None:
            return await refused(scope, receive, self._with_headers(send))
        scope, body = with_plain_filenames(scope, headers, b"".join(chunks))
        sent = False

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
        if scope.get("method") not in ("GET", "HEAD", "OPTIONS") and origin is not None:
            # `null` is the opaque origin of sandboxed iframes, file: pages and some redirects (RFC 6454 section 7.3,
            # Fetch "serializing a request origin"): never this server's own page, so it is cross-origin too
            host = headers.get("host", "")
            if origin.strip() == "null" or origin.split("://", 1)[-1].rstrip("/") != host:
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


def _undecodable_json(headers: dict[str, str], body: bytes) -> Response | None:
    """A 422 naming the byte when a body declared as JSON is not text in the Unicode encoding a JSON parser detects
    (`json.detect_encoding`: UTF-8, or UTF-16/32 by their BOM or zero bytes; RFC 8259 section 8.1), else None.
    FastAPI would answer such a body with a bare 400."""
    import json

    if headers.get("content-type", "").split(";")[0].strip().lower() != "application/json" or not body:
        return None
    encoding = json.detect_encoding(body)
    try:
        body.decode(encoding)
    except UnicodeDecodeError as e:
        msg = f"the request body is not {encoding.upper()} text: byte 0x{body[e.start]:02X} at offset {e.start}"
        return error_response(422, "invalid_request", msg, [{"loc": "body", "msg": msg}])
    return None


def repeated_json_keys(body: bytes) -> list[str]:
    """Keys that a JSON object in `body` holds more than once (sorted; [] when none or when `body` is not JSON:
    the request's own validation reports that). Python's JSON parser keeps the last of them silently."""
    import json

    repeated: set[str] = set()

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:                    # one pass: a body of 200,000 keys takes milliseconds
            if k in out:
                repeated.add(k)
            out[k] = v
        return out

    try:
        json.loads(body, object_pairs_hook=pairs)
    except ValueError:
        return []
    return sorted(repeated)
