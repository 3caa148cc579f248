"""The server's end of an SRPC connection, played by a unit test byte by byte.

:class:`ScriptedPeer` collects what the client sends and lets the test take it
in pieces and answer; :class:`PeerServer` queues each accepted connection's
peer for the test, and :func:`listening` serves one on a loopback port.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue, maybeDeferred
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.python.failure import Failure

HOST = "127.0.0.1"


class ScriptedPeer(Protocol):
    """The server's end of one connection, driven by the test."""

    def __init__(self, queue: DeferredQueue[Any]) -> None:
        self._queue = queue
        self.received = bytearray()
        self.lost: Deferred[None] = Deferred()
        self._waiter: Deferred[None] | None = None

    def connectionMade(self) -> None:
        self._queue.put(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._wake()

    def connectionLost(self, reason: Failure) -> None:
        self.lost.callback(None)
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    async def _more(self) -> None:
        if self.lost.called:
            raise AssertionError(f"connection lost; unread: {bytes(self.received)!r}")
        self._waiter = Deferred()
        await self._waiter

    async def take(self, count: int) -> bytes:
        """Exactly ``count`` bytes from the client."""
        while len(self.received) < count:
            await self._more()
        data = bytes(self.received[:count])
        del self.received[:count]
        return data

    async def take_until(self, end: bytes = b"\n") -> bytes:
        """Bytes up to and including ``end``."""
        while (index := self.received.find(end)) < 0:
            await self._more()
        return await self.take(index + len(end))

    def send(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


PeerT = TypeVar("PeerT", bound=ScriptedPeer)


class PeerServer(ServerFactory, Generic[PeerT]):
    """Makes a ``make_peer`` for every connection and queues it in :attr:`peers`."""

    def __init__(self, make_peer: Callable[[DeferredQueue[PeerT]], PeerT]) -> None:
        self.make_peer = make_peer
        self.peers: DeferredQueue[PeerT] = DeferredQueue()

    def buildProtocol(self, addr: Any) -> PeerT:
        return self.make_peer(self.peers)


@asynccontextmanager
async def listening(factory: ServerFactory) -> AsyncIterator[int]:
    """``factory`` listening on a free loopback port (yielded) until the block ends."""
    port = reactor.listenTCP(0, factory, interface=HOST)
    try:
        yield port.getHost().port
    finally:
        await maybeDeferred(port.stopListening)
