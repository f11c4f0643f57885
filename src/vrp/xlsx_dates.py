"""Date and time number formats of xlsx cells: a date, time, datetime, elapsed time or serial shown as the
spreadsheet shows it (`vrp.xlsx_cells` reads the cells and the number format codes).

Knows: the date and time codes of number formats (ECMA-376 Part 1, 18.8.31; Excel's "Number format codes"): `y`
(`yy` two digits, `yyyy` four), `m` (month `m mm mmm mmmm mmmmm`, or minutes right after an hour or right before a
second code), `d` (`d dd ddd dddd`), `h`, `s`, fractional seconds `.0`-`.000`, `AM/PM` and `A/P` (12-hour clock),
elapsed `[h] [m] [s]`; that a spreadsheet rounds a time to the second (or to the fraction digits shown) and then
shows its parts (12:05:59.6 with `h:mm` shows 12:06); month and day names in English (en-US).
Does not know (raises `UnsupportedFormat`): era and other calendar codes (`g`, `e`, `B1`/`B2`), a time of day shown
with a date code.
"""
from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from vrp.xlsx_formats import (
    UnsupportedFormat,
    format_number,
    is_date_section,
    pick_section,
    resolve_brackets,
    split_sections,
    tokenize,
)

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
LITERAL_CHARS = set("$-+/():!^&'~{}<>= ,")


def _round_time(value: dt.datetime, decimals: int) -> dt.datetime:
    """`value` rounded half up to `decimals` digits of a second (Excel rounds to what it shows, then truncates)."""
    unit = 10 ** (6 - decimals)
    micro = value.microsecond
    up = (micro + unit // 2) // unit * unit
    return value.replace(microsecond=0) + dt.timedelta(microseconds=up)


MAX_SERIAL = 2958466  # the serial day after 9999-12-31, the last date Excel shows (1900 date system)


def format_datetime(value: Any, code: str, epoch: dt.datetime) -> str:
    """A date, time, datetime, timedelta or serial `value` shown with date/time format `code` (see the module doc).
    Raises UnsupportedFormat."""
    from openpyxl.utils.datetime import from_excel, to_excel

    sections = split_sections(code)
    serial = value if isinstance(value, (int, float)) else None
    section = sections[0] if serial is None else pick_section(sections, serial)[0]
    tokens = resolve_brackets(tokenize(section))
    if not is_date_section(tokens):
        return format_number(serial if serial is not None else to_excel(value, epoch), code)
    codes = _date_codes(tokens, code)
    decimals = max((len(t) - 1 for k, t in codes if k == "frac"), default=0)
    elapsed = any(k == "el" for k, _ in codes)
    if isinstance(value, dt.timedelta) or elapsed:
        days = (value.total_seconds() / 86400 if isinstance(value, dt.timedelta)
                else serial if serial is not None else to_excel(value, epoch))
        total = Decimal(repr(float(days))) * 86400
        when = None
    else:
        total = None
        if serial is not None:
            value = from_excel(serial, epoch)
        if isinstance(value, dt.time):
            if any(k in ("y", "mo", "d") for k, _ in codes):
                raise UnsupportedFormat(f"a time of day shown with the date format {code!r}")
            value = dt.datetime.combine(dt.date(1900, 1, 1), value)
        elif isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            value = dt.datetime.combine(value, dt.time())
        if not 0 <= to_excel(value, epoch) < MAX_SERIAL:  # Excel shows such a cell as #####
            raise UnsupportedFormat(f"a date outside the spreadsheet's range (serial 0 to {MAX_SERIAL - 1}: "
                                    f"the sheet shows #####)")
        when = _round_time(value, decimals)
    ampm = any(k == "ampm" for k, _ in codes)
    out = []
    for kind, t in codes:
        out.append(t if kind == "lit" else _date_part(kind, t, when, total, ampm, decimals))
    return "".join(out)


def _date_codes(tokens: list[tuple[str, str]], code: str) -> list[tuple[str, str]]:
    """Date tokens as (kind, code): kinds y, mo (month), mi (minute), d, h, s, frac (`.00`), ampm, el, lit."""
    runs: list[tuple[str, str]] = []
    i = 0
    while i < len(tokens):
        kind, t = tokens[i]
        if kind == "ch" and t.lower() in "ymdhs":
            j = i
            while j < len(tokens) and tokens[j][0] == "ch" and tokens[j][1].lower() == t.lower():
                j += 1
            runs.append((t.lower(), "".join(x[1] for x in tokens[i:j]).lower()))
            i = j
            continue
        if kind == "ch" and t.upper() in ("A",):
            rest = "".join(x[1] if x[0] == "ch" else "\0" for x in tokens[i:i + 5])
            if rest.upper() == "AM/PM":
                runs.append(("ampm", rest))
                i += 5
                continue
            if rest[:3].upper() == "A/P":
                runs.append(("ampm", rest[:3]))
                i += 3
                continue
        if kind == "ch" and t == "." and runs and runs[-1][0] == "s":
            j = i + 1
            while j < len(tokens) and tokens[j] == ("ch", "0"):
                j += 1
            if j > i + 1:
                runs.append(("frac", "." + "0" * (j - i - 1)))
                i = j
                continue
        if kind == "el":
            runs.append(("el", t))
        elif kind == "lit" or (kind == "ch" and (t in LITERAL_CHARS or t in ".0123456789" or not t.isalpha())):
            runs.append(("lit", t))
        else:
            raise UnsupportedFormat(f"the code {t!r} in {code!r} (other calendars and eras are not read)")
        i += 1
    out: list[tuple[str, str]] = []
    timed = [n for n, (k, _) in enumerate(runs) if k not in ("lit",)]
    for n, (k, t) in enumerate(runs):
        if k == "m":
            pos = timed.index(n)
            before = runs[timed[pos - 1]] if pos else None
            after = runs[timed[pos + 1]] if pos + 1 < len(timed) else None
            minute = len(t) <= 2 and ((before is not None and (before[0] == "h" or (before[0] == "el" and
                                                                                     before[1][0] == "h")))
                                      or (after is not None and (after[0] == "s" or (after[0] == "el" and
                                                                                      after[1][0] == "s"))))
            out.append(("mi" if minute else "mo", t))
        else:
            out.append((k, t))
    return out


def _date_part(kind: str, t: str, when: dt.datetime | None, total: Decimal | None, ampm: bool,
               decimals: int) -> str:
    """The text of one date code (see `_date_codes`) for the rounded `when`, or `total` seconds for elapsed time."""
    if total is not None:
        q = Decimal(1).scaleb(-decimals)
        secs = total.quantize(q, ROUND_HALF_UP)
        whole = int(secs)
        if kind == "el":
            unit = {"h": 3600, "m": 60, "s": 1}[t[0]]
            return str(whole // unit).zfill(len(t))
        h, rem = divmod(whole, 3600)
        m, s = divmod(rem, 60)
        if kind == "h":
            return str(h % 24).zfill(len(t))
        if kind == "mi":
            return str(m).zfill(len(t))
        if kind == "s":
            return str(s).zfill(len(t))
        if kind == "frac":
            return "." + f"{secs:f}".partition(".")[2].ljust(decimals, "0")[:decimals]
        raise UnsupportedFormat(f"the date code {t!r} with an elapsed time")
    assert when is not None
    if kind == "y":
        return str(when.year % 100).zfill(2) if len(t) <= 2 else str(when.year).zfill(4)
    if kind == "mo":
        n = len(t)
        return (str(when.month).zfill(n) if n <= 2 else MONTHS[when.month - 1][:3] if n == 3
                else MONTHS[when.month - 1][0] if n == 5 else MONTHS[when.month - 1])
    if kind == "d":
        n = len(t)
        return (str(when.day).zfill(n) if n <= 2 else DAYS[when.weekday()][:3] if n == 3
                else DAYS[when.weekday()])
    if kind == "h":
        hour = (when.hour % 12 or 12) if ampm else when.hour
        return str(hour).zfill(min(len(t), 2))
    if kind == "mi":
        return str(when.minute).zfill(min(len(t), 2))
    if kind == "s":
        return str(when.second).zfill(min(len(t), 2))
    if kind == "frac":
        return "." + f"{when.microsecond:06d}"[:decimals]
    if kind == "ampm":
        pm = when.hour >= 12
        if t.upper() == "AM/PM":
            return ("PM" if pm else "AM") if t[0].isupper() else ("pm" if pm else "am")
        return t[2] if pm else t[0]
    raise UnsupportedFormat(f"the date code {t!r}")
