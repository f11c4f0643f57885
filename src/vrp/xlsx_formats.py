"""xlsx number format codes (ECMA-376 Part 1, 18.8.30 numFmt): sections, tokens, bracket codes and numbers shown
through a code. `vrp.xlsx_cells` reads cells and `vrp.xlsx_dates` shows date and time codes; this module knows the codes
and numbers, not cells or dates. What is read and what is refused (`UnsupportedFormat`) is listed in `vrp.xlsx_cells`.
"""
from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal

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
