"""Bytes of a text file (caption file, CSV or JSONL table) to text: byte-order marks, UTF-8, and a guessed legacy
encoding when neither fits.

Knows: the Unicode byte-order marks (UTF-8 `EF BB BF`, UTF-16 LE `FF FE`, UTF-16 BE `FE FF`, UTF-32 LE `FF FE 00 00`,
UTF-32 BE `00 00 FE FF`; the Unicode Standard, section 23.8 "Specials", and its BOM FAQ), which win over everything
else; UTF-8 without a BOM, which is taken as is unless it holds NUL characters (then it is UTF-16/32 without a BOM,
not text); and, for anything else, a guess by charset-normalizer (`charset_normalizer.from_bytes`). Short files
give that library ties between code pages that decode the bytes equally cleanly (a three-line Windows-1252 SRT
ties with GB18030 and Shift-JIS); a tie that windows-1252 is part of goes to windows-1252, the most common legacy
encoding and the one the WHATWG Encoding Standard uses for `latin1`/`iso-8859-1`/`ascii` labels. A guess is
never silent: it is logged (logger `vrp.charsets`, WARNING) and returned as `Decoded.note` for callers that show it.
Does not know: file formats (see `vrp.transcripts`, `vrp.dataset`).
"""
from __future__ import annotations

import codecs
import logging
from dataclasses import dataclass

from vrp.errors import VrpError

log = logging.getLogger(__name__)

# Longest first: the UTF-32 LE mark starts with the UTF-16 LE mark.
BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
PREFERRED_LEGACY = "cp1252"
# charset-normalizer's rating of how garbled a decoding looks (0 = clean); within this of the best is a tie.
CHAOS_TIE = 1e-9


@dataclass(frozen=True)
class Decoded:
    """Text decoded from bytes. encoding: Python codec name used; how: `bom`, `utf-8` or `guessed`;
    note: a one-line message naming the file and the assumed encoding when it was guessed, else None."""

    text: str
    encoding: str
    how: str
    note: str | None = None


def _from_bom(data: bytes, where: str) -> Decoded | None:
    for bom, encoding in BOMS:
        if data.startswith(bom):
            try:
                return Decoded(data[len(bom):].decode(encoding), encoding, "bom")
            except UnicodeDecodeError as e:
                raise VrpError(f"{where}: starts with a {encoding.upper()} byte-order mark but is not valid "
                               f"{encoding.upper()} (bad bytes at offset {e.start + len(bom)}); convert the file "
                               f"to UTF-8") from None
    return None


def guess_encoding(data: bytes) -> str | None:
    """The codec charset-normalizer finds most plausible for `data` (a Python codec name such as `cp1252`), with
    ties going to windows-1252 (see the module doc); None when no encoding decodes the bytes into plausible
    text (binary data). Runs in time linear in `len(data)` (charset-normalizer samples chunks)."""
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    western = from_bytes(data, cp_isolation=[PREFERRED_LEGACY]).best()
    if western is not None and (best is None or western.chaos <= best.chaos + CHAOS_TIE):
        return PREFERRED_LEGACY
    return None if best is None else best.encoding


def decode_bytes(data: bytes, where: str) -> Decoded:
    """Decode a text file's bytes: a byte-order mark decides (and is removed); else UTF-8 if the bytes are valid
    UTF-8 without NUL characters; else the encoding `guess_encoding` finds, with a note (also logged as a
    warning) that names `where` and the encoding. Raises VrpError naming `where` when a BOM is followed by bytes
    invalid in its encoding, or when no encoding fits (binary data)."""
    by_bom = _from_bom(data, where)
    if by_bom is not None:
        return by_bom
    try:
        text = data.decode("utf-8")
        if "\x00" not in text:
            return Decoded(text, "utf-8", "utf-8")
        first_bad = "NUL characters (UTF-16 or UTF-32 without a byte-order mark?)"
    except UnicodeDecodeError as e:
        first_bad = f"bad byte at offset {e.start}"
    encoding = guess_encoding(data)
    if encoding is None:
        raise VrpError(f"{where}: not UTF-8 text ({first_bad}), no byte-order mark, and no other encoding fits "
                       f"(charset-normalizer found none); convert the file to UTF-8")
    try:
        text = data.decode(encoding)
    except (UnicodeDecodeError, LookupError) as e:  # defensive: the guess decoded a sample, not every byte
        raise VrpError(f"{where}: not UTF-8 text ({first_bad}); the guessed encoding {encoding} does not fit "
                       f"either ({e}); convert the file to UTF-8") from None
    note = (f"{where}: not UTF-8 ({first_bad}) and no byte-order mark; read as {encoding} (guessed by "
            f"charset-normalizer); if the text looks wrong, save the file as UTF-8")
    log.warning("%s", note)
    return Decoded(text.removeprefix("\ufeff"), encoding, "guessed", note)
