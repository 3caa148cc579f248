"""Durations, sizes, times and the architecture name, in the Go imaginator's formats.

Everything here is pure. Flags and configuration keep Go's syntax
(``time.ParseDuration``, the size flag type), and pages and errors print values
the way the Go daemon does (``time.Duration.String``, ``format.Duration``,
``format.FormatBytes``), because users and scripts compare against those
strings (e.g. ``maximum expiration time is 1d0s``).

Durations are handled internally as integer nanoseconds, like Go, so printing
and parsing are exact; the public functions take and return float seconds.
"""

from __future__ import annotations

import json
import platform
import time

NANOSECOND = 1
MICROSECOND = 1000 * NANOSECOND
MILLISECOND = 1000 * MICROSECOND
SECOND = 1000 * MILLISECOND
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY
YEAR = 365 * DAY + DAY // 4

_MAX_DURATION_NS = (1 << 63) - 1

_DURATION_UNITS = {
    "ns": NANOSECOND,
    "us": MICROSECOND,
    "\u00b5s": MICROSECOND,  # micro sign
    "\u03bcs": MICROSECOND,  # Greek small letter mu
    "ms": MILLISECOND,
    "s": SECOND,
    "m": MINUTE,
    "h": HOUR,
}


def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def seconds_to_ns(seconds: float) -> int:
    """Seconds (float) to integer nanoseconds, rounding to the nearest."""
    return round(seconds * SECOND)


# ---------------------------------------------------------------- durations


def _leading_digits(s: str, pos: int) -> int:
    """Index just past the run of ASCII digits starting at ``pos``."""
    while pos < len(s) and "0" <= s[pos] <= "9":
        pos += 1
    return pos


def _parse_component(s: str, pos: int, orig: str) -> tuple[int, int]:
    """Parse one ``<number><unit>`` at ``pos``; return (nanoseconds, new pos)."""
    if not (s[pos] == "." or "0" <= s[pos] <= "9"):
        raise ValueError(f"invalid duration {_quote(orig)}")
    int_end = _leading_digits(s, pos)
    whole = int(s[pos:int_end]) if int_end > pos else 0
    fraction, frac_len, end = 0, 0, int_end
    if end < len(s) and s[end] == ".":
        frac_end = _leading_digits(s, end + 1)
        frac_len = frac_end - end - 1
        fraction = int(s[end + 1 : frac_end]) if frac_len else 0
        if int_end == pos and frac_len == 0:
            raise ValueError(f"invalid duration {_quote(orig)}")
        end = frac_end
    elif int_end == pos:
        raise ValueError(f"invalid duration {_quote(orig)}")
    unit_end = end
    while unit_end < len(s) and not (s[unit_end] == "." or "0" <= s[unit_end] <= "9"):
        unit_end += 1
    unit_text = s[end:unit_end]
    if not unit_text:
        raise ValueError(f"missing unit in duration {_quote(orig)}")
    unit = _DURATION_UNITS.get(unit_text)
    if unit is None:
        raise ValueError(f"unknown unit {_quote(unit_text)} in duration {_quote(orig)}")
    # Like Go: the fractional part is truncated to whole nanoseconds.
    return whole * unit + fraction * unit // 10**frac_len, unit_end


def parse_duration_ns(text: str) -> int:
    """Go ``time.ParseDuration``: ``[-+]?([0-9]*(\\.[0-9]*)?[a-z]+)+`` or ``0``.

    Returns integer nanoseconds; raises ``ValueError`` quoting ``text``.
    """
    s = text
    negative = False
    if s[:1] in ("-", "+"):
        negative = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise ValueError(f"invalid duration {_quote(text)}")
    total, pos = 0, 0
    while pos < len(s):
        value, pos = _parse_component(s, pos, text)
        total += value
    limit = _MAX_DURATION_NS + 1 if negative else _MAX_DURATION_NS
    if total > limit:
        raise ValueError(f"invalid duration {_quote(text)}")
    return -total if negative else total


def parse_duration(text: str) -> float:
    """Go ``time.ParseDuration`` syntax (``90s``, ``1h30m``, ``1.5h``…) to float seconds."""
    return parse_duration_ns(text) / SECOND


def _format_fraction(value: int, precision: int) -> tuple[str, int]:
    """Split ``value`` into ``.digits`` (trailing zeros dropped) and the integer rest."""
    scale = 10**precision
    digits = str(value % scale).rjust(precision, "0").rstrip("0")
    return ("." + digits if digits else ""), value // scale


def format_go_duration_ns(ns: int) -> str:
    """Go ``time.Duration.String()`` for integer nanoseconds (``1h0m0s``, ``1.5ms``)."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u < SECOND:
        if u < MICROSECOND:
            return f"{sign}{u}ns"
        if u < MILLISECOND:
            frac, whole = _format_fraction(u, 3)
            return f"{sign}{whole}{frac}\u00b5s"
        frac, whole = _format_fraction(u, 6)
        return f"{sign}{whole}{frac}ms"
    frac, secs = _format_fraction(u, 9)
    out = f"{secs % 60}{frac}s"
    minutes = secs // 60
    if minutes:
        out = f"{minutes % 60}m{out}"
        hours = minutes // 60
        if hours:
            out = f"{hours}h{out}"
    return sign + out


def format_go_duration(seconds: float) -> str:
    """Go ``time.Duration.String()`` of ``seconds`` (``15m0s``, ``24h0m0s``, ``100ms``)."""
    return format_go_duration_ns(seconds_to_ns(seconds))


def format_duration_ns(ns: int) -> str:
    """Appendix A ``format.Duration`` for integer nanoseconds."""
    if ns == 0:
        return "0s"
    if ns < 0:
        return "-" + format_duration_ns(-ns)
    if ns < MICROSECOND:
        return f"{ns}ns"
    if ns < MILLISECOND:
        return f"{ns / MICROSECOND:.3g}\u00b5s"
    if ns < SECOND:
        return f"{ns / MILLISECOND:.3g}ms"
    if ns < MINUTE:
        return f"{ns / SECOND:.3g}s"
    ns -= ns % SECOND
    if ns < DAY:
        return format_go_duration_ns(ns)
    if ns < WEEK:
        return f"{ns // DAY}d{format_go_duration_ns(ns % DAY)}"
    if ns < YEAR:
        weeks, rest = divmod(ns, WEEK)
        return f"{weeks}w{rest // DAY}d{format_go_duration_ns(rest % DAY)}"
    years, rest = divmod(ns, YEAR)
    weeks, rest = divmod(rest, WEEK)
    return f"{years}y{weeks}w{rest // DAY}d{format_go_duration_ns(rest % DAY)}"


def format_duration(seconds: float) -> str:
    """Appendix A ``format.Duration`` (``1.23s``, ``14.3ms``, ``1m30s``, ``1d0s``).

    Three significant digits below a minute, whole seconds above, with day,
    week and year (365.25 days) prefixes from one day on.
    """
    return format_duration_ns(seconds_to_ns(seconds))


# -------------------------------------------------------------------- sizes

_MAX_SIZE = (1 << 64) - 1

# Longest suffixes first so "KiB" is not read as "B" after "Ki". Go tries "B"
# before the decimal suffixes, so "10MB" fails there; we do the intended thing.
_SIZE_SUFFIXES: tuple[tuple[str, int], ...] = (
    ("EiB", 1 << 60),
    ("PiB", 1 << 50),
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("EB", 10**18),
    ("PB", 10**15),
    ("TB", 10**12),
    ("GB", 10**9),
    ("MB", 10**6),
    ("kB", 10**3),
    ("E", 1 << 60),
    ("P", 1 << 50),
    ("T", 1 << 40),
    ("G", 1 << 30),
    ("M", 1 << 20),
    ("K", 1 << 10),
    ("B", 1),
)


def parse_size(text: str) -> int:
    """Parse a size flag: ``1024``, ``100M``, ``100MiB``, ``2kB``, ``500B``.

    Binary suffixes ``K M G T P E`` and ``KiB … EiB``, decimal ``kB MB GB TB
    PB EB``, or ``B``; spaces between number and suffix are allowed. The
    result must fit in 64 bits. Raises ``ValueError`` quoting ``text``.
    """
    s = text.strip()
    multiplier = 1
    for suffix, value in _SIZE_SUFFIXES:
        if s.endswith(suffix):
            s, multiplier = s[: -len(suffix)].rstrip(), value
            break
    if not s or not s.isascii() or not s.isdigit():
        raise ValueError(f"invalid size {_quote(text)}")
    result = int(s) * multiplier
    if result > _MAX_SIZE:
        raise ValueError(f"size out of range {_quote(text)}")
    return result


def format_size(n: int) -> str:
    """Go's size-flag ``String()``: the first exact unit of ``EiB``…``KiB``, ``EB``…``kB``.

    ``100MiB``, ``2kB``, ``0B``, ``1536B``: how flag defaults are shown.
    """
    if n == 0:
        return "0B"
    binary = [unit for unit in _SIZE_SUFFIXES if unit[0].endswith("iB")]
    decimal = [unit for unit in _SIZE_SUFFIXES if len(unit[0]) == 2]
    for suffix, value in binary + decimal:
        if n % value == 0:
            return f"{n // value}{suffix}"
    return f"{n}B"


def format_bytes(n: int) -> str:
    """Appendix A ``format.FormatBytes``: ``100 MiB``, ``146 KiB``, ``500 B``.

    The largest of Ti/Gi/Mi/Ki where the shifted value exceeds 100, or is at
    least 1 and the value an exact multiple of the unit; else plain bytes.
    """
    for shift, unit in ((40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")):
        shifted = n >> shift
        if shifted > 100 or (shifted >= 1 and n & ((1 << shift) - 1) == 0):
            return f"{shifted} {unit}B"
    return f"{n} B"


# -------------------------------------------------------------------- times

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def format_time(epoch: float) -> str:
    """Local time as ``02 Jan 2006 15:04:05 MST`` (independent of the locale)."""
    t = time.localtime(epoch)
    month = _MONTHS[t.tm_mon - 1]
    return (
        f"{t.tm_mday:02d} {month} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {t.tm_zone}"
    )


def image_datestamp(epoch: float) -> str:
    """The image-name leaf for a build at ``epoch``: ``YYYY-MM-DD:HH:MM:SS`` local time."""
    return time.strftime("%Y-%m-%d:%H:%M:%S", time.localtime(epoch))


# ------------------------------------------------------------- architecture

_GOARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "aarch64_be": "arm64be",
    "i386": "386",
    "i486": "386",
    "i586": "386",
    "i686": "386",
    "x86": "386",
    "ppc64le": "ppc64le",
    "ppc64": "ppc64",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "mips64": "mips64",
    "mips": "mips",
    "loongarch64": "loong64",
}


def go_arch(machine: str | None = None) -> str:
    """GOARCH name for ``machine`` (default ``platform.machine()``).

    ``$ARCH`` in configuration means the Go architecture name, so an x86-64
    host must say ``amd64``. 32-bit ARM variants (``armv7l``…) are ``arm``;
    unknown names are returned lower-cased.
    """
    name = (platform.machine() if machine is None else machine).lower()
    if name in _GOARCH:
        return _GOARCH[name]
    if name.startswith("arm"):
        return "arm"
    return name
