"""Like counts: the one parser for every source (collect dirs, tables, dataset records).

Knows: how people, spreadsheets and YouTube write a like count (`1,234`, `1.234`, `1'234`, `1 234`, `1234.0`,
`3,1K`, `1.2K likes`, Excel's `1.23E+06`) and which strings are no count at all. Does not know: where counts come
from or what they are used for (like tiers: `vrp.tiers`).
"""
from __future__ import annotations

import math
import numbers
import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

# A like count as people, spreadsheets and YouTube write it: digits with group separators (`1,234`, `1.234`, `1'234`,
# `1 234`), a decimal part (`1234.0`, `3,1`), an exponent (`1.23E+06`, Excel's display of large numbers in CSV),
# a K/M/B suffix, and an optional word `likes`.
_SEPARATORS = ",.'\u00a0\u202f "
_COUNT_RE = re.compile(r"(\d[\d.,'\u00a0\u202f ]*(?:[eE][+-]?\d+)?)\s*(?:([kmb])(?![a-z]))?(?:\s*likes?)?",
                       re.IGNORECASE)
_GROUPED_RE = re.compile(r"\d{1,3}(?:([,.'\u00a0\u202f ])\d{3})(?:\1\d{3})*")  # one separator, groups of 3
_GROUPED_DECIMAL_RE = re.compile(r"\d{1,3}(?:([,.'\u00a0\u202f ])\d{3})+([.,])\d+")  # 1,234.50 or 1.234,50
_DECIMAL_RE = re.compile(r"\d+(?:[.,]\d+)?(?:[eE][+-]?\d+)?")
_MULTIPLIERS = {"k": 1_000, "m": 1_000_000, "b": 1_000_000_000}


def _count_amount(number: str, suffix: str) -> Decimal:
    """The value of a matched count: with a suffix the last `.`/`,` is the decimal mark and earlier marks group
    thousands (`3,1K` = 3100); without one, a single kind of separator between groups of three digits groups
    thousands (`1,234`, `1.234`), else `.` or `,` is a decimal mark (`1234.0`). Raises ValueError if the digits
    and marks fit none of these forms (`1,2,3`)."""
    if suffix:
        marks = [i for i, c in enumerate(number) if c in ".,"]
        last = marks[-1] if marks else len(number)
        whole, frac = number[:last], number[last + 1:]
        # every mark but the decimal one (spaces and apostrophes too) groups thousands: `1 2K` is no number
        if not (re.fullmatch(r"\d+|\d{1,3}(?:[.,'\u00a0\u202f ]\d{3})+", whole) and re.fullmatch(r"\d*", frac)):
            raise ValueError(f"{number + suffix!r} mixes digits and separators in no known way")
        number = re.sub(r"\D", "", whole) + ("." + frac if marks else "")
        try:
            return Decimal(number) * _MULTIPLIERS[suffix.lower()]
        except InvalidOperation:
            raise ValueError(f"{number!r} is not a number") from None
    grouped = _GROUPED_RE.fullmatch(number)
    if grouped and grouped.group(1):
        return Decimal(re.sub(r"\D", "", number))
    mixed = _GROUPED_DECIMAL_RE.fullmatch(number)
    if mixed and mixed.group(1) != mixed.group(2):
        whole, _, frac = number.rpartition(mixed.group(2))
        return Decimal(re.sub(r"\D", "", whole) + "." + frac)
    if _DECIMAL_RE.fullmatch(number):
        return Decimal(number.replace(",", "."))
    raise ValueError(f"{number!r} mixes digits and separators in no known way")


MAX_LIKE_COUNT = 10**12  # far above any YouTube like count (the most liked video has ~5e7); larger is an error


def parse_like_count(value: Any, strict: bool = False) -> int | None:
    """A like count from a number or from text as YouTube, people and spreadsheets write it: `1.2K likes` -> 1200,
    `2.3M` -> 2300000, `3,1K` -> 3100 (comma as decimal mark before a suffix), `1,234` / `1.234` / `1'234` /
    `1 234` -> 1234 (thousands separators), `1234.0` and `1.23E+06` -> 1234 and 1230000, the int 57 -> 57.
    Amounts with a suffix are rounded half up to a whole count. A value above `MAX_LIKE_COUNT` (`1e400`,
    `1e10000000`) is not a count: it is compared as a Decimal before any int is built, so a huge exponent costs
    nothing.

    Lenient (default; collect dirs): the first number in the text is read; None, NaN/pd.NA, text without a number
    (`""`, `Like`, `abc`), negative, non-finite or too large values give None (unknown: tiers leave such a comment
    out, while 0 would make it "low"). Strict (tables people type): the whole text must be one count (an optional
    word `likes` aside), and anything else raises ValueError saying why: no number, extra text, a negative,
    non-finite, too large or non-whole number (`12.5` without a suffix), or a boolean.
    """
    try:
        return _parse_count(value, strict)
    except ValueError:
        if strict:
            raise
        return None


def _parse_count(value: Any, strict: bool) -> int:
    if value is None or (isinstance(value, float) and math.isnan(value)) or type(value).__name__ in ("NAType",
                                                                                                  "NaTType"):
        raise ValueError("no value")
    if isinstance(value, bool):
        raise ValueError("a boolean is not a count")
    if isinstance(value, numbers.Integral) and int(value) > MAX_LIKE_COUNT:  # before Decimal(): no huge ints
        raise ValueError("larger than 10^12, more than any like count")
    if isinstance(value, numbers.Number) and not isinstance(value, (str, bytes)):
        try:
            amount = Decimal(str(value)) if not isinstance(value, numbers.Integral) else Decimal(int(value))
        except (InvalidOperation, TypeError, ValueError):
            raise ValueError(f"{value!r} is not a number") from None
        suffix = ""
    else:
        text = str(value).strip()
        m = _COUNT_RE.fullmatch(text) if strict else _COUNT_RE.search(text)
        if not m:
            if strict and text[:1] in ("-", "\u2212") and _COUNT_RE.fullmatch(text[1:].strip()):
                raise ValueError("a count cannot be negative")
            raise ValueError("extra text around the number" if re.search(r"\d", text) else "no digits")
        number, suffix = m.group(1).strip(_SEPARATORS), m.group(2) or ""
        amount = _count_amount(number, suffix)
    if not amount.is_finite():
        raise ValueError("not a finite number")
    if amount < 0:
        raise ValueError("a count cannot be negative")
    if amount > MAX_LIKE_COUNT:  # before int(): int(Decimal("1e10000000")) would build a 10-million-digit number
        raise ValueError("larger than 10^12, more than any like count")
    if strict and not suffix and amount != amount.to_integral_value():
        raise ValueError("not a whole number")
    return int(amount.to_integral_value(rounding=ROUND_HALF_UP))
