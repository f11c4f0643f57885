"""xlsx cells as the text the spreadsheet shows: typed cells through their number format, text cells as written.

Knows: that a spreadsheet stores what a person typed as a typed value when it looks like one (`10/10/2025` becomes a
date serial with a date format, `50%` the number 0.5 with format `0%`, `TRUE` a boolean) and shows it through the
cell's number format, so the text a person wrote and saw is the formatted value, not Python's `str` of it
(`2025-10-10 00:00:00`). The number format codes read here (ECMA-376 Part 1, 18.8.30 numFmt, and Excel's "Number
format codes" help page): up to four sections `positive;negative;zero;text`; colours (`[Red]`, `[Color10]`),
locale tags (`[$-409]`) and currency tags (`[$€-407]` shows `€`); literal text (`"quoted"`, `\\x`, the characters
`$ - + / ( ) : ! ^ & ' ~ { } < > =` and space); `_x` (a space as wide as x: one space); `*x` (repeat x to fill the
column: nothing); digit placeholders `0 # ?`, the decimal point, thousands separators and scaling commas, `%`,
scientific `E+ E-`; the date and time codes `y m d h s AM/PM A/P`, elapsed `[h] [m] [s]` and fractional seconds
(shown by `vrp.xlsx_dates`).
Excel's built-in formats come by id (openpyxl's `BUILTIN_FORMATS`), where ids 14 and 22 are "the system's short
date", shown here as en-US shows them (`m/d/yyyy`), the locale of the built-in table; `General` shows up to 15
significant digits, as the formula bar does (a narrow column can show fewer). Booleans show as `TRUE` / `FALSE`,
error values (`#N/A`) and empty cells as ''. Separators and month names are en-US.
Does not know (raises `UnsupportedFormat`, and the reader names the cell): conditions (`[>100]`), fractions
(`# ?/?`), other calendars and era codes (`B2`, `g`, `e`), digit placeholders with literal text between them
(`000-00-0000`), a time of day shown with a date code. Charts, formulas (the value cached by the application that
saved the file is read, as pandas reads it) and other sheets than the first are none of its business.
"""
from __future__ import annotations

import datetime as dt
import math
import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

# built-in formats shown in the system's locale; en-US (Excel's "m/d/yyyy" short date) stands for it
LOCALE_BUILTINS = {14: "m/d/yyyy", 22: "m/d/yyyy h:mm"}
COLOURS = ("black", "blue", "cyan", "green", "magenta", "red", "white", "yellow")


class UnsupportedFormat(ValueError):
    """A number format (or a value under it) that this module cannot show as a spreadsheet does."""


def tokenize(section: str) -> list[tuple[str, str]]:
    """A format section as tokens: ('lit', text) for literal text, ('br', content) for a [bracket], ('ch', c) for
    one code character."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(section):
        ch = section[i]
        if ch == '"':
            end = section.find('"', i + 1)
            end = len(section) if end < 0 else end
            out.append(("lit", section[i + 1:end]))
            i = end + 1
        elif ch == "\\" and i + 1 < len(section):
            out.append(("lit", section[i + 1]))
            i += 2
        elif ch == "_" and i + 1 < len(section):
            out.append(("lit", " "))
            i += 2
        elif ch == "*" and i + 1 < len(section):
            i += 2
        elif ch == "[":
            end = section.find("]", i + 1)
            if end < 0:
                raise UnsupportedFormat(f"an unclosed '[' in {section!r}")
            out.append(("br", section[i + 1:end]))
            i = end + 1
        else:
            out.append(("ch", ch))
            i += 1
    return out


def split_sections(code: str) -> list[str]:
    """The `;`-separated sections of a format code (a `;` in quotes, brackets or after `\\` separates nothing)."""
    parts, cur, quoted, bracket, i = [], [], False, False, 0
    while i < len(code):
        ch = code[i]
        if ch == "\\" and not quoted and i + 1 < len(code):
            cur.append(code[i:i + 2])
            i += 2
            continue
        if ch == '"' and not bracket:
            quoted = not quoted
        elif ch == "[" and not quoted:
            bracket = True
        elif ch == "]" and not quoted:
            bracket = False
        if ch == ";" and not quoted and not bracket:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    return parts + ["".join(cur)]


def resolve_brackets(tokens: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Tokens with colours and locale tags dropped, currency tags as literals and elapsed-time tags as ('el', code);
    UnsupportedFormat for conditions and other bracket codes."""
    out = []
    for kind, text in tokens:
        if kind != "br":
            out.append((kind, text))
            continue
        low = text.lower()
        if low in COLOURS or re.fullmatch(r"color\d{1,2}", low):
            continue
        if text.startswith("$"):
            symbol = text[1:].split("-", 1)[0]
            if symbol:
                out.append(("lit", symbol))
            continue
        if re.fullmatch(r"h+|m+|s+", low):
            out.append(("el", low))
            continue
        raise UnsupportedFormat(f"the condition or code [{text}]" if text[:1] in "<>=" else f"the code [{text}]")
    return out


def pick_section(sections: list[str], value: float) -> tuple[str, bool]:
    """The section that shows `value`, and whether the value is shown without its sign (a negative section)."""
    if len(sections) >= 3 and value == 0:
        return sections[2], True
    if len(sections) >= 2 and value < 0:
        return sections[1], True
    return sections[0], False


def is_date_section(tokens: list[tuple[str, str]]) -> bool:
    """True for a date or time section: date codes `y m d h s`, elapsed `[h]`, or the era code `g` (refused later)."""
    return any(k == "el" or (k == "ch" and t.lower() in "ymdhsg") for k, t in tokens)


def general(value: float | int) -> str:
    """`value` as Excel's General format shows it in the formula bar: an integer as is, else up to 15 significant
    digits (`0.30000000000000004` -> `0.3`), scientific as `1E+20` / `1.5E-07`."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    text = f"{value:.15g}"
    if "e" in text:
        mant, exp = text.split("e")
        return f"{mant}E{exp[0]}{exp[1:].zfill(2)}"
    return text


def format_number(value: float | int, code: str) -> str:
    """`value` shown with number format `code` (see the module doc). Raises UnsupportedFormat."""
    if code.strip().lower() in ("general", "") or code == "@":
        return general(value)
    sections = split_sections(code)
    section, unsigned = pick_section(sections, value)
    tokens = resolve_brackets(tokenize(section))
    if is_date_section(tokens):
        raise UnsupportedFormat(f"a date format {code!r} on a number")  # callers convert serials first
    if section.strip().lower() == "general":
        return ("-" if value < 0 and not unsigned else "") + general(abs(value) if unsigned else value)
    return _number_section(abs(value) if unsigned else value, tokens, code)


def _number_section(value: float | int, tokens: list[tuple[str, str]], code: str) -> str:
    """One number section: literals around one run of digit placeholders, `.`, `,`, `%` and `E+`."""
    items: list[tuple[str, str]] = []
    i = 0
    while i < len(tokens):
        kind, t = tokens[i]
        if kind == "ch" and t in "Ee" and i + 1 < len(tokens) and tokens[i + 1] in (("ch", "+"), ("ch", "-")):
            items.append(("exp", tokens[i + 1][1]))
            i += 2
            continue
        if kind == "ch" and t in "0#?.,%":
            items.append(("ph", t))
        elif kind == "ch" and t == "/":
            if any(x == ("ph", y) for x in items for y in "0#?"):
                raise UnsupportedFormat(f"the fraction format {code!r}")
            items.append(("lit", t))
        elif kind == "ch" and t == "@":
            items.append(("lit", ""))
        else:
            items.append(("lit", t))
        i += 1
    run = [n for n, (k, t) in enumerate(items) if (k == "ph" and t in "0#?.") or k == "exp"]
    percent = sum(1 for k, t in items if (k, t) == ("ph", "%"))
    if not any(items[n][0] == "ph" and items[n][1] in "0#?" for n in run):
        # a section without digit placeholders shows only its text (`;;;` hides the value, `"none"` shows it)
        return "".join(t for k, t in items if k == "lit" or (k, t) == ("ph", "%"))
    first, last = run[0], run[-1]
    inner = items[first:last + 1]
    if any(k == "lit" and t for k, t in inner) or any((k, t) == ("ph", "%") for k, t in inner):
        raise UnsupportedFormat(f"text between digit placeholders in {code!r}")
    head = "".join(t for k, t in items[:first] if k != "ph" or t != ",")
    tail_items = items[last + 1:]
    scale = 0
    while tail_items and tail_items[0] == ("ph", ","):          # `0,` : each comma divides by 1,000
        scale += 1
        tail_items = tail_items[1:]
    tail = "".join(t for k, t in tail_items if k != "ph" or t != ",")
    x = Decimal(repr(float(value))) if isinstance(value, float) else Decimal(value)
    x = x * (Decimal(100) ** percent) / (Decimal(1000) ** scale)
    pattern = [t if k == "ph" else "E" + t for k, t in inner if k != "lit"]
    return head + _digits(x, pattern) + tail


def _digits(x: Decimal, pattern: list[str]) -> str:
    """The digits of `x` laid out by placeholder `pattern` (items `0 # ? . ,` and `E+` / `E-`): Excel rounds half
    away from zero to the decimals shown; `0` shows a digit always, `#` only a significant one, `?` a space for an
    insignificant one; a `,` between integer placeholders groups thousands, one before the point divides by 1,000."""
    exp_at = next((n for n, p in enumerate(pattern) if p.startswith("E")), None)
    mant = pattern if exp_at is None else pattern[:exp_at]
    exp_pat = [] if exp_at is None else [p for p in pattern[exp_at + 1:] if p in "0#?"]
    dot = mant.index(".") if "." in mant else len(mant)
    int_part = mant[:dot]
    while int_part and int_part[-1] == ",":                     # `0,.00`: a comma before the point scales
        x /= 1000
        int_part = int_part[:-1]
    int_pat = [p for p in int_part if p in "0#?"]
    frac_pat = [p for p in mant[dot + 1:] if p in "0#?"]
    grouping = "," in int_part
    negative, x = x < 0, abs(x)
    q = Decimal(1).scaleb(-len(frac_pat))
    exp_text = ""
    if exp_at is not None:
        n_int = max(len(int_pat), 1)
        step = n_int if "#" in int_pat and n_int > 1 else 1      # `##0.0E+0`: engineering notation
        e = 0 if x == 0 else ((x.adjusted() // step) * step if step > 1 else x.adjusted() - (n_int - 1))
        x = x.scaleb(-e)
        if x.quantize(q, ROUND_HALF_UP) >= Decimal(10) ** n_int:
            x, e = x.scaleb(-step), e + step
        sign = "-" if e < 0 else ("+" if pattern[exp_at] == "E+" else "")
        exp_text = "E" + sign + str(abs(e)).zfill(exp_pat.count("0"))
    whole, _, frac = f"{x.quantize(q, ROUND_HALF_UP):f}".partition(".")
    chars = list(frac.ljust(len(frac_pat), "0"))
    for n in range(len(frac_pat) - 1, -1, -1):                  # trailing zeros: `#` drops them, `?` spaces them
        if chars[n] != "0" or frac_pat[n] == "0":
            break
        chars[n] = "" if frac_pat[n] == "#" else " "
    w = whole.lstrip("0")
    k, out = len(w), []
    for p in reversed(int_pat):
        if k:
            k -= 1
            out.append(w[k])
        else:
            out.append("0" if p == "0" else " " if p == "?" else "")
    int_text = w[:k] + "".join(reversed(out))
    if grouping:
        int_text = re.sub(r"(\d)(?=(?:\d{3})+(?!\d))", r"\1,", int_text)
    text = int_text + ("." + "".join(chars) if "." in mant else "") + exp_text
    shown_zero = not any(c in "123456789" for c in text.split("E")[0])
    return ("-" if negative and not shown_zero else "") + text


def cell_text(value: Any, number_format: str | None, format_id: int | None = None, data_type: str = "n",
              epoch: dt.datetime | None = None) -> str:
    """The text a spreadsheet shows for a cell with `value` (as openpyxl reads it), `number_format` (its code) and
    `format_id` (the numFmtId; ids 14 and 22 are the locale's short date, `LOCALE_BUILTINS`). Text stays as
    written; None and error values are ''. Raises UnsupportedFormat for what this module cannot show."""
    from openpyxl.utils.datetime import WINDOWS_EPOCH

    from vrp.xlsx_dates import format_datetime

    if value is None or data_type == "e":
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    code = LOCALE_BUILTINS.get(format_id or -1, number_format or "General")
    epoch = epoch or WINDOWS_EPOCH
    if isinstance(value, (dt.datetime, dt.date, dt.time, dt.timedelta)):
        return format_datetime(value, code, epoch)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise UnsupportedFormat(f"the number {value}")
        section = split_sections(code)[0]
        if code.strip().lower() not in ("general", "") and is_date_section(resolve_brackets(tokenize(section))):
            return format_datetime(value, code, epoch)
        return format_number(value, code)
    return str(value)


def read_xlsx_rows(path: str | Path) -> list[list[str]]:
    """The first worksheet of an xlsx file as rows of cell texts (`cell_text`), trailing empty rows and cells
    dropped and every row padded to the widest, as pandas' `read_excel` lays them out. Raises ValueError naming the
    cell (`B7`), its value and format when a cell cannot be shown as the spreadsheet shows it; openpyxl's own errors
    for a file that is not xlsx."""
    from openpyxl import load_workbook
    from openpyxl.utils import get_column_letter

    wb = load_workbook(path, read_only=True, data_only=True)
    try:
        ws = wb.worksheets[0]
        rows: list[list[str]] = []
        for r, row in enumerate(ws.iter_rows(), 1):
            texts = []
            for c, cell in enumerate(row, 1):
                value = getattr(cell, "value", None)
                fmt = getattr(cell, "number_format", None)
                style = getattr(cell, "style_array", None)
                try:
                    texts.append(cell_text(value, fmt, style.numFmtId if style is not None else None,
                                           getattr(cell, "data_type", "n"), wb.epoch))
                except UnsupportedFormat as e:
                    raise ValueError(f"cell {get_column_letter(c)}{r} holds {value!r} with the number format "
                                     f"{fmt!r}, and vrp cannot show {e} as the spreadsheet does; format the cell "
                                     f"as text (or General) and save again") from None
            while texts and texts[-1] == "":
                texts.pop()
            rows.append(texts)
    finally:
        wb.close()
    while rows and not rows[-1]:
        rows.pop()
    width = max((len(r) for r in rows), default=0)
    return [r + [""] * (width - len(r)) for r in rows]
