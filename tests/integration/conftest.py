"""Fixtures shared by the scanner and unpacker tests: a thread pool and a store."""

from __future__ import annotations

import pytest
from twisted.python.threadpool import ThreadPool

from imaginator.store.local import LocalImageStore


@pytest.fixture
def threadpool():
    pool = ThreadPool(minthreads=2, maxthreads=4, name="test")
    pool.start()
    yield pool
    pool.stop()


@pytest.fixture
def store(tmp_path):
    return LocalImageStore(str(tmp_path / "store"))
