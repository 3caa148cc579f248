"""Go's ``flag`` package: the one command-line parser of every program here.

Each program keeps its own table of :class:`FlagSpec` and parses with a
:class:`FlagSet` made from it, so ``imaginator`` and ``builder-tool`` follow
the same rules, which are Go's:

* ``-name=value``, ``-name value``, ``--name=value`` and ``--name value`` are
  the same; a boolean flag is set by a bare ``-name`` and takes a value only as
  ``-name=value`` (``-name false`` leaves ``false`` as an argument);
* ``--`` ends the flags; ``-`` alone and anything not starting with ``-`` is an
  argument, and (unless the program asks for flags between its arguments) the
  first argument ends the flags;
* ``-h`` and ``-help`` ask for the usage unless the program defines them;
* integers take Go's literals (``0x1F``, ``0o17``, ``017``, ``1_000``),
  booleans ``1 0 t f T F true false TRUE FALSE True False``, durations are
  ``time.ParseDuration``'s, sizes those of :func:`~.units.parse_size`, lists
  are comma-separated (blanks around items and empty items dropped);
* the usage lists the flags sorted by name as ``flag.PrintDefaults`` does, a
  default shown only when it is not the type's zero value.

Where Go answers ``parse error`` this module says what was wanted: errors read
``invalid value "abc" for flag -portNum: want an integer``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from imaginator.goformats.units import (
    SECOND,
    format_go_duration,
    format_go_duration_ns,
    format_size,
    parse_duration_ns,
    parse_size,
)

#: ``duration`` is Go's ``time.Duration`` (integer nanoseconds); ``seconds`` is
#: the same syntax as float seconds, for programs that count in seconds.
FlagKind = Literal["bool", "int", "uint", "string", "duration", "seconds", "size", "list"]

HELP_NAMES = ("h", "help")
_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 63) - 1
_UINT_MAX = (1 << 64) - 1
_WANT_DURATION = "want a duration such as 90s, 1h30m or 0 (units: ns, us, ms, s, m, h)"
_WANT_SIZE = "want a size such as 4096, 100MiB, 1G or 500MB"


class FlagError(Exception):
    """A command line or flag value that is refused; the text names the flag."""


class HelpRequested(Exception):
    """``-h`` or ``-help`` was given (and the program defines neither)."""


class _NumberError(ValueError):
    def __init__(self, out_of_range: bool) -> None:
        super().__init__("value out of range" if out_of_range else "parse error")
        self.out_of_range = out_of_range


# ------------------------------------------------------------------ Go values


def go_quote(text: str) -> str:
    """Go's ``strconv.Quote`` (``%q``): printable characters as they are, the
    rest escaped; bytes that were not UTF-8 (surrogate escapes) as ``\\xNN``."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of the command line
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char.isprintable():
            out.append(char)
        elif char in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[char])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


_SHORT_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}


def _underscores_ok(text: str) -> bool:
    """Go's rule for ``_`` in integer literals: only between digits, or after
    a base prefix, never at the end."""
    if text[:1] in ("+", "-"):
        text = text[1:]
    last = "^"  # ^ start, 0 digit or prefix, _ underscore, ! anything else
    index = 0
    hexadecimal = False
    if len(text) >= 2 and text[0] == "0" and text[1].lower() in "box":
        index, last, hexadecimal = 2, "0", text[1].lower() == "x"
    for char in text[index:]:
        if "0" <= char <= "9" or (hexadecimal and "a" <= char.lower() <= "f"):
            last = "0"
        elif char == "_":
            if last != "0":
                return False
            last = "_"
        elif last == "_":
            return False
        else:
            last = "!"
    return last != "_"


def parse_go_uint(text: str, limit: int = _UINT_MAX) -> int:
    """Go's ``strconv.ParseUint(text, 0, 64)``: decimal, ``0x``/``0o``/``0b``
    prefixes, a leading ``0`` for octal, ``_`` between digits; no sign."""
    if not text:
        raise _NumberError(False)
    digits, base = text, 10
    if text[0] == "0":
        prefix = text[1:2].lower()
        if len(text) >= 3 and prefix in ("b", "o", "x"):
            base, digits = {"b": 2, "o": 8, "x": 16}[prefix], text[2:]
        else:
            base, digits = 8, text[1:]
    value = 0
    underscores = False
    for char in digits:
        if char == "_":
            underscores = True
            continue
        digit = int(char, 36) if char.isascii() and char.isalnum() else 99
        if digit >= base:
            raise _NumberError(False)
        value = value * base + digit
        if value > limit:
            raise _NumberError(True)
    if underscores and not _underscores_ok(text):
        raise _NumberError(False)
    return value


def parse_go_int(text: str) -> int:
    """Go's ``strconv.ParseInt(text, 0, 64)``: :func:`parse_go_uint` with an
    optional sign."""
    if not text:
        raise _NumberError(False)
    negative = text[0] == "-"
    body = text[1:] if text[0] in "+-" else text
    try:
        magnitude = parse_go_uint(body)
    except _NumberError as exc:
        if not exc.out_of_range:
            raise
        magnitude = _UINT_MAX
    if magnitude > (-_INT_MIN if negative else _INT_MAX):
        raise _NumberError(True)
    return -magnitude if negative else magnitude


def parse_go_bool(text: str) -> bool:
    """Go's ``strconv.ParseBool``."""
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise ValueError("parse error")


def _parse_int(text: str) -> int:
    try:
        return parse_go_int(text)
    except _NumberError as exc:
        if exc.out_of_range:
            raise ValueError(
                f"out of range: want an integer from {_INT_MIN} to {_INT_MAX}"
            ) from None
        raise ValueError("want an integer") from None


def _parse_uint(text: str) -> int:
    try:
        return parse_go_uint(text)
    except _NumberError as exc:
        if exc.out_of_range:
            raise ValueError(f"out of range: want an integer from 0 to {_UINT_MAX}") from None
    try:
        parse_go_int(text)
    except _NumberError:
        raise ValueError("want an integer") from None
    if text.startswith("+"):
        raise ValueError("want an integer without a sign") from None
    raise ValueError("want a non-negative integer") from None


def _parse_duration(text: str) -> int:
    try:
        return parse_duration_ns(text)
    except ValueError:
        raise ValueError(_WANT_DURATION) from None


def _parse_size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        if "out of range" in str(exc):
            raise ValueError("out of range: want a size below 16EiB") from None
        raise ValueError(_WANT_SIZE) from None


def _parse_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


_PARSERS: dict[str, Callable[[str], Any]] = {
    "bool": parse_go_bool,
    "int": _parse_int,
    "uint": _parse_uint,
    "string": str,
    "duration": _parse_duration,
    "seconds": lambda text: _parse_duration(text) / SECOND,
    "size": _parse_size,
    "list": _parse_list,
}
_FORMATS: dict[str, Callable[[Any], str]] = {
    "bool": lambda value: "true" if value else "false",
    "int": str,
    "uint": str,
    "string": str,
    "duration": format_go_duration_ns,
    "seconds": format_go_duration,
    "size": format_size,
    "list": ",".join,
}
_ZERO_TEXT = {
    "bool": "false",
    "int": "0",
    "uint": "0",
    "string": "",
    "duration": "0",
    "seconds": "0",
    "size": "0",
    "list": "",
}
# What ``flag.UnquoteUsage`` calls each kind in the usage (a bool has no name).
_VALUE_NAMES = {
    "bool": "",
    "int": "int",
    "uint": "uint",
    "string": "string",
    "duration": "duration",
    "seconds": "duration",
    "size": "value",
    "list": "value",
}


# ------------------------------------------------------------------ flags


@dataclass(frozen=True)
class FlagSpec:
    """One flag of a program's table.

    ``default`` is written as on a command line (``"1h"``, ``"6975"``,
    ``"100MiB"``, ``"false"``); ``help`` may name the value in back quotes
    (``"Name of `file` to read"``), as Go's usage understands.
    """

    name: str
    kind: FlagKind
    default: str
    help: str

    def __post_init__(self) -> None:
        if self.kind not in _PARSERS:
            raise ValueError(f"flag -{self.name}: unknown kind {self.kind!r}")

    @property
    def is_bool(self) -> bool:
        return self.kind == "bool"

    def parse(self, text: str) -> Any:
        """The value of ``text``; ``FlagError`` (in Go's words, saying what is
        wanted) when it is not one."""
        try:
            return _PARSERS[self.kind](text)
        except ValueError as exc:
            reason = "want true or false" if self.is_bool else str(exc)
            if self.is_bool:
                raise FlagError(
                    f"invalid boolean value {go_quote(text)} for -{self.name}: {reason}"
                ) from None
            raise FlagError(
                f"invalid value {go_quote(text)} for flag -{self.name}: {reason}"
            ) from None

    @property
    def value(self) -> Any:
        """The default's value."""
        return self.parse(self.default)

    def format(self, value: Any) -> str:
        """Go's ``String()`` of a value of this flag (``1h0m0s``, ``100MiB``)."""
        return _FORMATS[self.kind](value)

    def usage(self) -> str:
        """This flag's entry in ``flag.PrintDefaults``: the name and value name,
        the help (after a tab) and the default unless it is the zero value."""
        value_name, help_text = _VALUE_NAMES[self.kind], self.help
        start = help_text.find("`")
        end = help_text.find("`", start + 1) if start >= 0 else -1
        if end > start >= 0:
            value_name = help_text[start + 1 : end]
            help_text = help_text[:start] + value_name + help_text[end + 1 :]
        head = f"  -{self.name}" + (f" {value_name}" if value_name else "")
        # Go puts a one-letter boolean's help on its own line, the others below.
        head += "\t" if len(head) <= 4 else "\n    \t"
        text = head + help_text.replace("\n", "\n    \t")
        shown = self.format(self.value)
        if shown != self.format(self.parse(_ZERO_TEXT[self.kind])):
            text += f" (default {go_quote(shown) if self.kind == 'string' else shown})"
        return text


@dataclass
class ParsedArgs:
    """What a command line said: the flags set, in order, and the arguments."""

    flags: list[tuple[FlagSpec, str, Any]] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    #: The bare boolean flag just before the first argument, if any: a hint
    #: when that argument was meant as its value (``-flag false``).
    bare_bool_before_args: FlagSpec | None = None

    def apply(self, values: MutableMapping[str, Any]) -> None:
        """Store every flag's value in ``values`` (later ones win)."""
        for spec, _text, value in self.flags:
            values[spec.name] = value

    def hint(self) -> str:
        """``a boolean flag takes its value as -x=false`` when the first argument
        looks like the value of a bare boolean flag before it, else empty."""
        spec = self.bare_bool_before_args
        if spec is None or not self.args or self.args[0] not in _GO_TRUE + _GO_FALSE:
            return ""
        return f"a boolean flag takes its value as -{spec.name}={self.args[0]}"


class FlagSet:
    """A program's flags: parse command lines and write the usage by Go's rules."""

    def __init__(self, specs: Iterable[FlagSpec]) -> None:
        self._specs: dict[str, FlagSpec] = {}
        for spec in specs:
            if spec.name in self._specs:
                raise ValueError(f"flag redefined: {spec.name}")
            spec.parse(spec.default)  # a table whose default does not parse is a bug
            self._specs[spec.name] = spec

    def __iter__(self) -> Iterator[FlagSpec]:
        return iter(sorted(self._specs.values(), key=lambda spec: spec.name))

    def get(self, name: str) -> FlagSpec | None:
        return self._specs.get(name)

    def defaults(self) -> dict[str, Any]:
        """Every flag's default value, by name."""
        return {name: spec.value for name, spec in self._specs.items()}

    def lookup(self, name: str) -> FlagSpec:
        """The flag called ``name``; ``FlagError`` in Go's words if there is none."""
        spec = self._specs.get(name)
        if spec is None:
            raise FlagError(f"flag provided but not defined: -{name}")
        return spec

    def parse(self, argv: Sequence[str], *, interspersed: bool = False) -> ParsedArgs:
        """Parse ``argv`` by Go's rules (see the module); with ``interspersed``,
        flags may also come between and after the arguments (``--`` still ends
        them). Raises ``FlagError`` at the first bad flag and ``HelpRequested``
        at ``-h``/``-help``."""
        parsed = ParsedArgs()
        index, previous = 0, None
        while index < len(argv):
            arg = argv[index]
            if arg == "--":
                parsed.args.extend(argv[index + 1 :])
                break
            if len(arg) < 2 or arg[0] != "-":
                if not parsed.args and previous is not None and previous.is_bool:
                    parsed.bare_bool_before_args = previous
                if not interspersed:
                    parsed.args.extend(argv[index:])
                    break
                parsed.args.append(arg)
                index, previous = index + 1, None
                continue
            index, previous = self._parse_one(argv, index, parsed)
        return parsed

    def _parse_one(
        self, argv: Sequence[str], index: int, parsed: ParsedArgs
    ) -> tuple[int, FlagSpec | None]:
        """The flag at ``argv[index]``; returns the next index and, for a bare
        boolean flag, its spec."""
        arg = argv[index]
        body = arg[2:] if arg[1] == "-" else arg[1:]
        if not body or body[0] in "-=":
            raise FlagError(f"bad flag syntax: {arg}")
        name, has_value, text = body.partition("=")
        spec = self._specs.get(name)
        if spec is None and name in HELP_NAMES:
            raise HelpRequested()
        spec = self.lookup(name)
        index += 1
        bare = None
        if spec.is_bool and not has_value:
            text, bare = "true", spec
        elif not has_value:
            if index >= len(argv):
                raise FlagError(f"flag needs an argument: -{name}")
            text = argv[index]
            index += 1
        parsed.flags.append((spec, text, spec.parse(text)))
        return index, bare

    def usage(self) -> str:
        """``flag.PrintDefaults``: every flag, sorted by name, one entry each."""
        return "".join(spec.usage() + "\n" for spec in self)


def with_defaults(specs: Iterable[FlagSpec], defaults: Mapping[str, str]) -> list[FlagSpec]:
    """``specs`` with some defaults replaced (a default computed at run time,
    such as ``$HOME/.ssl``)."""
    return [
        replace(spec, default=defaults[spec.name]) if spec.name in defaults else spec
        for spec in specs
    ]
