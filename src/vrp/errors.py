"""User-facing errors.

Knows: `VrpError`, the one exception type whose message is shown to the user as is (the CLI prints it as
`error: <message>` with exit status 2, the server answers 422 with it); `ConfigError`, a `VrpError` about one
configuration field, whose message names the field (`max_steps must be >= 1, got 0`) so that the CLI can say
which flag to change (`--max-steps`) and the HTTP server which JSON field.
Does not know: anything else; depends on nothing in `vrp`.
"""
from __future__ import annotations


class VrpError(Exception):
    """A user-facing error: bad input, bad flag, missing file. The CLI prints its message without a traceback."""


class ConfigError(VrpError):
    """An invalid value of configuration field `field` (a dataclass field name such as `max_steps`).

    `str(e)` is `"<field>: <message>"`; `e.field` and `e.message` are kept apart so that a front end can put its
    own name for the field in front (`--max-steps: ...`, `body.num_comments: ...`). Other fields the message refers
    to are written in backticks (``max_prompt_tokens` + `max_new_tokens` = 1100 tokens``), so that the CLI can
    name their flags too."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (Hugging Face errors span several lines)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__
