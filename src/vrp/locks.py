"""One writer per output directory: `DirLock`, the lock every vrp command that writes a directory holds.

Knows: the lock file (`LOCK_NAME`, inside the directory) and how it is held: an exclusive `flock` (BSD lock, Linux
`flock(2)`), which the kernel drops when the holding process ends however it ends (killed, crashed, power loss of
the machine aside), so a lock left by a killed process never blocks the next command: a lock file that nobody holds
is free. The lock file records who holds it (`{"pid", "command", "host", "since"}`) so that a refused command can say
which one writes the directory. The file is removed when the lock is released, and a directory the lock created
is removed again when nothing but the lock file is in it (a command that fails before writing leaves nothing
behind). A file removed between another process's `open` and `flock` would leave it holding a lock on a name no one
else sees, so the lock is taken only when the path still names the locked file (`st_ino` / `st_dev` compared after
`flock`; the classic pattern for lock files that are deleted).
Does not know: what is written into the directory (`vrp.artifacts`, `vrp.rundir`). `flock` locks hold between
processes on one machine and on NFS v4 / most cluster file systems that emulate it with POSIX locks; two machines
writing one run dir over a file system without working locks are not detected.
Errors: a held lock is a `ConfigError` naming the option that gave the directory (`out`).
"""
from __future__ import annotations

import datetime
import json
import os
import socket
from pathlib import Path
from typing import Any

from vrp.errors import ConfigError
from vrp.files import check_writable

LOCK_NAME = ".vrp.lock"


def holder_of(lock_file: Path) -> dict[str, Any]:
    """What the lock file says about its holder (`pid`, `command`, `host`, `since`); {} when it says nothing
    readable (an empty file, garbage, or a file written by an older vrp)."""
    try:
        info = json.loads(lock_file.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _describe(info: dict[str, Any]) -> str:
    """`another `vrp train` (pid 123, on host, since 2026-12-07 10:00:00)`, or `another vrp command`."""
    what = f"`{info['command']}`" if isinstance(info.get("command"), str) else "vrp command"
    where = [f"pid {info['pid']}" if isinstance(info.get("pid"), int) else "",
             f"on {info['host']}" if isinstance(info.get("host"), str) and info["host"] != socket.gethostname()
             else "", f"since {info['since']}" if isinstance(info.get("since"), str) else ""]
    where_text = ", ".join(w for w in where if w)
    return f"another {what}" + (f" ({where_text})" if where_text else "")


class DirLock:
    """An exclusive lock on directory `path` for one writing command (`command`, e.g. `vrp train`, said to a command
    that is refused). `field` is the option that named the directory (for the ConfigError). Use as a context
    manager or with `acquire` / `release` (a lock held across several functions, e.g. a training run's setup and
    loop); `release` of a lock that was never acquired does nothing."""

    def __init__(self, path: str | os.PathLike[str], command: str, field: str = "out") -> None:
        self.path = Path(path)
        self.command = command
        self.field = field
        self._fd: int | None = None
        self._created = False

    @property
    def file(self) -> Path:
        """The lock file: `path / LOCK_NAME`."""
        return self.path / LOCK_NAME

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Create the directory if needed and take the lock. Raises ConfigError(`field`) when another process holds
        it (naming that process), when the path is a file, or when the directory cannot be created or written."""
        import fcntl

        if self._fd is not None:
            return
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(self.field, f"{self.path} exists and is not a directory")
        if not self.path.exists():
            check_writable(self.path, self.field)  # names the blocking file, or the unwritable parent
            try:
                self.path.mkdir(parents=True)
                self._created = True
            except FileExistsError:  # another process made it just now
                pass
            except OSError as e:
                raise ConfigError(self.field, f"cannot create {self.path} ({e.strerror or e})") from None
        while True:
            try:
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                self._remove_created_dir()
                raise ConfigError(self.field, f"cannot write {self.file} ({e.strerror or e})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                info = holder_of(self.file)
                os.close(fd)
                raise ConfigError(self.field, f"{self.path}: {_describe(info)} is writing to this directory; wait for "
                                              f"it to end, or choose another directory") from None
            try:
                now, mine = os.stat(self.file), os.fstat(fd)
                same = (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev)
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the file was removed by its last holder between our open and flock: take the new one
        self._fd = fd
        info = {"pid": os.getpid(), "command": self.command, "host": socket.gethostname(),
                "since": datetime.datetime.now().isoformat(sep=" ", timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)

    def release(self) -> None:
        """Remove the lock file and drop the lock; remove the directory too when the lock created it and nothing
        else is in it. Does nothing when the lock is not held."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            try:
                now, mine = os.stat(self.file), os.fstat(fd)
                if (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev):
                    os.unlink(self.file)
            except OSError:  # the directory was removed or moved meanwhile: nothing to clean
                pass
            self._remove_created_dir()
        finally:
            os.close(fd)  # closing drops the flock

    def _remove_created_dir(self) -> None:
        if self._created:
            try:
                self.path.rmdir()  # only when empty
            except OSError:
                pass
            self._created = False

    def __enter__(self) -> DirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
