"""Type descriptions for Go's GOB encoding (``encoding/gob``), and its error.

A *schema* says which Go type a value has, so that the encoder can send the
same type definitions and bytes a Go program would, and the decoder can match
a stream's (wire) types against what we expect, by Go's rules. Types are
compared by identity: build each one once (module constants) and reuse it.

Values travel as plain Python data:

- ``bool``, ``int`` (every Go int and uint width), ``float``, ``complex``, ``str``
- ``bytes`` for ``[]byte`` and for arrays of bytes (``[64]byte``)
- ``list`` for slices and other arrays, ``dict`` for maps
- ``dict`` keyed by the Go field name for structs
- ``GoInterface(name, value)`` for interface values (``None`` is a nil interface)
- whatever a ``Marshaled`` type's functions make of its bytes (``GoTime`` for ``time.Time``)

``None`` stands for Go's nil (pointer, slice, map, interface): such a struct
field is left out, as Go leaves it out.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class GobError(ValueError):
    """A GOB stream or value is malformed, hostile, or does not fit the schema."""


# Ids of the types every GOB stream knows without a definition (Go's bootstrap types).
BOOL_ID, INT_ID, UINT_ID, FLOAT_ID, BYTES_ID, STRING_ID, COMPLEX_ID, INTERFACE_ID = range(1, 9)
WIRE_TYPE_ID, ARRAY_TYPE_ID, COMMON_TYPE_ID, SLICE_TYPE_ID = 16, 17, 18, 19
STRUCT_TYPE_ID, FIELD_TYPE_ID, FIELD_SLICE_ID, MAP_TYPE_ID = 20, 21, 22, 23
#: Go 1.27 hands out 64 to the first type a process sends (checked against the peers).
FIRST_USER_ID = 64


class GoType:
    """A Go type. Subclasses say how it is sent; ``name`` is the name Go puts in
    the type definition (composite types) or uses in messages."""

    name: str = ""

    def zero(self) -> Any:
        """The Python value of Go's zero value of this type."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class Basic(GoType):
    """A predefined type: ``kind`` is bool, int, uint, float, complex, string,
    bytes or interface; ``bits`` bounds ints and uints (64 by default)."""

    def __init__(self, kind: str, wire_id: int, bits: int = 64, zero: Any = None) -> None:
        self.kind = kind
        self.name = kind
        self.wire_id = wire_id
        self.bits = bits
        self._zero = zero

    def zero(self) -> Any:
        return self._zero

    def check_range(self, value: int) -> int:
        if self.kind == "int":
            low, high = -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        else:
            low, high = 0, (1 << self.bits) - 1
        if not low <= value <= high:
            raise GobError(f"value {value} out of range for {self.kind}{self.bits}")
        return value


BOOL = Basic("bool", BOOL_ID, zero=False)
INT = Basic("int", INT_ID, zero=0)
INT8 = Basic("int", INT_ID, 8, zero=0)
INT16 = Basic("int", INT_ID, 16, zero=0)
INT32 = Basic("int", INT_ID, 32, zero=0)
INT64 = INT
UINT = Basic("uint", UINT_ID, zero=0)
UINT8 = Basic("uint", UINT_ID, 8, zero=0)
UINT16 = Basic("uint", UINT_ID, 16, zero=0)
UINT32 = Basic("uint", UINT_ID, 32, zero=0)
UINT64 = UINT
FLOAT = Basic("float", FLOAT_ID, zero=0.0)
COMPLEX = Basic("complex", COMPLEX_ID, zero=0j)
STRING = Basic("string", STRING_ID, zero="")
BYTES = Basic("bytes", BYTES_ID)
BASIC_BY_ID = {t.wire_id: t for t in (BOOL, INT, UINT, FLOAT, COMPLEX, STRING, BYTES)}


class Slice(GoType):
    """``[]elem`` (``[]byte`` is ``BYTES``)."""

    def __init__(self, elem: GoType, name: str = "") -> None:
        self.elem = elem
        self.name = name


class Array(GoType):
    """``[length]elem``; an array of ``UINT8`` is ``bytes`` in Python."""

    def __init__(self, elem: GoType, length: int, name: str = "") -> None:
        self.elem = elem
        self.length = length
        self.name = name

    @property
    def of_bytes(self) -> bool:
        return self.elem is UINT8

    def zero(self) -> Any:
        if self.of_bytes:
            return bytes(self.length)
        return [self.elem.zero() for _ in range(self.length)]


class Map(GoType):
    """``map[key]elem``."""

    def __init__(self, key: GoType, elem: GoType, name: str = "") -> None:
        self.key = key
        self.elem = elem
        self.name = name


@dataclass(frozen=True, slots=True)
class Field:
    """An exported struct field, in declaration order. ``pointer``: the Go
    field is a pointer, so its zero value is ``None`` (nil), not the element's."""

    name: str
    type: GoType
    pointer: bool = False

    def zero(self) -> Any:
        return None if self.pointer else self.type.zero()


class Struct(GoType):
    """A struct: its exported fields in Go's declaration order (an embedded
    struct is one field named after its type, as GOB sends it)."""

    def __init__(self, name: str, fields: Sequence[Field] = ()) -> None:
        self.name = name
        self.define(fields)

    def define(self, fields: Sequence[Field]) -> None:
        """Set the fields (later, for recursive types)."""
        self.fields: tuple[Field, ...] = tuple(fields)
        self.by_name = {field.name: field for field in self.fields}
        if len(self.by_name) != len(self.fields):
            raise ValueError(f"struct {self.name}: duplicate field names")

    def zero(self) -> Any:
        return {field.name: field.zero() for field in self.fields}


class Interface(GoType):
    """An interface: ``registry`` maps the names concrete types were registered
    under (``gob.Register``) to their types. Decoding without a registry keeps
    the value as the wire describes it."""

    def __init__(
        self, registry: Mapping[str, GoType] | None = None, name: str = "interface"
    ) -> None:
        self.registry = dict(registry) if registry is not None else None
        self.name = name


class Marshaled(GoType):
    """A type that sends its own bytes (Go's GobEncoder, BinaryMarshaler or
    TextMarshaler); ``encode``/``decode`` convert between value and bytes and
    ``is_zero`` says when Go leaves such a struct field out."""

    KINDS = ("GobEncoder", "BinaryMarshaler", "TextMarshaler")

    def __init__(
        self,
        name: str,
        encode: Callable[[Any], bytes],
        decode: Callable[[bytes], Any],
        is_zero: Callable[[Any], bool],
        zero: Any = None,
        kind: str = "GobEncoder",
    ) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown marshaler kind {kind!r}")
        self.name = name
        self.encode = encode
        self.decode = decode
        self.is_zero = is_zero
        self.kind = kind
        self._zero = zero

    def zero(self) -> Any:
        return self._zero


@dataclass(frozen=True, slots=True)
class GoInterface:
    """A non-nil interface value: the concrete type's registered ``name`` and
    its value. ``type`` is needed to encode when no registry knows the name."""

    name: str
    value: Any
    type: GoType | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GoInterface):
            return NotImplemented
        return (self.name, self.value) == (other.name, other.value)

    def __hash__(self) -> int:
        return hash(self.name)


@dataclass(frozen=True, slots=True)
class Opaque:
    """A marshaled value decoded without a schema: its type name and bytes."""

    name: str
    data: bytes


# ---------------------------------------------------------------- time.Time

#: Seconds from 0001-01-01 (Go's internal origin) to 1970-01-01.
_UNIX_TO_INTERNAL = 62135596800


@dataclass(frozen=True, slots=True)
class GoTime:
    """A ``time.Time`` as its binary form carries it: ``seconds`` since
    0001-01-01T00:00:00Z, ``nanoseconds`` and the zone ``offset`` in seconds
    east of UTC (``None``: the UTC location itself, which Go writes as -1).
    The zero value is Go's zero time."""

    seconds: int = 0
    nanoseconds: int = 0
    offset: int | None = None

    @classmethod
    def from_unix_ns(cls, ns: int, offset: int | None = None) -> GoTime:
        seconds, nanoseconds = divmod(ns, 1_000_000_000)
        return cls(seconds + _UNIX_TO_INTERNAL, nanoseconds, offset)

    @property
    def unix_ns(self) -> int:
        return (self.seconds - _UNIX_TO_INTERNAL) * 1_000_000_000 + self.nanoseconds

    @property
    def is_zero(self) -> bool:
        return self.seconds == 0 and self.nanoseconds == 0 and self.offset is None


def marshal_time(value: GoTime) -> bytes:
    """Go's ``Time.MarshalBinary``: version 1, or 2 when the offset has seconds."""
    if not isinstance(value, GoTime):
        raise GobError(f"time.Time: expected GoTime, got {type(value).__name__}")
    if not 0 <= value.nanoseconds < 1_000_000_000:
        raise GobError(f"time.Time: nanoseconds out of range: {value.nanoseconds}")
    version, extra = 1, b""
    if value.offset is None:
        minutes = -1
    else:
        # Go's / and % truncate toward zero.
        sign = -1 if value.offset < 0 else 1
        minutes, seconds = (sign * part for part in divmod(abs(value.offset), 60))
        if seconds:
            version, extra = 2, struct.pack(">b", seconds)
        if minutes == -1 or not -32768 <= minutes <= 32767:
            raise GobError(f"time.Time: unexpected zone offset {value.offset}")
    try:
        head = struct.pack(">Bqih", version, value.seconds, value.nanoseconds, minutes)
    except struct.error as exc:
        raise GobError(f"time.Time: out of range: {value}") from exc
    return head + extra


def unmarshal_time(data: bytes) -> GoTime:
    """Go's ``Time.UnmarshalBinary`` (versions 1 and 2)."""
    if not data:
        raise GobError("Time.UnmarshalBinary: no data")
    version = data[0]
    if version not in (1, 2):
        raise GobError("Time.UnmarshalBinary: unsupported version")
    if len(data) != (15 if version == 1 else 16):
        raise GobError("Time.UnmarshalBinary: invalid length")
    _, seconds, nanoseconds, minutes = struct.unpack(">Bqih", data[:15])
    offset = minutes * 60
    if version == 2:
        offset += struct.unpack(">b", data[15:16])[0]
    if not 0 <= nanoseconds < 1_000_000_000:
        raise GobError(f"Time.UnmarshalBinary: nanoseconds out of range: {nanoseconds}")
    return GoTime(seconds, nanoseconds, None if offset == -60 else offset)


TIME = Marshaled("Time", marshal_time, unmarshal_time, lambda t: t.is_zero, GoTime())
