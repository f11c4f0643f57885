"""The Ollama export: a `Modelfile` next to the GGUF file, whose TEMPLATE renders the prompt text vrp renders.

Knows: how the prompt of a run is split into what Ollama fills in and what stays fixed (`prompt_layout`: vrp's prompt
rendered for marker texts through `vrp.prompts.prompt_text`, the user message `vrp.prompts.user_message` becoming
`{{ .Prompt }}` and the system prompt `{{ .System }}`), how that becomes a Go template (literal text, with any `{{`
written as the string action `{{ "{{" }}`), and how a Modelfile is written: `FROM` the GGUF file (a path relative to
the Modelfile, as Ollama resolves it), `TEMPLATE`, `SYSTEM` (vrp's system prompt, when the layout has one), one
`PARAMETER stop` per stop token, and the default preset's sampling parameters.
Does not know: chat templates or prompt formats themselves (`vrp.prompts`, `vrp.prompt_format`), GGUF
(`vrp.export.gguf`).

Sources: Ollama's Modelfile reference (docs/modelfile: FROM a GGUF path "relative to the Modelfile location",
TEMPLATE in Go template syntax with `.System` and `.Prompt`, `PARAMETER stop` once per stop sequence, the parameters
temperature / top_p / top_k / min_p / repeat_penalty / num_predict / num_ctx) and its parser (parser/parser.go):
a value in `\"\"\"` runs to the next `\"\"\"`, and characters that Go's `strconv.IsPrint` rejects (control and format
characters other than tab and line breaks) are dropped, so such text is refused here rather than changed silently.
Go's text/template prints literal text as it is; only `{{` opens an action.

What the user sends as the prompt is vrp's user message for the video, `Title: <title>\\nTranscript: <transcript>`
with the transcript cut to the run's budget (`vrp generate --print-prompt user` prints it); Ollama then builds the
same text vrp tokenizes. The tier marker of `tier` (a run trained with like tiers) ends the template, as vrp puts it
after the prompt. A BOS that vrp's prompt starts with stays in the template as text (llama.cpp reads special-token
text as the token; the GGUF says `add_bos_token` false, so none is added besides).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from vrp.errors import VrpError
from vrp.prompts import prompt_text, user_message

SYSTEM_MARK, TITLE_MARK, TRANSCRIPT_MARK = "VRPSYSTEMTEXT", "VRPTITLETEXT", "VRPTRANSCRIPTTEXT"
SYSTEM_VAR, PROMPT_VAR = "{{ .System }}", "{{ .Prompt }}"


class Slot(Enum):
    """A place in the prompt that Ollama fills in: the system prompt or the user message."""

    SYSTEM = "system"
    USER = "user"


@dataclass(frozen=True)
class PromptLayout:
    """vrp's prompt as fixed text around two slots. pieces: literal texts and `Slot`s, in order; system: the system text vrp puts in the `system` slot ("" when the layout has none, as the plain format);
    marker: the tier marker text after the prompt ("" for `any`)."""

    pieces: tuple[str | Slot, ...]
    system: str
    marker: str

    def render(self, user: str, system: str | None = None) -> str:
        """The prompt text with `user` (and `system`, default `self.system`) in their slots, marker included."""
        fill = {Slot.USER: user, Slot.SYSTEM: self.system if system is None else system}
        return "".join(fill[p] if isinstance(p, Slot) else p for p in self.pieces) + self.marker


def prompt_layout(tokenizer: Any, pcfg: Any, marker: str = "") -> PromptLayout:
    """Split vrp's prompt (`vrp.prompts.prompt_text` in `pcfg`'s format) into literal text and the `user` / `system`
    slots, by rendering it for marker texts and finding the marker user message (`vrp.prompts.user_message`) and
    system prompt in it; `marker` (a tier marker and its newline) follows. Raises VrpError when the user message is
    not found exactly once (a template that rewrites the message's text), or when the text around the system prompt
    depends on it."""
    import dataclasses

    text = prompt_text(tokenizer, TITLE_MARK, TRANSCRIPT_MARK, dataclasses.replace(pcfg, system_prompt=SYSTEM_MARK))
    real = prompt_text(tokenizer, TITLE_MARK, TRANSCRIPT_MARK, pcfg)  # what the system slot holds, as rendered
    user = user_message(TITLE_MARK, TRANSCRIPT_MARK)
    if text.count(user) != 1 or text.count(SYSTEM_MARK) > 1:
        raise VrpError(f"Ollama export: cannot find the user message and system text in the prompt this model "
                       f"renders ({text[:80]!r}...); the Modelfile TEMPLATE could not give the same text")
    system = ""
    if SYSTEM_MARK in text:
        before, after = text.split(SYSTEM_MARK)
        if not (real.startswith(before) and real.endswith(after)):
            raise VrpError("Ollama export: the prompt's text around the system prompt depends on the system prompt; "
                           "the Modelfile TEMPLATE could not give the same text")
        system = real[len(before):len(real) - len(after)]
    head, tail = text.split(user)
    pieces: list[str | Slot] = []
    for part, slot in ((head, Slot.USER), (tail, None)):
        for i, lit in enumerate(part.split(SYSTEM_MARK)):
            if i:
                pieces.append(Slot.SYSTEM)
            if lit:
                pieces.append(lit)
        if slot:
            pieces.append(slot)
    return PromptLayout(tuple(pieces), system, marker)


def go_template(layout: PromptLayout) -> str:
    """The layout as an Ollama TEMPLATE (Go text/template): slots as `{{ .System }}` / `{{ .Prompt }}`, literal text
    as it is except `{{`, written as the action `{{ "{{" }}`; the marker text last."""
    def literal(s: str) -> str:
        return s.replace("{{", '{{ "{{" }}')

    out = [SYSTEM_VAR if p is Slot.SYSTEM else PROMPT_VAR if p is Slot.USER else literal(p) for p in layout.pieces]
    return "".join(out) + literal(layout.marker)


def _modelfile_text(value: str, what: str) -> str:
    """`value` in `\"\"\"` quotes for a Modelfile. Raises VrpError when Ollama's parser would cut or change it."""
    if '"""' in value:
        raise VrpError(f'Ollama export: the {what} contains """, which ends a Modelfile text; change it')
    bad = next((c for c in value if not (c.isprintable() or c in "\n\r\t")), None)
    if bad is not None:
        raise VrpError(f"Ollama export: the {what} contains the character U+{ord(bad):04X}, which Ollama's Modelfile "
                       f"parser drops; remove it")
    return f'"""{value}"""'


def _quoted(value: str, what: str) -> str:
    if '"' in value or not value or not all(c.isprintable() for c in value) or value != value.strip():
        raise VrpError(f"Ollama export: the {what} {value!r} cannot be written as a Modelfile parameter")
    return f'"{value}"'


def modelfile(gguf_name: str, layout: PromptLayout, stops: list[str], sampling: dict[str, Any],
              num_predict: int, num_ctx: int, header: list[str]) -> str:
    """The Modelfile text. gguf_name: the GGUF file's name in the same directory (`FROM ./NAME`); stops: the stop
    tokens' texts (`PARAMETER stop` each, in order); sampling: `temperature`, `top_p`, `top_k` of the default preset;
    num_predict: new tokens at most; num_ctx: context tokens (prompt budget + marker + new tokens); header: comment
    lines written first. Raises VrpError for text a Modelfile cannot hold (see `_modelfile_text`)."""
    lines = [f"# {h}" for h in header]
    lines.append(f"FROM ./{gguf_name}")
    lines.append(f"TEMPLATE {_modelfile_text(go_template(layout), 'prompt template')}")
    if layout.system:
        lines.append(f"SYSTEM {_modelfile_text(layout.system, 'system prompt')}")
    lines += [f"PARAMETER stop {_quoted(s, 'stop token')}" for s in stops]
    lines += [f"PARAMETER temperature {sampling['temperature']:g}", f"PARAMETER top_p {sampling['top_p']:g}",
              f"PARAMETER top_k {int(sampling['top_k'])}", "PARAMETER min_p 0",
              ("# vrp's repetition guard counts only the comment's own tokens; Ollama's repeat_penalty also counts "
               "the prompt"),
              "# (its end-of-turn tokens included, which makes ending a comment less likely), so it is off here.",
              "PARAMETER repeat_penalty 1", f"PARAMETER num_predict {int(num_predict)}",
              f"PARAMETER num_ctx {int(num_ctx)}"]
    return "\n".join(lines) + "\n"
