"""The transport of a connected stream protocol, typed by what the daemon uses of it.

Twisted types ``Protocol.transport`` as an optional ``ITransport``: write, close
and addresses. Every transport a connection of the daemon runs on (TCP, and the
TLS layer over it) also aborts, takes a producer and is one itself; a TLS
transport hands out its ``OpenSSL`` connection. :func:`stream_transport` gives a
connected protocol's transport with that type, so that one place says it
instead of a ``type: ignore`` at every call.
"""

from __future__ import annotations

from typing import Protocol, cast

from OpenSSL import SSL
from twisted.internet.interfaces import IAddress, IPullProducer, IPushProducer, ITransport

__all__ = [
    "NotConnected",
    "StreamTransport",
    "TlsHandleTransport",
    "stream_transport",
    "tls_transport",
]


class StreamTransport(Protocol):
    """A TCP or TLS transport: ``ITransport`` with aborting and flow control."""

    def write(self, data: bytes, /) -> None: ...

    def loseConnection(self) -> None: ...

    def abortConnection(self) -> None: ...

    def getPeer(self) -> IAddress: ...

    def registerProducer(
        self, producer: IPushProducer | IPullProducer, streaming: bool, /
    ) -> None: ...

    def unregisterProducer(self) -> None: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...


class TlsHandleTransport(StreamTransport, Protocol):
    """A TLS transport (``TLSMemoryBIOProtocol``): its handle is the TLS connection."""

    def getHandle(self) -> SSL.Connection: ...


class NotConnected(RuntimeError):
    """A protocol's transport was asked for before it connected."""


class _Connected(Protocol):
    transport: ITransport | None


def stream_transport(protocol: _Connected) -> StreamTransport:
    """``protocol``'s transport, which must be connected (else :class:`NotConnected`).

    The cast says what ``ITransport`` does not: the daemon's connections run on
    TCP or TLS transports, which have all of :class:`StreamTransport`.
    """
    transport = protocol.transport
    if transport is None:
        raise NotConnected(f"{type(protocol).__name__} is not connected")
    return cast(StreamTransport, transport)


def tls_transport(protocol: _Connected) -> TlsHandleTransport:
    """``protocol``'s transport, which must be a TLS layer (a protocol that
    ``TLSMemoryBIOFactory`` wraps: it is called only on TLS handshakes)."""
    return cast(TlsHandleTransport, stream_transport(protocol))
