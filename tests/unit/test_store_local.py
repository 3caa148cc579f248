"""The embedded image store: layout, atomicity, naming and queries."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time

import pytest
import pytest_twisted
from twisted.python.threadpool import ThreadPool

from imaginator.image.model import (
    Annotation,
    DirectoryInode,
    FileSystem,
    Image,
    RegularInode,
    dumps_image,
)
from imaginator.store import files as files_module
from imaginator.store import objects as objects_module
from imaginator.store import records as records_module
from imaginator.store.base import (
    HashMismatchError,
    ImageExistsError,
    ImageNotFoundError,
    ImageStore,
    InvalidNameError,
    MissingObjectError,
    StoreError,
    Transferred,
)
from imaginator.store.local import AsyncImageStore, LocalImageStore

NAME = "apps/hello/2026-11-27:10:53:19"


@pytest.fixture(params=["unnamed", "named"])
def store(tmp_path, request):
    """A store writing O_TMPFILE files (where possible) or named temp files."""
    store = LocalImageStore(str(tmp_path / "store"))
    store.temp.use_tmpfile = store.temp.use_tmpfile and request.param == "unnamed"
    return store


def image_with(data: list[bytes], **fields) -> Image:
    """An image whose root holds one regular file per item of ``data``."""
    table = {}
    root = DirectoryInode([], 0o40755, 0, 0)
    for n, content in enumerate(data, start=2):
        digest = hashlib.sha512(content).digest() if content else bytes(64)
        table[n] = RegularInode(0o100644, 0, 0, 1, 2, len(content), digest)
        root.entries.append((f"f{n}", n))
    fs = FileSystem(table, root)
    fs.recompute_totals()
    return Image(file_system=fs, **fields)


def files_in(path) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs
    )


# ---------------------------------------------------------------------- objects


def test_objects_are_stored_under_their_sha512(store):
    data = b"hello object\n"
    hash_hex = store.put_object_bytes(data)
    assert hash_hex == hashlib.sha512(data).hexdigest()
    expected = os.path.join(store.path, "objects", hash_hex[:2], hash_hex[2:4], hash_hex[4:])
    assert store.object_path(hash_hex) == expected
    with open(expected, "rb") as f:
        assert f.read() == data
    assert store.has_object(hash_hex)
    assert store.read_object(hash_hex) == data
    assert store.put_object_bytes(data) == hash_hex
    assert files_in(store.tmp_dir) == []


def test_zero_length_objects_are_refused(store, tmp_path):
    with pytest.raises(StoreError, match="zero-length"):
        store.put_object_bytes(b"")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(StoreError, match="zero-length"):
        store.put_object_file(str(empty), hashlib.sha512(b"").hexdigest())


def test_put_object_file_adds_once_and_verifies_the_hash(store, tmp_path):
    source = tmp_path / "data"
    content = os.urandom(3 << 20)
    source.write_bytes(content)
    hash_hex = hashlib.sha512(content).hexdigest()
    assert store.put_object_file(str(source), hash_hex) is True
    assert store.put_object_file(str(source), hash_hex) is False
    assert store.read_object(hash_hex) == content

    wrong = hashlib.sha512(b"other").hexdigest()
    with pytest.raises(HashMismatchError, match=f"Computed={hash_hex}, expected={wrong}"):
        store.put_object_file(str(source), wrong)
    assert not store.has_object(wrong)
    assert files_in(store.tmp_dir) == []


def test_import_object_file_reports_hash_size_and_added(store, tmp_path):
    source = tmp_path / "data"
    source.write_bytes(b"abc")
    expected = hashlib.sha512(b"abc").hexdigest()
    assert store.import_object_file(str(source)) == (expected, 3, True)
    assert store.import_object_file(str(source)) == (expected, 3, False)


def test_put_object_fd_copies_from_the_start_and_leaves_the_offset(store, tmp_path):
    source = tmp_path / "data"
    content = os.urandom((1 << 20) + 5)
    source.write_bytes(content)
    fd = os.open(source, os.O_RDONLY)
    try:
        os.lseek(fd, 100, os.SEEK_SET)
        expected = hashlib.sha512(content).hexdigest()
        assert store.put_object_fd(fd) == (expected, len(content), True)
        assert store.put_object_fd(fd) == (expected, len(content), False)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 100
    finally:
        os.close(fd)
    assert store.read_object(expected) == content


def test_put_hashed_bytes_trusts_the_given_hash(store):
    hash_hex = hashlib.sha512(b"abc").hexdigest()
    assert store.put_hashed_bytes(b"abc", hash_hex) is True
    assert store.put_hashed_bytes(b"abc", hash_hex) is False
    assert store.read_object(hash_hex) == b"abc"


def test_concurrent_adds_of_the_same_content_add_it_once(store, tmp_path):
    source = tmp_path / "data"
    source.write_bytes(os.urandom(1 << 20))
    hash_hex = hashlib.sha512(source.read_bytes()).hexdigest()
    barrier = threading.Barrier(8)
    results = []

    def add():
        barrier.wait()
        results.append(store.put_object_file(str(source), hash_hex))

    threads = [threading.Thread(target=add) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
    assert files_in(store.tmp_dir) == []


@pytest.mark.parametrize("bad", ["", "AB" * 64, "ab" * 63, "../" + "a" * 125, None])
def test_bad_object_ids_are_refused(store, bad):
    with pytest.raises(StoreError, match="bad object id"):
        store.object_path(bad)


def test_missing_object_is_reported(store):
    with pytest.raises(MissingObjectError, match="is not available"):
        store.open_object("ab" * 64)


def test_unsynced_objects_are_flushed_once_before_an_image(store, monkeypatch):
    calls = []
    monkeypatch.setattr(objects_module, "syncfs", calls.append)
    data = b"lazy"
    store.put_object_bytes(data, sync=False)
    store.add_image(NAME, image_with([data]))
    assert calls == [store.path]
    store.add_image("apps/hello/2026-11-27:10:53:20", image_with([data]))
    assert calls == [store.path]


# ---------------------------------------------------------------------- images


def test_add_and_get_image(store):
    data = b"content"
    store.put_object_bytes(data)
    log = store.put_object_bytes(b"build log")
    image = image_with([data, b""], build_log=Annotation(object=bytes.fromhex(log)))
    before = time.time_ns()
    stored = store.add_image(NAME, image)
    assert before <= stored.created_on <= time.time_ns()
    assert stored.created_by == "imaginator"
    assert image.created_on == 0  # the caller's image is not changed
    assert store.get_image(NAME) == stored
    with open(os.path.join(store.path, "images", NAME), encoding="utf-8") as f:
        assert f.read() == dumps_image(stored) + "\n"
    assert files_in(store.tmp_dir) == []


def test_add_image_keeps_given_creator_and_time(store):
    stored = store.add_image(NAME, image_with([], created_by="alice", created_on=5))
    assert (stored.created_by, stored.created_on) == ("alice", 5)


def test_add_image_refuses_existing_names(store):
    store.add_image(NAME, image_with([]))
    with pytest.raises(ImageExistsError, match=f"image: {NAME} already exists"):
        store.add_image(NAME, image_with([]))


@pytest.mark.parametrize(
    "name",
    [
        "2026-11-27:10:53:19",
        "/apps/2026-11-27:10:53:19",
        "apps//2026-11-27:10:53:19",
        "apps/./2026-11-27:10:53:19",
        "apps/../2026-11-27:10:53:19",
        "../2026-11-27:10:53:19",
        "apps/hello",
        "apps/2026-11-27:10:53:19/",
        "apps/2026-11-27 10:53:19",
        "ap\0ps/2026-11-27:10:53:19",
    ],
)
def test_add_image_refuses_bad_names(store, name):
    with pytest.raises(InvalidNameError):
        store.add_image(name, image_with([]))
    assert store.list_images() == []


def test_missing_object_leaves_no_record_and_no_temp_files(store):
    present = b"present"
    store.put_object_bytes(present)
    with pytest.raises(MissingObjectError, match=r"object: [0-9a-f]{128} is not available"):
        store.add_image(NAME, image_with([present, b"absent"]))
    with pytest.raises(MissingObjectError, match="2 objects are not available"):
        store.add_image(NAME, image_with([b"absent", b"also absent"]))
    log_missing = image_with([present], build_log=Annotation(object=bytes(64)))
    with pytest.raises(MissingObjectError):
        store.add_image(NAME, log_missing)
    assert store.list_images() == []
    assert store.get_image(NAME) is None
    assert files_in(store.tmp_dir) == []


def test_failure_while_writing_leaves_nothing(store, monkeypatch):
    def fail(*_args):
        raise OSError("disk on fire")

    monkeypatch.setattr(records_module, "write_all", fail)
    with pytest.raises(OSError, match="disk on fire"):
        store.add_image(NAME, image_with([]))
    assert store.list_images() == []
    assert files_in(store.tmp_dir) == []


def test_image_without_file_system_is_refused(store):
    with pytest.raises(StoreError, match="nil file-system"):
        store.add_image(NAME, Image())


def test_unknown_and_corrupt_images(store):
    assert store.get_image("no/such/2026-11-27:10:53:19") is None
    path = os.path.join(store.path, "images", NAME)
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write('{"CreatedOn": 3}')
    with pytest.raises(StoreError, match=r"image apps/hello/.*CreatedOn"):
        store.get_image(NAME)
    assert store.find_latest_image("apps/hello") is None


def test_listing_changing_and_deleting(store):
    names = [
        "apps/hello/2026-11-27:10:53:19",
        "apps/hello/2026-11-27:10:53:18",
        "bootstrap/bb/2026-11-27:10:00:00",
    ]
    far = 4_000_000_000 * 10**9
    for name in names:
        store.add_image(name, image_with([], expires_at=far))
    assert store.list_images() == sorted(names)
    assert store.list_directories() == ["apps", "apps/hello", "bootstrap", "bootstrap/bb"]

    assert store.change_image_expiration(names[0], far + 1234)
    assert store.get_image(names[0]).expires_at == far + 1234
    assert not store.change_image_expiration(names[0], far)  # only ever lengthened
    assert store.get_image(names[0]).expires_at == far + 1234
    assert store.change_image_expiration(names[0], 0)  # never expires
    assert not store.change_image_expiration(names[0], far + 5)
    assert store.get_image(names[0]).expires_at == 0
    with pytest.raises(ImageNotFoundError):
        store.change_image_expiration("apps/hello/2000-01-01:00:00:00", 1)

    store.delete_image(names[0])
    assert store.get_image(names[0]) is None
    assert store.list_images() == sorted(names[1:])
    with pytest.raises(ImageNotFoundError):
        store.delete_image(names[0])
    assert files_in(store.tmp_dir) == []


def test_delete_expired_images(store):
    store.add_image("s/2026-11-27:10:00:00", image_with([], expires_at=100))
    store.add_image("s/2026-11-27:10:00:01", image_with([], expires_at=300))
    store.add_image("s/2026-11-27:10:00:02", image_with([]))
    assert store.delete_expired_images(now_ns=200) == ["s/2026-11-27:10:00:00"]
    assert store.list_images() == ["s/2026-11-27:10:00:01", "s/2026-11-27:10:00:02"]


# ---------------------------------------------------------------------- queries


def test_find_latest_image_filters(store):
    add = store.add_image
    add("s/2026-01-01:00:00:01", image_with([], created_on=10, build_commit_id="c1"))
    add("s/2026-01-01:00:00:02", image_with([], created_on=30, build_branch="main"))
    add("s/2026-01-01:00:00:03", image_with([], created_on=20, tags={"Role": "web", "X": "1"}))
    add("s/2026-01-01:00:00:04", image_with([], created_on=5, tags={"Role": "db"}))
    add("s/2026-01-01:00:00:05", image_with([], created_on=99, expires_at=1))
    add("s/sub/2026-01-01:00:00:06", image_with([], created_on=50))

    assert store.find_latest_image("s") == "s/2026-01-01:00:00:02"
    assert store.find_latest_image("s", build_commit_id="c1") == "s/2026-01-01:00:00:01"
    assert store.find_latest_image("s", "main") == "s/2026-01-01:00:00:02"
    assert store.find_latest_image("s", "nothing") is None
    assert store.find_latest_image("s", "", {"Role": ["web", "db"]}) == "s/2026-01-01:00:00:03"
    assert store.find_latest_image("s", "", {"Role": ["db"]}) == "s/2026-01-01:00:00:04"
    assert store.find_latest_image("s", "", {"Role": ["web"], "X": ["2"]}) is None
    assert store.find_latest_image("s", "", {"Missing": ["x"]}) is None
    assert store.find_latest_image("s/sub") == "s/sub/2026-01-01:00:00:06"
    assert store.find_latest_image("s", now_ns=0) == "s/2026-01-01:00:00:05"
    assert store.find_latest_image("unknown/dir") is None
    with pytest.raises(InvalidNameError):
        store.find_latest_image("../s")


def test_find_latest_image_sees_changed_records(store):
    store.add_image("s/2026-01-01:00:00:01", image_with([], created_on=10))
    store.add_image("s/2026-01-01:00:00:02", image_with([], created_on=20, expires_at=1))
    assert store.find_latest_image("s") == "s/2026-01-01:00:00:01"  # the newer one expired
    store.change_image_expiration("s/2026-01-01:00:00:02", 0)  # never expires now
    assert store.find_latest_image("s") == "s/2026-01-01:00:00:02"


def test_reserve_image_name_is_unique_per_stream(store):
    epoch = 1795776798.7
    stamp = time.strftime("%Y-%m-%d:%H:%M:%S", time.localtime(1795776798))
    next_stamp = time.strftime("%Y-%m-%d:%H:%M:%S", time.localtime(1795776799))
    third_stamp = time.strftime("%Y-%m-%d:%H:%M:%S", time.localtime(1795776800))
    assert store.reserve_image_name("apps/hello", epoch) == f"apps/hello/{stamp}"
    assert store.reserve_image_name("apps/hello", epoch) == f"apps/hello/{next_stamp}"
    assert store.reserve_image_name("other", epoch) == f"other/{stamp}"
    store.add_image(f"third/{stamp}", image_with([]))
    assert store.reserve_image_name("third", epoch) == f"third/{next_stamp}"
    fresh = LocalImageStore(store.path)
    assert fresh.reserve_image_name("third", epoch) == f"third/{next_stamp}"
    assert store.reserve_image_name("apps/hello", epoch) == f"apps/hello/{third_stamp}"
    with pytest.raises(InvalidNameError):
        store.reserve_image_name("/abs", epoch)


# ---------------------------------------------------------------------- recovery


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_leftover_temp_files_are_removed_at_start(tmp_path):
    path = str(tmp_path / "store")
    LocalImageStore(path)
    tmp = os.path.join(path, "tmp")
    own = f"{os.getpid()}.{files_module.PROCESS_TOKEN}.abc"
    names = {
        "junk": False,
        f"{dead_pid()}.deadbeef.x": False,
        f"{os.getpid()}.00000000.old": False,  # same pid, earlier process
        own: True,  # being written by this process
        f"{os.getppid()}.deadbeef.y": True,  # a live process
    }
    for name in names:
        with open(os.path.join(tmp, name), "wb") as f:
            f.write(b"partial")
    os.mkdir(os.path.join(tmp, "leftover-dir"))
    LocalImageStore(path)
    assert sorted(os.listdir(tmp)) == sorted(n for n, kept in names.items() if kept)


def test_missing_store_is_not_created_when_asked(tmp_path):
    with pytest.raises(StoreError, match="no image store at"):
        LocalImageStore(str(tmp_path / "nothing"), create=False)
    assert not (tmp_path / "nothing").exists()


# ---------------------------------------------------------------------- async


@pytest.fixture
def threadpool():
    pool = ThreadPool(minthreads=1, maxthreads=2, name="test-store")
    pool.start()
    yield pool
    pool.stop()


@pytest_twisted.ensureDeferred
async def test_async_store_runs_the_local_store_in_threads(store, threadpool):
    from twisted.internet import reactor

    callers = []
    real_has_object = store.has_object

    def has_object(hash_hex):
        callers.append(threading.current_thread() is threading.main_thread())
        return real_has_object(hash_hex)

    store.has_object = has_object
    async_store = AsyncImageStore(store, reactor, threadpool)
    assert isinstance(async_store, ImageStore)

    hash_hex = await async_store.add_object(b"data")
    assert await async_store.has_object(hash_hex)
    assert callers and not any(callers)
    assert await async_store.get_object(hash_hex) == b"data"
    name = await async_store.reserve_image_name("s", 1795776798)
    assert not await async_store.image_exists(name)
    await async_store.add_image(name, image_with([b"data"], expires_at=5))
    assert await async_store.image_exists(name)
    assert not await async_store.image_exists("../escape/x")  # names no image
    # The objects are local files already: nothing to fetch.
    assert await async_store.fetch_objects({bytes.fromhex(hash_hex)}) == Transferred(0, 0)
    assert await async_store.list_images() == [name]
    assert await async_store.list_directories() == ["s"]
    await async_store.change_image_expiration(name, 0)
    assert await async_store.find_latest_image("s") == name
    assert not await async_store.change_image_expiration(name, 7)
    assert (await async_store.get_image(name)).expires_at == 0
    await async_store.delete_image(name)
    assert await async_store.get_image(name) is None
    with pytest.raises(ImageNotFoundError):
        await async_store.delete_image(name)


def test_garbage_collection_keeps_every_referenced_object(store):
    keep = store.put_object_bytes(b"kept by an image")
    orphan = store.put_object_bytes(b"left by a failed build")
    log = store.put_object_bytes(b"a build log")
    image = image_with([b"kept by an image"])
    image.build_log = Annotation(object=bytes.fromhex(log))
    store.add_image("s/2026-01-01:00:00:01", image)
    removed, freed = store.collect_garbage()
    assert (removed, freed) == (1, len(b"left by a failed build"))
    assert store.has_object(keep) and store.has_object(log)
    assert not store.has_object(orphan)
    store.delete_image("s/2026-01-01:00:00:01")
    assert store.collect_garbage() == (2, len(b"kept by an image") + len(b"a build log"))


def test_an_incoming_object_is_installed_only_with_its_hash(store):
    data = b"downloaded in pieces\n" * 1000
    hash_hex = hashlib.sha512(data).hexdigest()
    incoming = store.receive_object(hash_hex)
    incoming.write(data[:100])
    incoming.write(data[100:])
    assert not store.has_object(hash_hex)  # nothing visible before the commit
    assert incoming.commit() is True
    assert store.read_object(hash_hex) == data
    again = store.receive_object(hash_hex)
    again.write(data)
    assert again.commit(sync=False) is False  # there already

    other = hashlib.sha512(b"other").hexdigest()
    wrong = store.receive_object(other)
    wrong.write(b"not the other")
    with pytest.raises(HashMismatchError, match=f"expected={other}"):
        wrong.commit()
    assert not store.has_object(other)
    with pytest.raises(StoreError, match="already finished"):
        wrong.write(b"more")
    empty = store.receive_object(other)
    with pytest.raises(StoreError, match="zero-length"):
        empty.commit()
    given_up = store.receive_object(other)
    given_up.write(b"other")
    given_up.abort()
    assert not store.has_object(other)
    assert os.listdir(store.tmp_dir) == []
