"""The scheduling of builds (``imaginator.scheduler.Builder``) against a fake pipeline.

The pipeline's two steps (bootstrap and manifest builds) are fakes whose
images the test hands out through Deferreds, so each rule of the scheduler
can be driven step by step: joins of identical requests, one build per
stream, the global limit, recursion into a source stream, identical results
and listeners. Real builds of the same paths run in
``tests/integration/test_pipeline.py``.
"""

from __future__ import annotations

import json
import stat
from typing import Any

from twisted.internet.defer import Deferred

from imaginator.config.main import parse_main_config
from imaginator.config.streams import StreamsDocument, parse_streams
from imaginator.image.model import DirectoryInode, FileSystem, Image, RegularInode
from imaginator.pipeline.manifest_build import NeedSourceImage
from imaginator.runtime.process import ProcessRunner
from imaginator.scheduler import Builder, BuilderSettings, BuildOptions, BuildResult, Pipeline
from imaginator.store.base import ImageExistsError, StoreError
from tests.support.fakes import FakeReactor, SyncThreadPool, fired, has_fired

NOW = 1_700_000_000.0
PACKAGER = {
    "CleanCommand": ["true"],
    "InstallCommand": ["true"],
    "ListCommand": {"ArgList": ["true"]},
    "RemoveCommand": ["true"],
    "UpdateCommand": ["true"],
    "UpgradeCommand": ["true"],
}


def config(*bootstrap: str):
    document = {
        "BootstrapStreams": {
            name: {"BootstrapCommand": ["true"], "PackagerType": "p"} for name in bootstrap
        },
        "PackagerTypes": {"p": PACKAGER},
    }
    return parse_main_config(json.dumps(document).encode(), "conf.json", "amd64")


class Streams:
    """The normal streams: ``app`` on ``base`` on ``boot`` (sources come from the fake)."""

    def __init__(self, *names: str) -> None:
        text = {
            "Streams": {n: {"ManifestUrl": "file:///m.git", "ManifestDirectory": n} for n in names}
        }
        self.document = parse_streams(json.dumps(text), "streams.json", "amd64")

    def current(self) -> StreamsDocument:
        return self.document

    async def ensure_known(self, name, is_known) -> bool:
        return is_known(self.document)


def image(content: bytes = b"\x01", commit: str = "", source: str = "") -> Image:
    table = {2: RegularInode(stat.S_IFREG | 0o644, 0, 0, int(NOW), 0, 1, content * 64)}
    fs = FileSystem(table, DirectoryInode([("f", 2)]))
    fs.recompute_totals()
    return Image(file_system=fs, build_commit_id=commit, source_image=source)


class FakePipeline:
    """Records each image asked for; the test answers with :meth:`finish`."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.pending: dict[str, list[Deferred[Image]]] = {}
        self.needs: dict[str, str] = {}  # stream -> source stream it needs first

    def pipeline(self) -> Pipeline:
        return Pipeline(bootstrap=self._bootstrap, normal=self._normal)

    async def _bootstrap(self, env, config, packager, **_kwargs: Any) -> Image:
        return await self._wait(config.name)

    async def _normal(self, env, build) -> Image:
        source = self.needs.pop(build.stream, None)
        if source is not None:
            self.calls.append(build.stream)
            raise NeedSourceImage(f"no image for {source}", source, "", {})
        return await self._wait(build.stream)

    def _wait(self, stream: str) -> Deferred[Image]:
        self.calls.append(stream)
        d: Deferred[Image] = Deferred()
        self.pending.setdefault(stream, []).append(d)
        return d

    def finish(self, stream: str, result: Image | Exception | None = None) -> None:
        d = self.pending[stream].pop(0)
        if isinstance(result, Exception):
            d.errback(result)
        else:
            d.callback(result if result is not None else image())

    def running(self) -> list[str]:
        return sorted(s for s, ds in self.pending.items() if ds)


class FakeStore:
    """The async store calls the builder makes."""

    def __init__(self) -> None:
        self.images: dict[str, Image] = {}
        self.extended: list[str] = []
        self.taken: set[str] = set()  # names of deleted images (an imageserver keeps them)
        self.reserved: list[str] = []
        self.objects: list[bytes] = []

    async def add_object(self, data: bytes) -> str:
        self.objects.append(data)
        return f"{len(self.objects):0128x}"

    async def find_latest_image(self, stream: str) -> str | None:
        names = sorted(n for n in self.images if n.rpartition("/")[0] == stream)
        return names[-1] if names else None

    async def get_image(self, name: str) -> Image | None:
        return self.images.get(name)

    async def reserve_image_name(self, stream: str, now: float) -> str:
        count = sum(1 for n in {*self.images, *self.reserved} if n.rpartition("/")[0] == stream)
        self.reserved.append(f"{stream}/{count:04d}")
        return self.reserved[-1]

    async def add_image(self, name: str, img: Image) -> None:
        if name in self.taken:
            raise ImageExistsError(f"cannot add previously deleted image: {name}")
        self.images[name] = img

    async def change_image_expiration(self, name: str, expires_at: int) -> bool:
        self.extended.append(name)
        return True


def make(*, bootstrap=("boot",), normal=(), limit: int = 2):
    reactor = FakeReactor()
    reactor.advance(NOW)
    fake = FakePipeline()
    store = FakeStore()
    builder = Builder(
        reactor=reactor,
        threadpool=SyncThreadPool(),
        config=config(*bootstrap),
        store=store,
        local_store=None,
        runner=ProcessRunner(reactor),
        settings=BuilderSettings(maximum_concurrent_builds=limit),
        streams=Streams(*normal),
        pipeline=fake.pipeline(),
    )
    return builder, fake, store


def start(builder: Builder, stream: str, options: BuildOptions | None = None) -> Deferred:
    return Deferred.fromCoroutine(builder.build(stream, options or BuildOptions(expires_in=60)))


def test_an_identical_request_joins_the_running_build():
    builder, fake, store = make()
    first = start(builder, "boot")
    second = start(builder, "boot")
    assert fake.calls == ["boot"]
    fake.finish("boot")
    one, two = fired(first), fired(second)
    assert one is two and one.image_name == "boot/0000"
    assert list(store.images) == ["boot/0000"]


def test_a_different_request_waits_for_the_streams_running_build():
    builder, fake, _store = make()
    first = start(builder, "boot")
    other = start(builder, "boot", BuildOptions(expires_in=60, git_branch="x"))
    assert fake.calls == ["boot"]  # one build per stream at a time
    fake.finish("boot")
    assert fired(first).image_name and not has_fired(other)
    assert fake.calls == ["boot", "boot"]
    fake.finish("boot", image(b"\x02"))
    assert fired(other).image_name == "boot/0001"


def test_the_global_limit_holds_builds_of_other_streams():
    builder, fake, _store = make(bootstrap=("a", "b", "c"), limit=2)
    builds = [start(builder, name) for name in ("a", "b", "c")]
    assert fake.running() == ["a", "b"] and builder.running_count() == 2
    fake.finish("a")
    assert fake.running() == ["b", "c"]
    fake.finish("b")
    fake.finish("c")
    assert all(not fired(d).error for d in builds)


def test_a_missing_source_image_is_built_first_then_the_build_retried():
    builder, fake, store = make(normal=("app",), limit=1)
    fake.needs["app"] = "boot"
    done = start(builder, "app")
    # The source build runs inside the app's slot: no deadlock at a limit of 1.
    assert fake.calls == ["app", "boot"]
    fake.finish("boot")
    assert fake.calls == ["app", "boot", "app"]
    fake.finish("app", image(b"\x03", source="boot/0000"))
    result = fired(done)
    assert result.image_name == "app/0000" and not result.error
    assert sorted(store.images) == ["app/0000", "boot/0000"]
    assert "Building source image: boot" in result.log.decode()


def test_a_circular_source_dependency_fails_with_the_chain():
    builder, fake, _store = make(bootstrap=(), normal=("a", "b"))
    fake.needs.update({"a": "b", "b": "a"})
    result = fired(start(builder, "a"))
    assert result.error == "circular source image dependency: a -> b -> a"
    assert not result.image_name


def test_disable_recursive_build_reports_the_need():
    builder, fake, _store = make(normal=("app",))
    fake.needs["app"] = "boot"
    result = fired(start(builder, "app", BuildOptions(disable_recursive_build=True)))
    assert result.need_source_image and result.source_image == "boot"
    assert fake.calls == ["app"]


def test_an_identical_result_extends_the_latest_image_instead():
    builder, fake, store = make()
    first = start(builder, "boot")
    fake.finish("boot", image(b"\x05", commit="c1"))
    assert fired(first).image_name == "boot/0000"
    again = start(builder, "boot")
    fake.finish("boot", image(b"\x05", commit="c1"))
    assert len(store.objects) == 1  # the first build's log
    result = fired(again)
    assert result.identical and result.image_name == "boot/0000"
    assert list(store.images) == ["boot/0000"] and store.extended == ["boot/0000"]
    # Nothing published, nothing stored: not even the build log.
    assert len(store.objects) == 1
    assert store.images["boot/0000"].build_log.object == bytes.fromhex(f"{1:0128x}")
    # Same content from a new commit is a new record (its provenance differs).
    third = start(builder, "boot")
    fake.finish("boot", image(b"\x05", commit="c2"))
    assert fired(third).image_name == "boot/0001" and not fired(third).identical


def test_listeners_hear_every_result_and_a_failing_listener_is_contained():
    builder, fake, _store = make()
    heard: list[BuildResult] = []
    builder.add_listener(lambda result: 1 / 0)
    builder.add_listener(heard.append)
    done = start(builder, "boot")
    fake.finish("boot", RuntimeError("boom"))
    result = fired(done)
    assert heard == [result]
    assert result.error == "internal error: boom"
    assert builder.last_result("boot") == result


def test_unknown_stream_fails_the_build():
    builder, _fake, _store = make()
    result = fired(start(builder, "nope"))
    assert result.error == "unknown stream: nope"


def test_shutdown_refuses_new_builds():
    builder, fake, _store = make()
    running = start(builder, "boot")
    stopping = Deferred.fromCoroutine(builder.shutdown())
    assert not has_fired(stopping)
    fake.finish("boot", RuntimeError("killed"))
    assert "daemon shutting down" in fired(running).error
    fired(stopping)
    refused = fired(start(builder, "boot"))
    assert refused.error == "daemon shutting down"


class StagedPipeline(FakePipeline):
    """Reports stages to the build's report as the real pipeline steps do."""

    async def _bootstrap(self, env, config, packager, **_kwargs: Any) -> Image:
        env.report.begin("bootstrap command")
        return await self._wait(config.name)

    async def _normal(self, env, build) -> Image:
        env.report.begin("fetch manifest")
        return await super()._normal(env, build)


def make_staged(**kwargs: Any):
    builder, _fake, store = make(**kwargs)
    staged = StagedPipeline()
    builder._pipeline = staged.pipeline()
    return builder, staged, store


def test_the_result_carries_the_stages_of_the_build():
    builder, fake, _store = make_staged()
    done = start(builder, "boot")
    current = builder.current_build("boot")
    assert current is not None and current.report.stages.current()[0] == "bootstrap command"
    fake.finish("boot")
    result = fired(done)
    assert [(s.name, s.failed) for s in result.stages] == [
        ("bootstrap command", False),
        ("store", False),
    ]
    assert builder.last_result("boot").stages == result.stages


def test_the_stage_a_build_failed_in_is_marked_and_a_source_build_is_a_stage():
    builder, fake, _store = make_staged(normal=("app",), limit=1)
    fake.needs["app"] = "boot"
    done = start(builder, "app")
    fake.finish("boot")
    fake.finish("app", RuntimeError("boom"))
    result = fired(done)
    assert result.error == "internal error: boom"
    assert [(s.name, s.failed) for s in result.stages] == [
        ("fetch manifest", False),
        ("build source image", False),
        ("fetch manifest", True),
    ]
    source = builder.last_result("boot")
    assert [s.name for s in source.stages] == ["bootstrap command", "store"]


def test_a_name_taken_meanwhile_is_replaced_by_the_next_one():
    builder, fake, store = make()
    store.taken = {"boot/0000", "boot/0001"}
    done = start(builder, "boot")
    fake.finish("boot")
    result = fired(done)
    assert not result.error and result.image_name == "boot/0002"
    assert list(store.images) == ["boot/0002"]
    assert f"Uploaded {result.image_name} in " in result.log.decode()


def test_a_store_error_fails_the_build_with_its_text():
    builder, fake, store = make()

    async def broken(stream: str) -> str | None:
        raise StoreError("imageserver 127.0.0.1:6971: ImageServer.FindLatestImage: cannot connect")

    store.find_latest_image = broken
    done = start(builder, "boot")
    fake.finish("boot")
    assert fired(done).error == (
        "imageserver 127.0.0.1:6971: ImageServer.FindLatestImage: cannot connect"
    )
