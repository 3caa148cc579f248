"""The SRPC connection pool's rules, with stand-in connections (the real
ones are exercised through the remote store in ``test_store_imageserver``)."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, succeed

from imaginator.srpc.framing import SrpcConnectionError, SrpcError
from imaginator.srpc.pool import PoolClosed, SrpcPool


class StandIn:
    """What the pool uses of an ``SrpcClient``."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.usable = True
        self.pings = 0
        self.ping_fails = False
        self.closed = False
        self.aborted: SrpcConnectionError | None = None

    async def ping(self, *, timeout: float) -> None:
        self.pings += 1
        if self.ping_fails:
            raise SrpcConnectionError("connection lost")

    def abort(self, error: SrpcConnectionError) -> None:
        self.aborted = error
        self.usable = False

    def close(self) -> Deferred[None]:
        self.closed = True
        self.usable = False
        return succeed(None)


def make_pool(size: int = 2) -> tuple[SrpcPool, list[StandIn]]:
    made: list[StandIn] = []

    async def dial() -> StandIn:
        made.append(StandIn(len(made)))
        return made[-1]

    return SrpcPool(dial, size=size), made  # type: ignore[arg-type]


@pytest_twisted.ensureDeferred
async def test_a_connection_is_reused_after_a_ping():
    pool, made = make_pool()

    async def number(client):
        return client.number

    assert await pool.run(number) == 0
    assert await pool.run(number) == 0
    assert (len(made), made[0].pings, pool.idle) == (1, 1, 1)


@pytest_twisted.ensureDeferred
async def test_a_dead_or_silent_idle_connection_is_replaced():
    pool, made = make_pool()

    async def number(client):
        return client.number

    await pool.run(number)
    made[0].ping_fails = True
    assert await pool.run(number) == 1
    assert made[0].closed
    made[1].usable = False  # lost while idle
    assert await pool.run(number) == 2
    assert made[1].pings == 0 and made[1].closed


@pytest_twisted.ensureDeferred
async def test_an_error_line_keeps_the_connection_a_failure_drops_it():
    pool, made = make_pool()

    async def refused(client):
        raise SrpcError("access to method denied")

    async def broken(client):
        client.usable = False
        raise SrpcConnectionError("connection lost")

    with pytest.raises(SrpcError):
        await pool.run(refused)
    assert pool.idle == 1 and not made[0].closed
    with pytest.raises(SrpcConnectionError):
        await pool.run(broken)
    assert pool.idle == 0 and made[0].closed


@pytest_twisted.ensureDeferred
async def test_at_most_size_connections_are_lent():
    pool, made = make_pool(size=2)
    gates = [Deferred() for _ in range(3)]
    started = []

    async def hold(index, client):
        started.append(index)
        await gates[index]
        return client.number

    runs = [Deferred.fromCoroutine(pool.run(lambda c, i=i: hold(i, c))) for i in range(3)]
    assert started == [0, 1] and len(made) == 2
    gates[0].callback(None)
    assert await runs[0] == 0
    assert started == [0, 1, 2]
    gates[1].callback(None)
    gates[2].callback(None)
    assert sorted([await runs[1], await runs[2]]) == [0, 1]
    assert len(made) == 2


@pytest_twisted.ensureDeferred
async def test_closing_aborts_lent_connections_and_refuses_more():
    pool, made = make_pool()
    gate = Deferred()

    async def hold(client):
        await gate
        return client.usable

    running = Deferred.fromCoroutine(pool.run(hold))
    await pool.close()
    assert isinstance(made[0].aborted, PoolClosed) and made[0].closed
    gate.callback(None)
    assert await running is False
    with pytest.raises(PoolClosed):
        await pool.run(hold)
    with pytest.raises(ValueError):
        SrpcPool(lambda: None, size=0)  # type: ignore[arg-type,return-value]
