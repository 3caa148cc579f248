"""Split recorded SRPC connections (GOB coder) into calls, for the GOB tests.

A recording is the bytes of one TCP connection in each direction
(``tests/data/gob/streams/<label>-<n>.c2s`` and ``.s2c``, see its README). The
framing is SRPC's (``CONNECT``, a method line, the server's status lines) with
GOB values in between, and raw object bytes in ``ObjectServer.AddObjects`` and
``GetObjects``. Go makes a new encoder and decoder for every call, so every
call's GOB starts with its own type definitions.
"""

from __future__ import annotations

import lzma
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imaginator.goformats.gob import Decoder

STREAMS = Path(__file__).resolve().parent.parent / "data" / "gob" / "streams"
CONNECTED = b"HTTP/1.0 200 Connected to Go SRPC\n\n"


def read_stream(name: str) -> bytes:
    """The bytes of a recorded stream file (``.xz``-compressed ones unpacked)."""
    path = STREAMS / name
    if path.exists():
        return path.read_bytes()
    return lzma.decompress((STREAMS / f"{name}.xz").read_bytes())


@dataclass
class Message:
    """One top-level GOB value of a call: its bytes (with the type definitions
    sent just before it), its plain decoding and its wire type id."""

    data: bytes
    value: Any
    type_id: int


@dataclass
class Call:
    method: str
    requests: list[Message] = field(default_factory=list)
    raw_sent: list[bytes] = field(default_factory=list)
    status: str = ""
    responses: list[Message] = field(default_factory=list)
    raw_received: bytes = b""
    #: The call's decoders, with the type definitions each direction sent.
    request_decoder: Decoder = field(default_factory=Decoder)
    response_decoder: Decoder = field(default_factory=Decoder)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def line(self) -> str:
        end = self.data.index(b"\n", self.pos)
        text = self.data[self.pos : end].decode()
        self.pos = end + 1
        return text

    def raw(self, count: int) -> bytes:
        data = self.data[self.pos : self.pos + count]
        assert len(data) == count, "recording ends inside raw data"
        self.pos += count
        return data

    def message(self, decoder: Decoder) -> Message:
        """The next GOB value: give the decoder the rest, take back what follows."""
        start = self.pos
        decoder.push(self.data[self.pos :])
        value = decoder.next()
        assert value is not None, "recording ends inside a GOB value"
        rest = decoder.take_buffered()
        self.pos = len(self.data) - len(rest)
        return Message(self.data[start : self.pos], value, decoder.last_type_id)


def split_calls(c2s: bytes, s2c: bytes) -> list[Call]:
    """The calls of one recorded connection, in order."""
    client, server = _Reader(c2s), _Reader(s2c)
    assert client.line().startswith("CONNECT /_goSRPC_/ HTTP/1.0") and client.line() == ""
    assert server.raw(len(CONNECTED)) == CONNECTED
    calls = []
    while not client.at_end():
        call = Call(client.line())
        calls.append(call)
        accept = server.line()
        if accept:
            call.status = accept
            continue
        sent, received = call.request_decoder, call.response_decoder
        if call.method == "ObjectServer.AddObjects":
            while True:
                request = client.message(sent)
                call.requests.append(request)
                if not request.value.get("Length"):
                    break
                call.raw_sent.append(client.raw(request.value["Length"]))
            for _ in call.raw_sent:
                call.responses.append(server.message(received))
        elif call.method == "ImageServer.ListDirectories":
            while True:
                response = server.message(received)
                call.responses.append(response)
                if not response.value.get("Name"):
                    break
        elif call.method == "ObjectServer.GetObjects":
            # A coder method: no status line, the response, then the objects.
            call.requests.append(client.message(sent))
            response = server.message(received)
            call.responses.append(response)
            if not response.value.get("ResponseString"):
                call.raw_received = server.raw(sum(response.value.get("ObjectSizes", [])))
        else:
            call.requests.append(client.message(sent))
            call.status = server.line()
            if not call.status:
                call.responses.append(server.message(received))
    assert server.at_end(), f"{len(s2c) - server.pos} bytes of server data left over"
    return calls


def recorded_calls(label: str) -> list[Call]:
    """The calls of ``<label>.c2s``/``.s2c`` (e.g. ``get-1``)."""
    return split_calls(read_stream(f"{label}.c2s"), read_stream(f"{label}.s2c"))
