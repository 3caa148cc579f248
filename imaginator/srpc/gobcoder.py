"""The GOB coder of SRPC (reference §1.3, §1.4): what Go clients speak by default.

Go's imageserver reads ``ObjectServer.AddObjects`` reliably only over GOB
(its JSON decoder reads ahead into the raw object bytes, reference §5.2), and
it cannot decode an ``image.Image`` from JSON at all (§7.2), so a remote image
store speaks GOB.

Messages are objects that carry their GOB schema (:class:`GobMessage`: the
classes of ``imaginator.store.imageserver_messages`` are); the caller says
which class it expects back (:class:`GobMessageType`), since GOB matches
fields by the receiver's type. Without a kind, a decoded value is GOB's
generic one (structs as dicts of the fields sent).

As Go does, every call gets a fresh encoder and decoder (type definitions are
sent again per call), while type ids are numbered once per connection: one
:class:`GobCoder` per connection.

The decoder takes whole GOB messages (a length, then that many bytes) off the
front of the connection's buffer and nothing else, so raw bytes that follow
a message (``GetObjects``) stay where the client reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, cast

from imaginator.goformats.gob import Decoder, Encoder, GobError, GoType, TypeIds
from imaginator.srpc.coder import INCOMPLETE
from imaginator.srpc.framing import INSECURE_GOB_PATH, TLS_GOB_PATH, MessageTooLarge


class GobMessage(Protocol):
    """A message the GOB coder can send: its Go type and its value."""

    @property
    def SCHEMA(self) -> GoType:
        """The message's Go type (a class attribute, read-only here)."""
        ...

    def to_gob(self) -> Mapping[str, Any]:
        """The value of ``SCHEMA`` (a dict of Go field names for a struct)."""
        ...


class GobMessageType(Protocol):
    """A class of messages the GOB coder can receive."""

    SCHEMA: GoType

    def from_gob(self, value: Any) -> Any:
        """The message made from the decoded value (a classmethod)."""
        ...


def message_frame_end(buffer: bytearray, max_message: int) -> int | None:
    """Where the GOB message at the front of ``buffer`` ends (its length
    prefix included), or ``None`` while it is incomplete.

    Raises :class:`MessageTooLarge` for a message announced longer than
    ``max_message`` bytes, ``GobError`` for a length that is not one.
    """
    if not buffer:
        return None
    first = buffer[0]
    if first < 0x80:
        size, body = first, 1
    else:
        count = 256 - first
        if count > 8:
            raise GobError(f"invalid message length: byte {first:#x}")
        if len(buffer) < 1 + count:
            return None
        size, body = int.from_bytes(buffer[1 : 1 + count], "big"), 1 + count
    if size == 0:
        raise GobError("empty message")
    if size > max_message:
        raise MessageTooLarge(f"message of {size} bytes, more than {max_message}")
    end = body + size
    return end if end <= len(buffer) else None


class GobEncoder:
    """One call's encoder: type definitions once, then the values."""

    def __init__(self, ids: TypeIds) -> None:
        self._encoder = Encoder(ids)

    def encode(self, message: GobMessage) -> bytes:
        schema = getattr(message, "SCHEMA", None)
        if schema is None:
            raise TypeError(f"not a GOB message: {type(message).__name__}")
        return self._encoder.encode(schema, message.to_gob())


class GobDecoder:
    """One call's decoder on the connection's buffer (see the module docstring).

    A value may span several messages (Go ends a message after the definition
    of a type first met inside an interface value): whole messages are moved
    to the GOB decoder until it has the value.
    """

    def __init__(self, max_message: int) -> None:
        self._max_message = max_message
        self._gob = Decoder(max_message_size=max_message)

    def decode(self, buffer: bytearray, kind: object | None) -> Any:
        schema = getattr(kind, "SCHEMA", None) if kind is not None else None
        while True:
            end = message_frame_end(buffer, self._max_message)
            if end is None:
                return INCOMPLETE
            self._gob.push(bytes(buffer[:end]))
            del buffer[:end]
            value = self._gob.next(schema)
            if value is None:
                if self._gob.buffered > self._max_message:
                    raise MessageTooLarge(f"value longer than {self._max_message} bytes")
                continue  # a type definition, or a value that goes on in the next message
            if kind is None:
                return value
            try:
                # A kind for this coder is a GobMessageType; one that is not
                # fails here with an AttributeError, reported as a GobError.
                return cast(GobMessageType, kind).from_gob(value)
            except (KeyError, TypeError, AttributeError) as exc:
                raise GobError(f"{getattr(kind, '__name__', kind)}: {exc}") from None

    def finish(self, buffer: bytearray) -> bool:
        return True  # GOB writes nothing after a message


class GobCoder:
    """The GOB coder (``/_go_TLS_SRPC_/``, ``/_goSRPC_/``); one per connection,
    numbering its types as one Go process would."""

    name = "GOB"
    tls_path = TLS_GOB_PATH
    insecure_path = INSECURE_GOB_PATH

    def __init__(self) -> None:
        self._ids = TypeIds()

    def new_encoder(self) -> GobEncoder:
        return GobEncoder(self._ids)

    def new_decoder(self, max_message: int) -> GobDecoder:
        return GobDecoder(max_message)
