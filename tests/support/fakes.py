"""The fakes shared by unit tests: a reactor, a thread pool, and ``fired(d)``.

Fakes stand in only for what a unit test of logic cannot run for real; the
same paths have real integration tests (real processes, real threads).

- :class:`FakeReactor`: a ``Clock`` that takes thread-pool results
  (``callFromThread`` runs at once) and records ``spawnProcess`` calls; with
  expectations (:meth:`FakeReactor.expect`) it answers spawns itself and
  refuses a spawn nobody expected.
- :class:`SyncThreadPool`: runs "thread" work in the calling thread, at once
  (``auto=True``) or when the test says so (:meth:`SyncThreadPool.run_all`).
- :func:`fired`: the result of a Deferred that must have fired already.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure

__all__ = [
    "PID",
    "Expectation",
    "FakeReactor",
    "FakeTransport",
    "SyncThreadPool",
    "exit_reason",
    "fired",
    "has_fired",
]


def fired(d: Deferred[Any]) -> Any:
    """The result of ``d``, which must have fired; a failure is raised here.

    The result stays in ``d`` (a later callback still gets it).
    """
    results: list[Any] = []

    def keep(result: Any) -> Any:
        results.append(result)
        return result

    d.addBoth(keep)
    assert results, "Deferred has not fired"
    result = results[0]
    if isinstance(result, Failure):
        d.addErrback(lambda _failure: None)  # raised here: not also "unhandled"
        result.raiseException()
    return result


def has_fired(d: Deferred[Any]) -> bool:
    """Whether ``d`` has a result now (``d.called`` is also true while it
    waits on another Deferred)."""
    seen: list[bool] = []

    def keep(result: Any) -> Any:
        seen.append(True)
        return result

    d.addBoth(keep)
    return bool(seen)


class SyncThreadPool:
    """Stands in for ``ThreadPool`` under ``deferToThreadPool``.

    With ``auto`` (the default) work runs at once in the calling thread;
    otherwise it queues until :meth:`step` or :meth:`run_all`. ``calls``
    counts the jobs handed over.
    """

    def __init__(self, auto: bool = True) -> None:
        self.auto = auto
        self.queue: list[tuple[Callable[[bool, Any], None], Callable[..., Any], Any, Any]] = []
        self.calls = 0

    def callInThreadWithCallback(
        self, on_result: Callable[[bool, Any], None], f: Callable[..., Any], *a: Any, **kw: Any
    ) -> None:
        self.calls += 1
        self.queue.append((on_result, f, a, kw))
        # A job queued by a job already running here runs after it, not inside it.
        if self.auto and len(self.queue) == 1:
            self.run_all()

    def step(self) -> None:
        """Run the oldest queued job and deliver its result."""
        on_result, f, a, kw = self.queue[0]
        try:
            result = f(*a, **kw)
        except BaseException:
            del self.queue[0]
            on_result(False, Failure())
            return
        del self.queue[0]
        on_result(True, result)

    def run_all(self) -> None:
        while self.queue:
            self.step()


class FakeTransport:
    """Stands in for Twisted's process transport."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.stdin: list[bytes] = []
        self.stdin_closed = False
        self.lost = False

    def write(self, data: bytes) -> None:
        self.stdin.append(data)

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def loseConnection(self) -> None:
        self.lost = True


def exit_reason(status: int) -> Failure:
    """The ``processEnded`` reason for wait status ``status``."""
    if status == 0:
        return Failure(ProcessDone(status))
    if os.WIFEXITED(status):
        return Failure(ProcessTerminated(os.WEXITSTATUS(status), None, status))
    return Failure(ProcessTerminated(None, os.WTERMSIG(status), status))


@dataclass
class Expectation:
    """A spawn the test expects: ``argv`` starts with ``prefix`` (after any
    wrapper such as ``setsid``); the child writes ``stdout``/``stderr`` and
    exits with wait status ``status``."""

    prefix: tuple[str, ...]
    stdout: bytes = b""
    stderr: bytes = b""
    status: int = 0
    stdin: list[bytes] = field(default_factory=list)

    def matches(self, args: Sequence[str]) -> bool:
        n = len(self.prefix)
        return any(tuple(args[i : i + n]) == self.prefix for i in range(len(args) - n + 1))


PID = 4242


class FakeReactor(Clock):
    """A ``Clock`` that also takes thread-pool results and records spawns.

    Without expectations every spawn is recorded in ``spawned`` and the test
    drives the child through the protocol. Once :meth:`expect` was called,
    each spawn must match the oldest unmet expectation, which answers it (its
    output, then its exit); any other spawn fails the test.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[dict[str, Any]] = []
        self.expectations: list[Expectation] | None = None

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)

    def expect(self, *prefix: str, stdout: bytes = b"", stderr: bytes = b"", status: int = 0):
        """Expect one more spawn whose argv contains ``prefix``; returns the expectation."""
        expectation = Expectation(tuple(prefix), stdout, stderr, status)
        if self.expectations is None:
            self.expectations = []
        self.expectations.append(expectation)
        return expectation

    def assert_all_spawned(self) -> None:
        left = [e.prefix for e in self.expectations or ()]
        assert left == [], f"expected spawns that never happened: {left}"

    def spawnProcess(
        self,
        processProtocol: ProcessProtocol,
        executable: str,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        path: str | None = None,
        **_kwargs: Any,
    ) -> FakeTransport:
        transport = FakeTransport(PID + len(self.spawned))
        self.spawned.append(
            dict(
                protocol=processProtocol,
                executable=executable,
                args=list(args),
                env=env,
                path=path,
                transport=transport,
            )
        )
        expectation = None
        if self.expectations is not None:
            assert self.expectations, f"unexpected spawn: {list(args)}"
            expectation = self.expectations[0]
            assert expectation.matches(args), (
                f"expected a spawn of {list(expectation.prefix)}, got {list(args)}"
            )
            del self.expectations[0]
        processProtocol.makeConnection(transport)
        if expectation is not None:
            self.callLater(0, self._answer, processProtocol, expectation, transport)
        return transport

    def _answer(
        self, protocol: ProcessProtocol, expectation: Expectation, transport: FakeTransport
    ) -> None:
        expectation.stdin = list(transport.stdin)
        if expectation.stdout:
            protocol.childDataReceived(1, expectation.stdout)
        if expectation.stderr:
            protocol.childDataReceived(2, expectation.stderr)
        reason = exit_reason(expectation.status)
        protocol.processExited(reason)
        protocol.childConnectionLost(1)
        protocol.childConnectionLost(2)
        protocol.processEnded(reason)
