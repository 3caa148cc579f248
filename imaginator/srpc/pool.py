"""A pool of SRPC connections to one server (reference §1.7: calls on one
connection run one at a time, so concurrent users need several).

:meth:`SrpcPool.run` lends a connection to one piece of work: an idle one if
there is a usable one, else a new one from ``dial``; at most ``size`` are
lent at once (more callers wait). After the work the connection goes back to
the idle list if it is still in step (an error line leaves it so); one that
failed is dropped, and the next user dials again, so a server that restarted
is reconnected to without anybody noticing.

An idle connection may have died without the reactor having seen it yet (a
server that vanished without closing, a middlebox that forgot it), so a
reused one is pinged first (one round trip); if the ping fails it is
replaced by a new one. Work is never repeated: a failure during the work is
the caller's to handle.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from twisted.internet.defer import DeferredSemaphore, gatherResults

from imaginator.srpc.client import SrpcClient
from imaginator.srpc.framing import SrpcConnectionError, SrpcError

T = TypeVar("T")

Dial = Callable[[], Awaitable[SrpcClient]]


class PoolClosed(SrpcConnectionError):
    """The pool was closed (the daemon is stopping)."""


class SrpcPool:
    """Up to ``size`` connections made by ``dial``; see the module docstring.
    ``ping_timeout`` bounds the check of a reused connection."""

    def __init__(self, dial: Dial, *, size: int = 4, ping_timeout: float = 10.0) -> None:
        if size < 1:
            raise ValueError(f"pool size must be at least 1, got {size}")
        self._dial = dial
        self._slots = DeferredSemaphore(size)
        self._ping_timeout = ping_timeout
        self._idle: list[SrpcClient] = []
        self._lent: set[SrpcClient] = set()
        self._closed = False
        #: Connections made so far.
        self.dialled = 0

    @property
    def idle(self) -> int:
        """Connections waiting in the pool."""
        return len(self._idle)

    async def run(self, work: Callable[[SrpcClient], Awaitable[T]]) -> T:
        """``work(client)`` on a connection of the pool (see the module docstring)."""
        await self._slots.acquire()
        try:
            client = await self._checkout()
            self._lent.add(client)
            try:
                return await work(client)
            finally:
                self._lent.discard(client)
                if client.usable and not self._closed:
                    self._idle.append(client)
                else:
                    client.close()
        finally:
            self._slots.release()

    async def close(self) -> None:
        """Close every connection, idle or lent (lent ones fail their call);
        later ``run`` calls fail with :class:`PoolClosed`."""
        self._closed = True
        clients = [*self._idle, *self._lent]
        self._idle.clear()
        for client in self._lent:
            client.abort(PoolClosed("connection pool closed"))
        await gatherResults([client.close() for client in clients], consumeErrors=True)

    async def _checkout(self) -> SrpcClient:
        while self._idle:
            client = self._idle.pop()
            if client.usable:
                try:
                    await client.ping(timeout=self._ping_timeout)
                    return client
                except SrpcError:
                    pass
            client.close()
        if self._closed:
            raise PoolClosed("connection pool closed")
        client = await self._dial()
        self.dialled += 1
        if self._closed:
            client.close()
            raise PoolClosed("connection pool closed")
        return client
