"""Fixtures shared by the integration tests: a thread pool, a store, the Go imageserver."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_twisted
from twisted.python.threadpool import ThreadPool

from imaginator.store.local import LocalImageStore
from tests.support.imageserver import GoImageserver, peers


@pytest.fixture
def threadpool():
    pool = ThreadPool(minthreads=2, maxthreads=4, name="test")
    pool.start()
    yield pool
    pool.stop()


@pytest.fixture
def store(tmp_path):
    return LocalImageStore(str(tmp_path / "store"))


@pytest.fixture
def go_imageserver_peer():
    """Skip (or fail under ``IMAGINATOR_REQUIRE_PEERS=1``) without the Go imageserver.

    A synchronous fixture on purpose: an asynchronous (pytest-twisted) fixture
    that skips leaves a finalizer behind, and pytest then errors on the next
    test that uses it instead of skipping that test too."""
    return peers("imageserver")


@pytest_twisted.async_yield_fixture
async def imageserver(go_imageserver_peer) -> AsyncIterator[GoImageserver]:
    """The Go imageserver started for one test, on its own port and directories."""
    server = GoImageserver()
    try:
        await server.start()
        yield server
    finally:
        await server.stop()
        server.cleanup()
