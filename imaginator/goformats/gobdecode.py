"""The GOB decoder (see ``gob.py``): bytes in, complete values out.

Bytes are appended with ``push``/``feed``; a value is decoded only once every
message it spans is in the buffer, so a stream may be cut anywhere. Type
definitions are kept for the life of the decoder, as in Go; those received
while decoding a value that then turned out incomplete are kept aside and
taken on again when the value is retried.

Values decode by the *wire* types the stream defines; a schema (``gobtypes``)
makes the result typed by Go's rules: struct fields are matched by name,
fields the schema does not have are skipped, fields the stream does not send
get their zero value, and a wire type that cannot go into the local one is an
error. Hostile input gets a ``GobError``: every length is checked against the
bytes of its message before anything is allocated, messages are capped, and
nesting (including recursive types) is bounded.
"""

from __future__ import annotations

import builtins
import struct
from dataclasses import dataclass
from functools import partial
from typing import Any

from imaginator.goformats.gobtypes import (
    BASIC_BY_ID,
    BOOL_ID,
    BYTES_ID,
    COMPLEX_ID,
    FIRST_USER_ID,
    FLOAT_ID,
    INT_ID,
    INTERFACE_ID,
    STRING_ID,
    UINT_ID,
    Array,
    Basic,
    Field,
    GobError,
    GoInterface,
    GoType,
    Interface,
    Map,
    Marshaled,
    Opaque,
    Slice,
    Struct,
)

DEFAULT_MAX_MESSAGE = 256 << 20
DEFAULT_MAX_DEPTH = 100
_MAX_NAME = 1024
_WIRE_KINDS = ("array", "slice", "struct", "map", "GobEncoder", "BinaryMarshaler", "TextMarshaler")
_LAYOUTS = {
    "array": ("common", "int", "int"),
    "slice": ("common", "int"),
    "struct": ("common", "fields"),
    "map": ("common", "int", "int"),
}
_BASIC_NAMES = {
    BOOL_ID: "bool",
    INT_ID: "int",
    UINT_ID: "uint",
    FLOAT_ID: "float",
    BYTES_ID: "bytes",
    STRING_ID: "string",
    COMPLEX_ID: "complex",
    INTERFACE_ID: "interface",
}


@dataclass(frozen=True, slots=True)
class WireType:
    """A type definition received on a stream."""

    kind: str
    name: str
    id: int
    elem: int = 0
    key: int = 0
    length: int = 0
    fields: tuple[tuple[str, int], ...] = ()


class _NeedMore(Exception):
    """The value continues in a message that has not arrived yet."""


class _Cursor:
    """Reads one value from the buffer, message by message."""

    __slots__ = ("data", "decoder", "end", "pos")

    def __init__(self, decoder: Decoder, data: bytes | bytearray, pos: int, end: int) -> None:
        self.decoder = decoder
        self.data = data
        self.pos = pos
        self.end = end

    def uint(self) -> int:
        if self.pos >= self.end:
            raise GobError("truncated message: integer expected")
        first = self.data[self.pos]
        if first < 0x80:
            self.pos += 1
            return first
        count = 256 - first
        if count > 8:
            raise GobError(f"invalid unsigned integer: length byte {first:#x}")
        start = self.pos + 1
        if start + count > self.end:
            raise GobError("truncated message: integer runs past the end")
        self.pos = start + count
        return int.from_bytes(self.data[start : self.pos], "big")

    def int(self) -> int:
        value = self.uint()
        return ~(value >> 1) if value & 1 else value >> 1

    # ``int`` below this point is the method above: the builtin is spelled out.
    def length(self, what: str, *, spanning: bool = False) -> builtins.int:
        """A count of items that each take at least one byte of this message;
        with ``spanning`` (the elements of a map or slice), of the decoder's
        limit instead: elements holding interface values go on in the next
        message when a concrete type is defined on the way (an image's inode
        table does), and the elements beyond this message fail cleanly if
        they are not there."""
        count = self.uint()
        if spanning:
            if count > self.decoder.max_message_size:
                raise GobError(
                    f"{what} length {count} exceeds the limit of {self.decoder.max_message_size}"
                )
        elif count > self.end - self.pos:
            raise GobError(f"{what} length {count} exceeds the {self.end - self.pos} bytes left")
        return count

    def take(self, count: builtins.int) -> bytes:
        data = bytes(self.data[self.pos : self.pos + count])
        self.pos += count
        return data

    def next_message(self) -> None:
        """Move to the message that starts where this one ends."""
        if self.pos != self.end:
            raise GobError("extra data in message")
        frame = self.decoder._frame(self.end)
        if frame is None:
            raise _NeedMore
        self.pos, self.end = frame


def _opaque_bytes(value: Any) -> bytes:
    if not isinstance(value, Opaque):
        raise GobError(f"expected Opaque, got {type(value).__name__}")
    return value.data


def _never_zero(_value: Any) -> bool:
    return False


def _float(bits: int) -> float:
    return struct.unpack("<d", bits.to_bytes(8, "big"))[0]


class Decoder:
    """Decodes the values of one GOB stream (one direction of a connection).

    ``feed(data)`` adds bytes and returns every value now complete;
    ``push`` + ``next`` take one value at a time, so that raw bytes following a
    message can be taken with ``take_buffered`` before they are parsed as GOB.
    ``schema`` (per call or for the decoder) types the values; without one
    they come out as the wire describes them (structs as dicts of the fields
    sent, interfaces as ``GoInterface``, marshaled types as ``Opaque``).
    After a ``GobError`` the stream is out of step and every later call fails.
    """

    def __init__(
        self,
        schema: GoType | None = None,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        self.schema = schema
        self.max_message_size = max_message_size
        self.max_depth = max_depth
        self.types: dict[int, WireType] = {}
        self._staged: dict[int, WireType] = {}
        self._buffer = bytearray()
        self._error: GobError | None = None
        self._schemas: dict[int, GoType] = {}
        #: The type id of the last value returned (``schema_of`` describes it).
        self.last_type_id = 0

    # -- buffer

    def push(self, data: bytes) -> None:
        """Append bytes received on the stream."""
        self._buffer += data

    def feed(self, data: bytes, schema: GoType | None = None) -> list[Any]:
        """Append ``data`` and decode every complete value."""
        self.push(data)
        values = []
        while (value := self.next(schema)) is not None:
            values.append(value)
        return values

    def take_buffered(self, limit: int | None = None) -> bytes:
        """Remove and return up to ``limit`` buffered bytes not yet decoded
        (all of them by default): raw data that follows a message."""
        if self._staged:
            raise GobError("a value is half decoded: its bytes cannot be taken")
        count = len(self._buffer) if limit is None else min(limit, len(self._buffer))
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    @property
    def buffered(self) -> int:
        """How many bytes are waiting (part of a message, or raw data)."""
        return len(self._buffer)

    def _frame(self, start: int) -> tuple[int, int] | None:
        """``(first byte, end)`` of the message whose length starts at ``start``,
        or ``None`` while it is incomplete."""
        buffer = self._buffer
        if start >= len(buffer):
            return None
        first = buffer[start]
        if first < 0x80:
            size, body = first, start + 1
        else:
            count = 256 - first
            if count > 8:
                raise GobError(f"invalid message length: byte {first:#x}")
            if start + 1 + count > len(buffer):
                return None
            size, body = (
                int.from_bytes(buffer[start + 1 : start + 1 + count], "big"),
                start + 1 + count,
            )
        if size > self.max_message_size:
            raise GobError(f"message of {size} bytes exceeds the limit of {self.max_message_size}")
        if size == 0:
            raise GobError("empty message")
        if body + size > len(buffer):
            return None
        return body, body + size

    # -- values

    def next(self, schema: GoType | None = None) -> Any:
        """The next complete value, or ``None`` until more bytes arrive."""
        if self._error is not None:
            raise self._error
        try:
            return self._next(schema if schema is not None else self.schema)
        except GobError as exc:
            self._error = exc
            raise
        except RecursionError:
            self._error = GobError("value nested too deeply")
            raise self._error from None

    def _next(self, schema: GoType | None) -> Any:
        while True:
            frame = self._frame(0)
            if frame is None:
                return None
            cursor = _Cursor(self, self._buffer, *frame)
            self._staged = {}
            type_id = cursor.int()
            if type_id < 0:
                self._receive_type(cursor, -type_id)
                if cursor.pos != cursor.end:
                    raise GobError("extra data after a type definition")
                self._commit(cursor.end)
                continue
            try:
                value = self._top(cursor, type_id, schema)
            except _NeedMore:
                self._staged = {}
                return None
            if cursor.pos != cursor.end:
                raise GobError(f"{cursor.end - cursor.pos} bytes of extra data after a value")
            self._commit(cursor.end)
            self.last_type_id = type_id
            return value

    def _commit(self, end: int) -> None:
        self.types.update(self._staged)
        self._staged = {}
        del self._buffer[:end]

    def _top(self, cursor: _Cursor, type_id: int, local: GoType | None, depth: int = 0) -> Any:
        """A top-level value or an interface's concrete value: a struct, or
        any other type as a "singleton" (a zero field delta, then the value)."""
        if type_id <= 0:
            raise GobError(f"invalid type id {type_id}")
        wire = self._wire(type_id)
        if wire is not None and wire.kind == "struct":
            if isinstance(local, Struct) and local.fields and wire.fields:
                names = {name for name, _ in wire.fields}
                if not any(field.name in names for field in local.fields):
                    raise GobError(
                        f"type mismatch: no fields matched compiling decoder for {local.name}"
                    )
            return self._decode(cursor, type_id, local, depth)
        if cursor.uint() != 0:
            raise GobError("corrupted data: non-zero delta for singleton")
        return self._decode(cursor, type_id, local, depth)

    def schema_of(self, type_id: int) -> GoType:
        """A schema built from the stream's own definitions of ``type_id``: with
        it, a value decoded without a schema encodes to the same bytes (our
        ``Encoder`` with these ids reproduces what the sender wrote)."""
        if type_id in self._schemas:
            return self._schemas[type_id]
        if type_id in _BASIC_NAMES:
            return BASIC_BY_ID.get(type_id) or Interface()
        wire = self._wire(type_id)
        assert wire is not None
        schema: GoType
        if wire.kind == "struct":
            schema = Struct(wire.name)
            self._schemas[type_id] = schema  # before the fields: types may recurse
            schema.define([Field(name, self.schema_of(field_id)) for name, field_id in wire.fields])
        elif wire.kind == "array":
            schema = Array(self.schema_of(wire.elem), wire.length, wire.name)
        elif wire.kind == "slice":
            schema = Slice(self.schema_of(wire.elem), wire.name)
        elif wire.kind == "map":
            schema = Map(self.schema_of(wire.key), self.schema_of(wire.elem), wire.name)
        else:
            schema = Marshaled(
                wire.name,
                _opaque_bytes,
                partial(Opaque, wire.name),
                _never_zero,
                kind=wire.kind,
            )
        self._schemas[type_id] = schema
        return schema

    def _wire(self, type_id: int) -> WireType | None:
        """The definition of a user type; ``None`` for a predefined one."""
        if type_id in _BASIC_NAMES:
            return None
        wire = self.types.get(type_id) or self._staged.get(type_id)
        if wire is None:
            raise GobError(f"unknown type id {type_id}")
        return wire

    def _describe(self, type_id: int) -> str:
        if type_id in _BASIC_NAMES:
            return _BASIC_NAMES[type_id]
        wire = self.types.get(type_id) or self._staged.get(type_id)
        return f"{wire.kind} {wire.name}" if wire else f"type {type_id}"

    def _mismatch(self, type_id: int, local: GoType) -> GobError:
        return GobError(f"type mismatch: cannot decode {self._describe(type_id)} into {local!r}")

    # -- type definitions

    def _receive_type(self, cursor: _Cursor, type_id: int) -> None:
        if type_id < FIRST_USER_ID or type_id in self.types or type_id in self._staged:
            raise GobError(f"duplicate or reserved type id {type_id} received")
        wire = None
        number = -1
        # wireType: one pointer field per kind, exactly one of them set.
        while (delta := cursor.uint()) != 0:
            number += delta
            if number >= len(_WIRE_KINDS) or wire is not None:
                raise GobError(f"type {type_id}: malformed definition")
            wire = self._definition(cursor, _WIRE_KINDS[number], type_id)
        if wire is None:
            raise GobError(f"type {type_id}: empty definition")
        self._staged[type_id] = wire

    def _definition(self, cursor: _Cursor, kind: str, type_id: int) -> WireType:
        layout = _LAYOUTS.get(kind, ("common",))
        values = self._plain_struct(cursor, layout)
        name, common_id = values.get(0, ("", 0))
        if common_id != type_id:
            raise GobError(f"type {type_id}: its definition names id {common_id}")
        first, second = values.get(1, 0), values.get(2, 0)
        if kind == "struct":
            return WireType(kind, name, type_id, fields=tuple(first or ()))
        if kind in ("array", "slice", "map") and (first <= 0 or (kind != "slice" and second < 0)):
            raise GobError(f"type {type_id}: bad {kind} definition")
        if kind == "map" and second <= 0:
            raise GobError(f"type {type_id}: bad map definition")
        if kind == "array":
            return WireType(kind, name, type_id, elem=first, length=second)
        if kind == "slice":
            return WireType(kind, name, type_id, elem=first)
        if kind == "map":
            return WireType(kind, name, type_id, key=first, elem=second)
        return WireType(kind, name, type_id)

    def _plain_struct(self, cursor: _Cursor, layout: tuple[str, ...]) -> dict[int, Any]:
        """One struct of the type-definition machinery, field number to value."""
        found: dict[int, Any] = {}
        number = -1
        while (delta := cursor.uint()) != 0:
            number += delta
            if number >= len(layout):
                raise GobError(f"type definition: field number {number} out of range")
            shape = layout[number]
            if shape == "string":
                found[number] = cursor.take(cursor.length("name")).decode(
                    "utf-8", "surrogateescape"
                )
            elif shape == "int":
                found[number] = cursor.int()
            elif shape == "common":
                common = self._plain_struct(cursor, ("string", "int"))
                found[number] = (common.get(0, ""), common.get(1, 0))
            else:  # the fields of a struct: []fieldType{Name, Id}
                fields = []
                for _ in range(cursor.length("field list")):
                    field = self._plain_struct(cursor, ("string", "int"))
                    fields.append((field.get(0, ""), field.get(1, 0)))
                found[number] = fields
        return found

    # -- values

    def _decode(
        self, c: _Cursor, type_id: int, local: GoType | None, depth: int, skip: bool = False
    ) -> Any:
        if depth > self.max_depth:
            raise GobError(f"value nested more than {self.max_depth} deep")
        if type_id in _BASIC_NAMES:
            return self._basic(c, type_id, local, depth, skip)
        wire = self._wire(type_id)
        assert wire is not None
        if wire.kind == "struct":
            return self._struct(c, wire, local, depth, skip)
        if wire.kind in ("slice", "array"):
            return self._sequence(c, wire, local, depth, skip)
        if wire.kind == "map":
            if local is not None and not isinstance(local, Map):
                raise self._mismatch(type_id, local)
            result = {}
            for _ in range(c.length("map", spanning=True)):
                key = self._decode(c, wire.key, local.key if local else None, depth + 1, skip)
                value = self._decode(c, wire.elem, local.elem if local else None, depth + 1, skip)
                try:
                    result[key] = value
                except TypeError:
                    raise GobError(f"map {wire.name}: unhashable key") from None
            return result
        # GobEncoder, BinaryMarshaler, TextMarshaler: the type's own bytes.
        if local is not None and not (isinstance(local, Marshaled) and local.kind == wire.kind):
            raise self._mismatch(type_id, local)
        data = c.take(c.length(wire.name or "marshaled value"))
        if local is None:
            return Opaque(wire.name, data)
        try:
            return local.decode(data)
        except GobError:
            raise
        except Exception as exc:  # a marshaler's own complaint
            raise GobError(f"{wire.name}: {exc}") from exc

    def _basic(self, c: _Cursor, type_id: int, local: GoType | None, depth: int, skip: bool) -> Any:
        if local is not None:
            if type_id == INTERFACE_ID:
                if not isinstance(local, Interface):
                    raise self._mismatch(type_id, local)
            elif not isinstance(local, Basic) or local.wire_id != type_id:
                raise self._mismatch(type_id, local)
        if type_id == BOOL_ID:
            return c.uint() != 0
        if type_id == INT_ID:
            value = c.int()
            return local.check_range(value) if isinstance(local, Basic) else value
        if type_id == UINT_ID:
            value = c.uint()
            return local.check_range(value) if isinstance(local, Basic) else value
        if type_id == FLOAT_ID:
            return _float(c.uint())
        if type_id == COMPLEX_ID:
            return complex(_float(c.uint()), _float(c.uint()))
        if type_id == BYTES_ID:
            return c.take(c.length("[]byte"))
        if type_id == STRING_ID:
            return c.take(c.length("string")).decode("utf-8", "surrogateescape")
        return self._interface(c, local if isinstance(local, Interface) else None, depth, skip)

    def _interface(self, c: _Cursor, local: Interface | None, depth: int, skip: bool) -> Any:
        size = c.uint()
        if size > _MAX_NAME or size > c.end - c.pos:
            raise GobError(f"invalid interface type name length {size}")
        if size == 0:
            return None
        name = c.take(size).decode("utf-8", "surrogateescape")
        concrete = None
        if local is not None and local.registry is not None and not skip:
            concrete = local.registry.get(name)
            if concrete is None:
                raise GobError(f"name not registered for interface: {name!r}")
        type_id = self._type_sequence(c)
        count = c.uint()  # the value's length: Go reads past it, and so do we
        if skip:
            if count > c.end - c.pos:
                raise GobError(f"bad interface value length: {count}")
            c.pos += count
            return None
        value = self._top(c, type_id, concrete, depth + 1)
        if concrete is None:
            concrete = self.schema_of(type_id)
        return GoInterface(name, value, concrete)

    def _type_sequence(self, c: _Cursor) -> int:
        """An interface's concrete type id, after any definitions it needs; the
        value may go on in the next message (see the module docstring)."""
        while True:
            if c.pos == c.end:
                c.next_message()
            type_id = c.int()
            if type_id >= 0:
                return type_id
            self._receive_type(c, -type_id)
            if c.pos < c.end:
                c.uint()  # the length of the delimited item that follows

    def _struct(
        self, c: _Cursor, wire: WireType, local: GoType | None, depth: int, skip: bool
    ) -> Any:
        if local is not None and not isinstance(local, Struct):
            raise self._mismatch(wire.id, local)
        result = local.zero() if local is not None else {}
        by_name = local.by_name if local is not None else None
        number = -1
        while (delta := c.uint()) != 0:
            number += delta
            if number >= len(wire.fields):
                raise GobError(f"{wire.name}: field number {number} out of range")
            name, field_id = wire.fields[number]
            if by_name is None:
                result[name] = self._decode(c, field_id, None, depth + 1, skip)
                continue
            field = by_name.get(name)
            if field is None:
                self._decode(c, field_id, None, depth + 1, True)
                continue
            try:
                result[name] = self._decode(c, field_id, field.type, depth + 1)
            except GobError as exc:
                if str(exc).startswith(f"{wire.name}."):
                    raise
                raise GobError(f"{wire.name}.{name}: {exc}") from None
        return result

    def _sequence(
        self, c: _Cursor, wire: WireType, local: GoType | None, depth: int, skip: bool
    ) -> Any:
        if wire.kind == "array":
            if local is not None and not (isinstance(local, Array) and local.length == wire.length):
                raise self._mismatch(wire.id, local)
            count = c.uint()
            if count != wire.length:
                raise GobError(f"length mismatch in decodeArray: {count} for [{wire.length}]")
            if count > c.end - c.pos:
                raise GobError(f"array length {count} exceeds the {c.end - c.pos} bytes left")
            if isinstance(local, Array) and local.of_bytes:
                if wire.elem != UINT_ID:
                    raise self._mismatch(wire.id, local)
                return self._bytes_array(c, count)
        else:
            if local is not None and not isinstance(local, Slice):
                raise self._mismatch(wire.id, local)
            count = c.length("slice", spanning=True)
        elem = local.elem if isinstance(local, Slice | Array) else None
        return [self._decode(c, wire.elem, elem, depth + 1, skip) for _ in range(count)]

    @staticmethod
    def _bytes_array(c: _Cursor, count: int) -> bytes:
        """``[N]byte``: N unsigned integers below 256 (the common hash case, fast)."""
        out = bytearray(count)
        data, pos, end = c.data, c.pos, c.end
        for index in range(count):
            if pos >= end:
                raise GobError("truncated message in byte array")
            byte = data[pos]
            if byte < 0x80:
                out[index] = byte
                pos += 1
            elif byte == 0xFF and pos + 1 < end:
                out[index] = data[pos + 1]
                pos += 2
            else:
                c.pos = pos
                value = c.uint()
                if value > 0xFF:
                    raise GobError(f"value {value} out of range for a byte")
                out[index] = value
                pos = c.pos
        c.pos = pos
        return bytes(out)
