"""Go's GOB encoding (``encoding/gob``), pure: no I/O, no Twisted.

The Go imageserver speaks GOB, so uploading images to it needs this. The
format, in short: a stream is a sequence of messages, each an unsigned length
followed by that many bytes. A message starts with a signed type id; a negative
id ``-n`` defines type ``n`` (a ``wireType`` struct follows), a positive one
is a value of that type. A stream sends every type definition once, before the
first value that needs it, and a value whose interface fields hold a concrete
type not yet defined continues in a new message after that definition (Go's
encoder flushes the message it is building there; we do the same, and the
decoder follows such a value across messages).

- ``Encoder``: one per stream (one per SRPC call in Go's clients); type ids come
  from a ``TypeIds`` allocator, which may be shared by several encoders the way
  Go's ids are process-wide, so a sequence of calls gets the ids a fresh Go
  program would use.
- ``Decoder``: one per stream; fed bytes as they arrive, it returns complete
  values and keeps the type definitions it has received. Raw bytes that follow a
  message (``ObjectServer.AddObjects``/``GetObjects``) are taken out of its
  buffer with ``take_buffered``.

Schemas and values are described in ``gobtypes``; this module re-exports them.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from imaginator.goformats.gobdecode import Decoder, WireType
from imaginator.goformats.gobtypes import (
    BASIC_BY_ID,
    BOOL,
    BYTES,
    COMPLEX,
    FIRST_USER_ID,
    FLOAT,
    INT,
    INT8,
    INT16,
    INT32,
    INT64,
    INTERFACE_ID,
    STRING,
    TIME,
    UINT,
    UINT8,
    UINT16,
    UINT32,
    UINT64,
    Array,
    Basic,
    Field,
    GobError,
    GoInterface,
    GoTime,
    GoType,
    Interface,
    Map,
    Marshaled,
    Opaque,
    Slice,
    Struct,
)

__all__ = [
    "BASIC_BY_ID",
    "BOOL",
    "BYTES",
    "COMPLEX",
    "FIRST_USER_ID",
    "FLOAT",
    "INT",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "STRING",
    "TIME",
    "UINT",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "Array",
    "Basic",
    "Decoder",
    "Encoder",
    "Field",
    "GoInterface",
    "GoTime",
    "GoType",
    "GobError",
    "Interface",
    "Map",
    "Marshaled",
    "Opaque",
    "Slice",
    "Struct",
    "TypeIds",
    "WireType",
    "encode_int",
    "encode_uint",
]

_MAX_UINT64 = (1 << 64) - 1


def encode_uint(value: int) -> bytes:
    """GOB's unsigned integer: one byte below 128, else the negated byte count
    and the big-endian bytes."""
    if value < 0 or value > _MAX_UINT64:
        raise GobError(f"unsigned integer out of range: {value}")
    if value < 0x80:
        return bytes((value,))
    data = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return bytes((256 - len(data),)) + data


#: ``encode_uint`` of every byte value: a byte array (an object hash) is
#: encoded as one unsigned integer per byte.
_BYTE_CODES = tuple(encode_uint(byte) for byte in range(256))


def encode_int(value: int) -> bytes:
    """GOB's signed integer: the sign in the low bit (complemented if negative)."""
    if not -(1 << 63) <= value < (1 << 63):
        raise GobError(f"integer out of range: {value}")
    return encode_uint((~value << 1) | 1 if value < 0 else value << 1)


def _float_bits(value: float) -> int:
    # Go sends the IEEE bits byte-reversed so that small integers are short.
    return int.from_bytes(struct.pack("<d", value), "big")


class TypeIds:
    """Type ids in the order Go hands them out: a struct gets its id before its
    fields' types, an array, slice or map after its element types; a
    marshaled type when first seen. Share one between the encoders of one
    connection to number types as one Go process would."""

    def __init__(self, first: int = FIRST_USER_ID) -> None:
        self._next = first
        self._ids: dict[GoType, int] = {}

    def assign(self, go_type: GoType, type_id: int) -> None:
        """Give ``go_type`` a fixed id (to reproduce a recorded stream)."""
        self._ids[go_type] = type_id

    def id(self, go_type: GoType) -> int:
        """The id of ``go_type``, allocating it (and its parts') first if needed."""
        if isinstance(go_type, Basic):
            return go_type.wire_id
        if isinstance(go_type, Interface):
            return INTERFACE_ID
        if go_type not in self._ids:
            self._build(go_type, set())
        return self._ids[go_type]

    def _assign(self, go_type: GoType) -> None:
        if go_type not in self._ids:
            self._ids[go_type] = self._next
            self._next += 1

    def _build(self, go_type: GoType, building: set[int]) -> None:
        if isinstance(go_type, Basic | Interface) or go_type in self._ids:
            return
        if id(go_type) in building:
            # A recursive reference to a container still being built: Go gives
            # it its id at this point.
            self._assign(go_type)
            return
        if isinstance(go_type, Marshaled):
            self._assign(go_type)
        elif isinstance(go_type, Struct):
            self._assign(go_type)
            for field in go_type.fields:
                self._build(field.type, building)
        elif isinstance(go_type, Array | Slice | Map):
            building.add(id(go_type))
            parts = (go_type.key, go_type.elem) if isinstance(go_type, Map) else (go_type.elem,)
            for part in parts:
                self._build(part, building)
            building.discard(id(go_type))
            self._assign(go_type)
        else:
            raise GobError(f"cannot send type {go_type!r}")


class _State:
    """Delta encoding of struct field numbers."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = -1


class Encoder:
    """Encodes top-level values of one GOB stream; ``encode`` returns the bytes
    to send (type definitions first, each once per encoder)."""

    def __init__(self, ids: TypeIds | None = None) -> None:
        self.ids = ids if ids is not None else TypeIds()
        self._sent: dict[GoType, int] = {}
        self._writers: list[bytearray] = []

    def encode(self, go_type: GoType, value: Any) -> bytes:
        """One top-level value of ``go_type`` (a struct, or any other type as
        Go's "singleton"), with the type definitions it needs."""
        if value is None:
            raise GobError("cannot encode a nil value")
        out = bytearray()
        self._writers = [out]
        buffer = bytearray()
        self._send_type_descriptor(out, buffer, go_type)
        buffer += encode_int(self._sent[go_type])
        if isinstance(go_type, Struct):
            self._struct(buffer, go_type, value)
        else:
            buffer += b"\x00"  # the singleton's field delta
            self._value(buffer, go_type, value)
        self._write_message(out, buffer)
        return bytes(out)

    # -- type definitions

    @staticmethod
    def _write_message(writer: bytearray, buffer: bytearray) -> None:
        writer += encode_uint(len(buffer))
        writer += buffer
        buffer.clear()

    def _send_type_descriptor(self, writer: bytearray, buffer: bytearray, go_type: GoType) -> None:
        if go_type not in self._sent:
            if not self._send_type(writer, buffer, go_type):
                self._sent[go_type] = self.ids.id(go_type)

    def _send_type(self, writer: bytearray, buffer: bytearray, go_type: GoType) -> bool:
        if isinstance(go_type, Basic | Interface):
            return False
        return self._send_actual_type(writer, buffer, go_type)

    def _send_actual_type(self, writer: bytearray, buffer: bytearray, go_type: GoType) -> bool:
        if go_type in self._sent:
            return False
        type_id = self.ids.id(go_type)
        buffer += encode_int(-type_id)
        buffer += self._wire_type(go_type, type_id)
        # Go writes everything in the buffer as one message here, even when the
        # buffer already held part of a value (an interface's concrete type).
        self._write_message(writer, buffer)
        self._sent[go_type] = type_id
        if isinstance(go_type, Struct):
            for field in go_type.fields:
                self._send_type(writer, buffer, field.type)
        elif isinstance(go_type, Array | Slice):
            self._send_type(writer, buffer, go_type.elem)
        elif isinstance(go_type, Map):
            self._send_type(writer, buffer, go_type.key)
            self._send_type(writer, buffer, go_type.elem)
        return True

    def _wire_type(self, go_type: GoType, type_id: int) -> bytes:
        """The ``wireType`` struct describing ``go_type``, as Go encodes it."""
        common = b"\x01" + self._common(go_type.name, type_id)
        if isinstance(go_type, Array):
            body = common + b"\x01" + encode_int(self.ids.id(go_type.elem))
            if go_type.length:
                body += b"\x01" + encode_int(go_type.length)
            return b"\x01" + body + b"\x00\x00"
        if isinstance(go_type, Slice):
            body = common + b"\x01" + encode_int(self.ids.id(go_type.elem))
            return b"\x02" + body + b"\x00\x00"
        if isinstance(go_type, Struct):
            body = common
            if go_type.fields:
                body += b"\x01" + encode_uint(len(go_type.fields))
                for field in go_type.fields:
                    body += self._common(field.name, self.ids.id(field.type))
            return b"\x03" + body + b"\x00\x00"
        if isinstance(go_type, Map):
            body = common + b"\x01" + encode_int(self.ids.id(go_type.key))
            body += b"\x01" + encode_int(self.ids.id(go_type.elem))
            return b"\x04" + body + b"\x00\x00"
        if isinstance(go_type, Marshaled):
            delta = 5 + Marshaled.KINDS.index(go_type.kind)
            return encode_uint(delta) + common + b"\x00\x00"
        raise GobError(f"cannot describe type {go_type!r}")

    @staticmethod
    def _common(name: str, type_id: int) -> bytes:
        """``CommonType{Name, Id}`` (also the shape of a struct's ``fieldType``)."""
        data = b""
        if name:
            raw = name.encode("utf-8", "surrogateescape")
            data += b"\x01" + encode_uint(len(raw)) + raw
            return data + b"\x01" + encode_int(type_id) + b"\x00"
        return b"\x02" + encode_int(type_id) + b"\x00"

    # -- values

    def _struct(self, buffer: bytearray, go_type: Struct, value: Any) -> None:
        if not isinstance(value, Mapping):
            raise GobError(
                f"{go_type.name}: expected a mapping of fields, got {type(value).__name__}"
            )
        unknown = set(value) - {field.name for field in go_type.fields}
        if unknown:
            raise GobError(f"{go_type.name}: no fields {sorted(unknown)}")
        state = _State()
        for index, field in enumerate(go_type.fields):
            item = value.get(field.name)
            if item is None or self._is_zero(field.type, item):
                continue
            buffer += encode_uint(index - state.last)
            state.last = index
            try:
                self._value(buffer, field.type, item)
            except GobError as exc:
                raise GobError(f"{go_type.name}.{field.name}: {exc}") from None
        buffer += b"\x00"

    @staticmethod
    def _is_zero(go_type: GoType, value: Any) -> bool:
        """Whether Go leaves a struct field with this value out."""
        if isinstance(go_type, Basic):
            if go_type.kind in ("string", "bytes"):
                return len(value) == 0
            return go_type.kind != "interface" and value == go_type.zero()
        if isinstance(go_type, Slice):
            return len(value) == 0
        if isinstance(go_type, Marshaled):
            return go_type.is_zero(value)
        return False  # arrays, maps (non-nil), structs and interfaces are sent

    def _value(self, buffer: bytearray, go_type: GoType, value: Any) -> None:
        if isinstance(go_type, Basic):
            self._basic(buffer, go_type, value)
        elif isinstance(go_type, Struct):
            self._struct(buffer, go_type, value)
        elif isinstance(go_type, Slice | Array):
            self._sequence(buffer, go_type, value)
        elif isinstance(go_type, Map):
            if not isinstance(value, Mapping):
                raise GobError(f"expected a mapping, got {type(value).__name__}")
            buffer += encode_uint(len(value))
            for key, item in value.items():
                self._element(buffer, go_type.key, key)
                self._element(buffer, go_type.elem, item)
        elif isinstance(go_type, Interface):
            self._interface(buffer, go_type, value)
        elif isinstance(go_type, Marshaled):
            data = go_type.encode(value)
            buffer += encode_uint(len(data)) + data
        else:
            raise GobError(f"cannot encode type {go_type!r}")

    def _element(self, buffer: bytearray, go_type: GoType, value: Any) -> None:
        if value is None and not isinstance(go_type, Interface):
            raise GobError("nil element")
        self._value(buffer, go_type, value)

    def _sequence(self, buffer: bytearray, go_type: Slice | Array, value: Any) -> None:
        if isinstance(go_type, Array):
            if len(value) != go_type.length:
                raise GobError(f"array of {go_type.length} elements, got {len(value)}")
            if go_type.of_bytes:
                if not isinstance(value, bytes | bytearray):
                    raise GobError(f"byte array: expected bytes, got {type(value).__name__}")
                buffer += encode_uint(len(value))
                buffer += b"".join([_BYTE_CODES[byte] for byte in value])
                return
        if isinstance(value, str | bytes | bytearray | Mapping):
            raise GobError(f"expected a sequence, got {type(value).__name__}")
        buffer += encode_uint(len(value))
        for item in value:
            self._element(buffer, go_type.elem, item)

    def _basic(self, buffer: bytearray, go_type: Basic, value: Any) -> None:
        kind = go_type.kind
        if kind == "bool":
            if not isinstance(value, bool):
                raise GobError(f"bool: got {type(value).__name__}")
            buffer += b"\x01" if value else b"\x00"
        elif kind in ("int", "uint"):
            if not isinstance(value, int) or isinstance(value, bool):
                raise GobError(f"{kind}: got {type(value).__name__}")
            go_type.check_range(value)
            buffer += encode_int(value) if kind == "int" else encode_uint(value)
        elif kind == "float":
            if not isinstance(value, float | int) or isinstance(value, bool):
                raise GobError(f"float: got {type(value).__name__}")
            buffer += encode_uint(_float_bits(float(value)))
        elif kind == "complex":
            value = complex(value)
            buffer += encode_uint(_float_bits(value.real)) + encode_uint(_float_bits(value.imag))
        elif kind == "string":
            if not isinstance(value, str):
                raise GobError(f"string: got {type(value).__name__}")
            raw = value.encode("utf-8", "surrogateescape")
            buffer += encode_uint(len(raw)) + raw
        elif kind == "bytes":
            if not isinstance(value, bytes | bytearray | memoryview):
                raise GobError(f"[]byte: got {type(value).__name__}")
            buffer += encode_uint(len(value)) + bytes(value)
        else:
            raise GobError(f"cannot encode {kind}")

    def _interface(self, buffer: bytearray, go_type: Interface, value: Any) -> None:
        if value is None:
            buffer += b"\x00"
            return
        if not isinstance(value, GoInterface):
            raise GobError(f"interface: expected GoInterface or None, got {type(value).__name__}")
        concrete = value.type
        if concrete is None and go_type.registry is not None:
            concrete = go_type.registry.get(value.name)
        if concrete is None or not value.name:
            raise GobError(f"type not registered for interface: {value.name!r}")
        name = value.name.encode("utf-8", "surrogateescape")
        buffer += encode_uint(len(name)) + name
        self._send_type_descriptor(self._writers[-1], buffer, concrete)
        buffer += encode_int(self._sent[concrete])
        # Definitions needed inside the concrete value go into this buffer,
        # each as a message of its own, before the value's own length.
        self._writers.append(buffer)
        data = bytearray()
        if isinstance(concrete, Struct):
            self._struct(data, concrete, value.value)
        else:
            data += b"\x00"
            self._value(data, concrete, value.value)
        self._writers.pop()
        self._write_message(buffer, data)
