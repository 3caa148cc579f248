"""``BuildEnv.images`` and ``objects``: the stores a build reaches through its
environment, and one clear error for a build that has none (builder-tool's
process-manifest mode stores nothing)."""

from __future__ import annotations

import pytest

from imaginator.pipeline.pack import BuildEnv, BuildError
from imaginator.runtime.buildlog import BuildLog
from imaginator.runtime.process import ProcessRunner
from tests.support.fakes import FakeReactor, SyncThreadPool


def _env(store: object | None, local_store: object | None) -> BuildEnv:
    reactor = FakeReactor()
    return BuildEnv(
        reactor=reactor,
        threadpool=SyncThreadPool(),
        runner=ProcessRunner(reactor),
        store=store,
        local_store=local_store,
        log=BuildLog(),
    )


def test_images_and_objects_are_the_stores_given() -> None:
    store, local_store = object(), object()
    env = _env(store, local_store)
    assert env.images is store
    assert env.objects is local_store


def test_a_build_without_stores_fails_with_a_build_error() -> None:
    env = _env(None, None)
    with pytest.raises(BuildError, match=r"^no image store$"):
        _ = env.images
    with pytest.raises(BuildError, match=r"^no image store$"):
        _ = env.objects
