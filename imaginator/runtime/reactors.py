"""The reactor as the daemon's parts see it: Twisted's interfaces, combined.

A part names the facets of the reactor it uses: ``IReactorTime`` for a clock,
``IReactorFromThreads`` to run jobs in the thread pool (``deferToThreadPool``),
``IReactorTCP`` to listen or dial, and :class:`ProcessReactor` (in ``process.py``) for
children. Twisted's own functions take these interfaces, so a part that times
things *and* runs jobs in the pool needs a type that is both; the type checker
has no intersection types, hence the make-believe interfaces below (as
Twisted's own ``twisted.internet._IReactorCommon``). Nothing declares that it
provides them: the one real reactor is cast to :class:`IDaemonReactor` where a
program takes it from ``twisted.internet`` (whose stub types it as
``_IReactorCommon``, without the thread interfaces it has), and tests pass a
``twisted.internet.task.Clock`` or a fake, which nothing checks at run time.
"""

from __future__ import annotations

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFromThreads,
    IReactorPluggableNameResolver,
    IReactorProcess,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
)

__all__ = [
    "IDaemonReactor",
    "IReactorTimeAndTCP",
    "IReactorTimeAndThreads",
    "IReactorTimeTCPAndThreads",
]


class IReactorTimeAndThreads(IReactorTime, IReactorFromThreads):
    """A clock that pool threads can call back into: what a part needs that
    times things and runs its blocking work in the thread pool."""


class IReactorTimeAndTCP(IReactorTime, IReactorTCP, IReactorPluggableNameResolver):
    """A clock that dials host names: what a part needs that connects and
    times its connections on the same reactor (``HostnameEndpoint``, treq)."""


class IReactorTimeTCPAndThreads(IReactorTimeAndThreads, IReactorTimeAndTCP):
    """What fetching a document needs: files are read in the thread pool,
    HTTP(S) goes out through treq on this reactor, with its timeouts."""


class IDaemonReactor(
    IReactorTimeTCPAndThreads,
    IReactorThreads,
    IReactorCore,
    IReactorProcess,
):
    """Everything the daemon and its commands ask of the reactor (the real
    reactor has all of it): time, threads, start-up and shutdown, TCP,
    processes."""
