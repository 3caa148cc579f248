"""Cheap unit tests of ``rpc/service.py`` methods wired to a real AutoBuilder on a Clock."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred

from imaginator.autobuild import AutoBuilder
from imaginator.rpc.service import ExpirationLimits, ImaginatorService
from imaginator.scheduler import BuildResult
from imaginator.srpc.identity import CallAuth
from imaginator.srpc.server import CallError
from tests.support.fakes import FakeReactor, fired

NS = 1_000_000_000


class FakeCall:
    """What a handler reads of a call: the decoded request and who calls."""

    def __init__(self, request: Any) -> None:
        self.request = request
        self.auth = CallAuth("ops", frozenset(), True)


class FakeBuilder:
    def __init__(self) -> None:
        self.disabled_for: list[float] = []

    def disable_build_requests(self, duration: float) -> float | None:
        self.disabled_for.append(duration)
        return 1000.0 + duration if duration > 0 else None


def make(auto: AutoBuilder | None) -> tuple[ImaginatorService, FakeBuilder]:
    builder = FakeBuilder()
    service = ImaginatorService(
        builder=builder,  # type: ignore[arg-type]
        auto=auto,
        deps=None,
        clock=FakeReactor(),
        limits=ExpirationLimits(),
    )
    return service, builder


def call(coroutine: Any) -> Any:
    return fired(Deferred.fromCoroutine(coroutine))


def auto_builder(clock: FakeReactor, pending: list[Deferred[BuildResult]]) -> AutoBuilder:
    def build(stream: str, options: Any) -> Deferred[BuildResult]:
        d: Deferred[BuildResult] = Deferred()
        pending.append(d)
        return d

    return AutoBuilder(clock=clock, build=build, streams=lambda: ["a"], interval=3600)


def test_disable_auto_builds_is_capped_by_the_auto_builder():
    clock = FakeReactor()
    service, _builder = make(auto_builder(clock, []))
    ok = call(service.disable_auto_builds(FakeCall({"DisableFor": 3600 * NS})))
    assert ok["Error"] == "" and ok["DisabledUntil"].startswith("1970-01-01T01:00:00")
    refused = call(service.disable_auto_builds(FakeCall({"DisableFor": 5 * 3600 * NS})))
    assert refused["Error"] == "cannot disable auto building for more than: 4h0m0s"


def test_auto_build_methods_without_an_auto_builder():
    service, _builder = make(None)
    answer = call(service.disable_auto_builds(FakeCall({"DisableFor": NS})))
    assert answer["Error"] == "auto builds not configured"
    assert call(service.start_auto_builds(FakeCall({})))["Error"] == "auto builds not configured"


def test_start_auto_builds_busy_unless_waiting_to_start():
    clock = FakeReactor()
    pending: list[Deferred[BuildResult]] = []
    service, _builder = make(auto_builder(clock, pending))
    assert call(service.start_auto_builds(FakeCall({})))["Error"] == ""
    assert len(pending) == 1  # the cycle's first build runs
    assert call(service.start_auto_builds(FakeCall({})))["Error"] == "auto build busy"
    waiting = Deferred.fromCoroutine(
        service.start_auto_builds(FakeCall({"WaitToStart": True, "WaitForComplete": True}))
    )
    pending.pop(0).callback(BuildResult("a", "a/1", 0, 0, b""))
    assert len(pending) == 1  # the waiting request's cycle started after the first
    pending.pop(0).callback(BuildResult("a", "a/2", 0, 0, b""))
    assert fired(waiting) == {"Error": ""}


def test_disable_build_requests_passes_the_duration_in_seconds():
    service, builder = make(None)
    answer = call(service.disable_build_requests(FakeCall({"DisableFor": 30 * NS})))
    assert builder.disabled_for == [30.0] and answer["Error"] == ""
    with pytest.raises(CallError, match="cannot unmarshal string into Go struct field"):
        call(service.disable_build_requests(FakeCall({"DisableFor": "1h"})))
    assert builder.disabled_for == [30.0]
