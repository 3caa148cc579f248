"""How SRPC messages become bytes: the coder a client speaks (reference §1.4, §1.6).

A coder names the CONNECT paths that select it on the server and makes, for
each call, an encoder and a decoder: Go creates both afresh per call, and a
stateful coder (GOB sends a type's definition once per encoder) relies on it.

The decoder does not own the connection's bytes: the client hands it its
receive buffer and the decoder removes exactly one message from the front, or
nothing while the message is incomplete. So a method that mixes messages and
raw bytes (``ObjectServer.GetObjects``: a reply, then the objects' contents)
reads the raw bytes from the same buffer, right after the message.

:class:`JsonCoder` is Go's ``encoding/json`` coder; a GOB coder plugs in by
implementing the same three small protocols.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

from imaginator.goformats.gojson import decode_json, marshal
from imaginator.srpc.framing import (
    INSECURE_JSON_PATH,
    TLS_JSON_PATH,
    TRAILING_NEWLINE,
    JsonFramer,
    MessageTooLarge,
)


class _Incomplete:
    """The decoder's answer while the message at the front is not complete."""

    def __repr__(self) -> str:
        return "INCOMPLETE"


INCOMPLETE: Final = _Incomplete()


class MessageEncoder(Protocol):
    """One call's encoder."""

    def encode(self, message: Any) -> bytes:
        """The bytes that carry ``message`` (all of them: one write). A coder
        that needs a message's type (GOB) takes it from the message."""
        ...


class MessageDecoder(Protocol):
    """One call's decoder, fed the connection's receive buffer."""

    def decode(self, buffer: bytearray, kind: object | None) -> Any:
        """Remove one complete message from the front of ``buffer`` and return
        it, or return :data:`INCOMPLETE` and leave the bytes for the next try.

        ``kind`` is what the caller expects, for a coder that needs it (GOB:
        the message class with its schema); None asks for the coder's generic
        value. The JSON coder ignores it.

        Raises ``ValueError`` (e.g. ``JsonDecodeError``) for bytes that are
        not a message, :class:`~imaginator.srpc.framing.MessageTooLarge` for
        an incomplete message already longer than the limit.
        """
        ...

    def finish(self, buffer: bytearray) -> bool:
        """Remove what the peer's encoder writes after a message, before raw
        bytes or a line follow (JSON: the LF); False while that has not arrived."""
        ...


class Coder(Protocol):
    """A message format, as the client needs it."""

    @property
    def name(self) -> str:
        """For messages: ``JSON``, ``GOB``."""
        ...

    @property
    def tls_path(self) -> str:
        """The CONNECT path of a TLS connection speaking this coder."""
        ...

    @property
    def insecure_path(self) -> str:
        """The CONNECT path of a plain connection speaking this coder."""
        ...

    def new_encoder(self) -> MessageEncoder:
        """A fresh encoder for one call."""
        ...

    def new_decoder(self, max_message: int) -> MessageDecoder:
        """A fresh decoder for one call, refusing messages over ``max_message`` bytes."""
        ...


# ===================================================================== JSON


class JsonEncoder:
    """Go's ``json.Encoder``: each message compact, then one LF."""

    def encode(self, message: Any) -> bytes:
        return marshal(message) + b"\n"


class JsonDecoder:
    """Go's ``json.Decoder`` on a stream, without its read-ahead.

    Whitespace between values is skipped; after a value, one LF (blanks before
    it tolerated) is consumed now or, if it has not arrived yet, by
    :meth:`finish`.
    """

    def __init__(self, max_message: int) -> None:
        self._max_message = max_message
        self._framer = JsonFramer()
        self._owe_newline = False

    def decode(self, buffer: bytearray, kind: object | None = None) -> Any:
        end = self._framer.scan(buffer)
        if end is None:
            if self._framer.pending_size(buffer) > self._max_message:
                raise MessageTooLarge(f"message longer than {self._max_message} bytes")
            return INCOMPLETE
        raw = bytes(buffer[self._framer.start : end])
        del buffer[:end]
        self._framer.reset()
        self._owe_newline = True
        self.finish(buffer)
        return decode_json(raw)

    def finish(self, buffer: bytearray) -> bool:
        if not self._owe_newline:
            return True
        match = TRAILING_NEWLINE.match(buffer)
        if match is not None:
            del buffer[: match.end()]
        elif not buffer.strip(b" \t\r"):
            return False  # only blanks so far: the LF may still come
        self._owe_newline = False  # an LF, or other bytes without one
        return True


class JsonCoder:
    """The JSON coder (``/_SRPC_/TLS/JSON``, ``/_SRPC_/unsecured/JSON``)."""

    name = "JSON"
    tls_path = TLS_JSON_PATH
    insecure_path = INSECURE_JSON_PATH

    def new_encoder(self) -> JsonEncoder:
        return JsonEncoder()

    def new_decoder(self, max_message: int) -> JsonDecoder:
        return JsonDecoder(max_message)


JSON_CODER: Final = JsonCoder()
