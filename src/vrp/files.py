"""Files: atomic writes, JSON Lines reading and appending (with torn-tail repair), checksums.

Knows: how to write any output file so that readers never see it half-written (a temporary file in the same
directory, renamed with `os.replace`), how to read a JSON Lines file naming the line of any error, how to append
one line so that a kill leaves at most a torn last line, how to repair that line, and sha256 of a file.
Does not know: what the files mean (see `vrp.artifacts` for the directories vrp writes).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from vrp.errors import ConfigError, VrpError

log = logging.getLogger(__name__)


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (`os.umask` alone sets it, briefly
    affecting files other threads create)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask



@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it onto `path`, on error delete it.

    Readers never see a half-written file, and a failed write leaves any previous file untouched. The new file gets
    the mode of the file it replaces, else the usual mode of a new file (0666 minus the umask), not the private mode
    of a temp file. Raises VrpError naming `path` when it is a directory or cannot be written (permissions, a full
    disk, a parent that is a file). `replace=False`: the file is only created, never replaced (a hard link, which
    fails when the name exists, so another command that wrote it meanwhile is not clobbered; ConfigError('out') then).
    """
    path = Path(path)
    if path.is_dir():
        raise VrpError(f"{path}: is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise VrpError(f"{path}: cannot write ({e.strerror or e})") from None
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, (path.stat().st_mode & 0o7777) if path.is_file() else 0o666 & ~current_umask())
        yield tmp_path
        if replace:
            os.replace(tmp_path, path)
        else:
            _create_from(tmp_path, path)
    except OSError as e:
        raise VrpError(f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()



def _create_from(tmp: Path, path: Path) -> None:
    """Give the finished file `tmp` the name `path` unless that name exists (VrpError then): `os.link` is atomic
    and fails on an existing name; where hard links are not supported, an existence check and a rename."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise ConfigError("out", f"{path}: another command created it while this one ran; not replaced (pass "
                                 f"`overwrite` to replace it)") from None
    except OSError:  # a file system without hard links
        if path.exists():
            raise ConfigError("out", f"{path}: another command created it while this one ran; not replaced (pass "
                                     f"`overwrite` to replace it)") from None
        os.replace(tmp, path)


def check_writable(path: str | os.PathLike[str], what: str) -> None:
    """Raise ConfigError(`what`, the option that names the path, e.g. `out`) unless `path` (a file or directory to be
    written, existing or not) can be created there: its nearest existing directory must accept a new file. Used before long work (generation,
    training), so that an unwritable output fails at once instead of after the work is done."""
    path = Path(path).absolute()
    anc = path if path.is_dir() else path.parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise ConfigError(what, f"cannot write {path} ({anc} is a file, not a directory)")
    try:
        with tempfile.TemporaryFile(dir=anc):
            pass
    except OSError as e:
        raise ConfigError(what, f"cannot write {path} ({anc}: {e.strerror or e})") from None



def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")



def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")



def write_jsonl_atomic(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object per line to `path` atomically; return the number of lines."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n



def loads_json(text: str, where: str, name_line: bool = True, **kwargs: Any) -> Any:
    """`json.loads(text, **kwargs)` for JSON from a user's file or upload. Raises VrpError naming `where` (and, with
    `name_line`, the line of `text`) for invalid JSON, for nesting too deep for Python's decoder (`[[[[...]]]]`: a
    RecursionError inside `json.loads`), and for an integer literal longer than Python's int conversion limit (4300
    digits)."""
    try:
        return json.loads(text, **kwargs)
    except json.JSONDecodeError as e:
        raise VrpError(f"{where}{f':{e.lineno}' if name_line else ''}: invalid JSON ({e.msg})") from None
    except RecursionError:
        raise VrpError(f"{where}: invalid JSON (nested too deeply to read)") from None
    except ValueError as e:  # int(...) of a number literal over sys.get_int_max_str_digits() digits
        raise VrpError(f"{where}: invalid JSON ({str(e).split(';')[0]})") from None


def read_json_object(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """Read a JSON file that vrp wrote into one of its dirs (a manifest, a checkpoint's state, an adapter config) and
    check that it holds a JSON object. Raises VrpError naming `path`: unreadable, not UTF-8, invalid JSON, or
    "damaged {what} (expected a JSON object, got list)"."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise VrpError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    obj = loads_json(text, str(path))
    if not isinstance(obj, dict):
        raise VrpError(f"{path}: damaged {what} (expected a JSON object, got {type(obj).__name__})")
    return obj


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSON Lines file. Blank lines are skipped. Raises VrpError naming the file and line on bad JSON."""
    return [obj for _, obj in iter_jsonl(path)]


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line of a JSON Lines file, read one line at a time. Raises VrpError
    naming the file (and line): missing, not UTF-8, bad JSON, a line that is not an object."""
    path = Path(path)
    if not path.is_file():
        raise VrpError(f"{path}: file not found")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise VrpError(f"{path}:{lineno}: not UTF-8 text (bad byte at column {e.start + 1}); "
                               f"convert the file to UTF-8") from None
            if not line.strip():
                continue
            obj = loads_json(line, f"{path}:{lineno}", name_line=False)
            if not isinstance(obj, dict):
                raise VrpError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj



def append_jsonl_line(path: str | os.PathLike[str], obj: dict[str, Any]) -> None:
    """Append `obj` as one JSON line: a single write of the complete line, then flush and fsync, so a kill leaves
    either the whole line or a torn last line that `repair_torn_tail` removes."""
    data = (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())



def repair_torn_tail(path: str | os.PathLike[str]) -> bool:
    """Fix a JSON Lines file whose last line was cut by a kill: a last line without its newline is kept (newline
    added) if it is a complete JSON object, else truncated away. Returns True if the file was changed."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return False
        pos, block = size, 1 << 16
        start = 0
        while pos > 0:
            pos = max(0, pos - block)
            f.seek(pos)
            chunk = f.read(min(block, size - pos))
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                start = pos + nl + 1
                break
        f.seek(start)
        tail = f.read()
        try:
            complete = isinstance(json.loads(tail.decode("utf-8")), dict)
        except (UnicodeDecodeError, ValueError, RecursionError):  # bad JSON, nested too deeply, huge number
            complete = False
        if complete:
            f.seek(size)
            f.write(b"\n")
        else:
            f.truncate(start)
        f.flush()
        os.fsync(f.fileno())
    log.warning("%s: repaired a torn last line (%s)", path, "newline added" if complete else "removed")
    return True



def iter_jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """Yield (line number, dict) of a JSON Lines file; a torn last line (no newline, bad JSON) yields (n, None).
    A UTF-8 byte-order mark before the first line is skipped (an editor may add one)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                if not raw.endswith(b"\n"):  # a kill can cut a line inside a multi-byte character
                    yield lineno, None
                    return
                raise VrpError(f"{path}:{lineno}: not UTF-8 text (bad byte at column {e.start + 1})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                if not line.endswith("\n"):
                    yield lineno, None
                    return
                raise VrpError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            except (RecursionError, ValueError):
                obj = loads_json(line, f"{path}:{lineno}", name_line=False)  # raises the one-line VrpError
            if not isinstance(obj, dict):
                raise VrpError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj



def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
