"""What this process holds in memory, and giving freed heap memory back (Linux /proc, glibc; portable fallbacks).

Knows: the resident set now (`resident_bytes`), its lifetime peak (`peak_rss_bytes`) and a resettable high-water
mark (`reset_peak_rss`, `rss_high_water_bytes`), the RAM the kernel can still give (`available_ram_bytes`), and
glibc's `malloc_trim` (`release_freed_memory`), and sizes as people write them (`parse_size`, `fmt_bytes`, `check_budget`
for a `--max-memory` value). Does not know: budgets or when to trim (`vrp.train.memory`).
"""
from __future__ import annotations

import functools
import os
import re
import resource
import sys
from typing import Any

from vrp.errors import ConfigError


def resident_bytes() -> int:
    """This process's resident set size now (bytes; /proc/self/statm, else the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """This process's peak resident set size (bytes): `ru_maxrss` (KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def reset_peak_rss() -> bool:
    """Set this process's resident high-water mark (`VmHWM`) to its current resident set (Linux: writing 5 to
    /proc/self/clear_refs). Returns False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _proc_kib_field(path: str, key: str) -> int | None:
    """Bytes of the `key` line (a size in kB) of a /proc file such as /proc/self/status; None where unreadable."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_high_water_bytes() -> int:
    """This process's resident high-water mark since the start or the last `reset_peak_rss` (`VmHWM` of
    /proc/self/status), else the lifetime peak (`peak_rss_bytes`)."""
    hwm = _proc_kib_field("/proc/self/status", "VmHWM:")
    return peak_rss_bytes() if hwm is None else hwm


def available_ram_bytes() -> int:
    """RAM the kernel can give without swapping (`MemAvailable` of /proc/meminfo), else free physical pages."""
    avail = _proc_kib_field("/proc/meminfo", "MemAvailable:")
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if avail is None else avail


def release_freed_memory() -> bool:
    """Give the heap memory glibc's malloc holds free back to the system now (`malloc_trim(0)`; see
    `trim_after_step`). Returns False where glibc is not the allocator. (Mapping every block of 1 MiB or more instead,
    `mallopt(M_MMAP_THRESHOLD)`, would also remove the fragmentation inside a step, but costs ~14 s of page faults
    per SmolLM2 step of 4 x 1,103 tokens.)"""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim(0)
    return True


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    """The C library (ctypes), or None where it cannot be loaded."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


UNITS = {"b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
         "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def parse_size(text: str) -> int:
    """Bytes of a size such as `8GB`, `7.5 GiB`, `512mb` or `100B` (units: `UNITS`, case-insensitive, required).
    Raises ValueError for a number without a unit, anything else, or a size below 1 byte."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if m and not m[2]:
        raise ValueError(f"needs a unit, e.g. 512MB or 8GB, got {str(text).strip()!r}")
    if not m or m[2].lower() not in UNITS:
        raise ValueError(f"not a size: {text!r} (write e.g. 8GB, 6GiB, 512MB or auto)")
    value = float(m[1]) * UNITS[m[2].lower()]
    if not value < 2 ** 63:  # also inf, from a number of hundreds of digits
        raise ValueError(f"not a size: {str(text).strip()[:40]!r} is too large")
    n = int(value)
    if n < 1:
        raise ValueError(f"not a size: {text!r} (must be at least 1 byte)")
    return n


def check_budget(spec: str) -> None:
    """Raise ConfigError('max_memory') unless `spec` is '' (no budget), `auto` or a size (`parse_size`)."""
    if spec in ("", "auto"):
        return
    try:
        parse_size(spec)
    except ValueError as e:
        raise ConfigError("max_memory", str(e)) from None


def fmt_bytes(n: float) -> str:
    """`n` bytes as GB with two decimals below 10 GB (`3.42 GB`), else one (`11.7 GB`); MB below 1 GB, kB below
    1 MB (`1 kB`, not `0 MB`)."""
    if abs(n) < 1e6:
        return f"{n / 1e3:.0f} kB"
    if abs(n) < 1e9:
        return f"{n / 1e6:.0f} MB"
    return f"{n / 1e9:.2f} GB" if abs(n) < 1e10 else f"{n / 1e9:.1f} GB"
