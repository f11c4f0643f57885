"""Bytes of a text file (caption file, CSV or JSONL table) to text: byte-order marks, UTF-8, and a guessed legacy
encoding when neither fits.

Knows: the Unicode byte-order marks (UTF-8 `EF BB BF`, UTF-16 LE `FF FE`, UTF-16 BE `FE FF`, UTF-32 LE `FF FE 00 00`,
UTF-32 BE `00 00 FE FF`; the Unicode Standard, section 23.8 "Specials", and its BOM FAQ), which win over everything
else; UTF-8 without a BOM, which is taken as is unless its NUL bytes follow the UTF-16/32 pattern (a NUL in most
even or odd bytes: UTF-16/32 without a BOM); and, for anything else, a guess by charset-normalizer
(`charset_normalizer.from_bytes`). Short files give that library ties between code pages that decode the bytes
equally cleanly (a three-line Windows-1252 SRT ties with GB18030 and Shift-JIS); a tie that windows-1252 is part of goes to windows-1252, the most common legacy
encoding and the one the WHATWG Encoding Standard uses for `latin1`/`iso-8859-1`/`ascii` labels. Bytes that are
UTF-8 but for a few invalid bytes (a Windows-1252 character pasted into a UTF-8 file) are an error naming the line
and byte offset of the first bad byte: reading the whole file as Windows-1252 would garble every other non-ASCII
character, and dropping the bad byte would change the text silently. NUL characters (U+0000) are never text and
are removed from the decoded text, with a note. A guess is never silent: it is logged (logger `vrp.charsets`,
WARNING) and returned as `Decoded.note` for callers that show it.
Does not know: file formats (see `vrp.transcripts`, `vrp.tables`).
"""
from __future__ import annotations

import codecs
import logging
import re
from dataclasses import dataclass, replace

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
    note: a one-line message naming the file and what was assumed or changed (the encoding when it was guessed,
    NUL characters removed), else None; nul_removed: how many NUL characters were removed from the text."""

    text: str
    encoding: str
    how: str
    note: str | None = None
    nul_removed: int = 0


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


# A UTF-16 file without a BOM has a NUL in most even (BE) or odd (LE) bytes when its text is mostly ASCII; UTF-32
# in three of every four. A NUL or two in a UTF-8 file (a stray byte from a tool) is far below this share.
NUL_SHARE_UTF16 = 0.3
_SURROGATE_ESCAPE_RE = re.compile("[\udc80-\udcff]")
# A well-formed UTF-8 multi-byte sequence (RFC 3629 section 4, no overlongs or surrogates).
_UTF8_MULTIBYTE_RE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}"
                                rb"|\xed[\x80-\x9f][\x80-\xbf]|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}"
                                rb"|\xf4[\x80-\x8f][\x80-\xbf]{2}")


def looks_like_utf16_or_32(data: bytes) -> bool:
    """True when the NUL bytes of `data` follow the pattern of UTF-16/UTF-32 text without a byte-order mark: at
    least `NUL_SHARE_UTF16` of the even or of the odd bytes are NUL. A few stray NULs do not fit it."""
    if len(data) < 2 or b"\x00" not in data:
        return False
    even, odd = data[0::2], data[1::2]
    return max(even.count(0) / len(even), odd.count(0) / max(1, len(odd))) >= NUL_SHARE_UTF16


def _without_nuls(decoded: Decoded, where: str) -> Decoded:
    """`decoded` with NUL characters removed from its text, noted (and logged) when there were any."""
    n = decoded.text.count("\x00")
    if not n:
        return decoded
    note = f"{where}: removed {n} NUL character(s) (U+0000), which are not text"
    log.warning("%s", note)
    full = note if decoded.note is None else f"{decoded.note}; {note}"
    return replace(decoded, text=decoded.text.replace("\x00", ""), note=full, nul_removed=n)


def _mostly_utf8_error(data: bytes, where: str) -> VrpError | None:
    """The error for bytes that are UTF-8 except for a few invalid bytes (at most as many as the well-formed
    multi-byte sequences): a mixed-encoding file, of which no single encoding reads every line right. Names the
    line and byte offset of the first invalid byte. None when the bytes hold no UTF-8 multi-byte text at all or
    more invalid bytes than valid sequences (a legacy-encoded file, for `guess_encoding`)."""
    valid = len(_UTF8_MULTIBYTE_RE.findall(data))
    text = data.decode("utf-8", "surrogateescape")
    invalid = len(_SURROGATE_ESCAPE_RE.findall(text))
    if not valid or invalid > valid:
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        return VrpError(f"{where}: line {line} (byte offset {e.start}): byte 0x{data[e.start]:02X} is not UTF-8, "
                        f"though the rest of the file is UTF-8 ({invalid} bad byte(s) in all); the file mixes "
                        f"encodings: fix that character and save the file as UTF-8")
    return None


def decode_bytes(data: bytes, where: str) -> Decoded:
    """Decode a text file's bytes: a byte-order mark decides (and is removed); else UTF-8 if the bytes are valid
    UTF-8 and their NUL bytes (if any) do not follow the UTF-16/32 pattern (`looks_like_utf16_or_32`); else the
    encoding `guess_encoding` finds, with a note (also logged as a warning) that names `where` and the encoding.
    NUL characters are removed from the text in every case, with a note. Bytes that are UTF-8 except for a few
    invalid bytes are an error naming the line and byte offset of the first one, never reinterpreted as a whole
    in a legacy encoding (that would turn every non-ASCII character of the file into mojibake).
    Raises VrpError naming `where` when a BOM is followed by bytes invalid in its encoding, for such mostly-UTF-8
    bytes, or when no encoding fits (binary data)."""
    by_bom = _from_bom(data, where)
    if by_bom is not None:
        return _without_nuls(by_bom, where)
    first_bad = ""
    if looks_like_utf16_or_32(data):
        first_bad = "NUL bytes in the pattern of UTF-16 or UTF-32 without a byte-order mark"
    else:
        try:
            return _without_nuls(Decoded(data.decode("utf-8"), "utf-8", "utf-8"), where)
        except UnicodeDecodeError as e:
            first_bad = f"bad byte at offset {e.start}"
        mixed = _mostly_utf8_error(data, where)
        if mixed is not None:
            raise mixed
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
    return _without_nuls(Decoded(text.removeprefix("\ufeff"), encoding, "guessed", note), where)
