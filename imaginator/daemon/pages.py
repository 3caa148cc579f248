"""The daemon's pages: the status page with every other page installed on it."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred

from imaginator import __version__
from imaginator.deps import DependencyGenerator
from imaginator.goformats.units import go_arch
from imaginator.publish.publisher import Publisher
from imaginator.runtime.archive import BuildLogArchive
from imaginator.runtime.logbuffer import LogRing
from imaginator.runtime.process import ProcessRunner
from imaginator.runtime.reactors import IDaemonReactor
from imaginator.web.archive_pages import ArchivePages, quote_query
from imaginator.web.diff_pages import DiffPages
from imaginator.web.graph_pages import GraphPages, spawn_dot
from imaginator.web.metrics import BuildCounters
from imaginator.web.pages import StatusPages
from imaginator.web.stream_pages import StreamPages
from imaginator.web.tarball import TarballPage

if TYPE_CHECKING:
    from imaginator.daemon.assembly import Core


def install_pages(
    core: Core,
    deps: DependencyGenerator,
    archive: BuildLogArchive | None,
    publisher: Publisher,
    runner: ProcessRunner,
    reactor: IDaemonReactor,
    in_thread: Callable[..., Deferred[Any]],
    log_ring: LogRing | None,
) -> StatusPages:
    """The status page with the stream, image, archive and graph pages installed."""
    started_at = reactor.seconds()
    arch = go_arch()
    pages = StatusPages(
        source=core.builder,
        clock=reactor,
        started_at=started_at,
        hostname=socket.gethostname(),
        version=__version__,
        log_ring=log_ring,
        image_link=lambda name: f"showImage?{quote_query(name)}",
        archive_enabled=archive is not None,
        redact=core.builder.redact,
    )
    counters = BuildCounters()
    core.builder.add_listener(counters.record)
    StreamPages(
        core.builder,
        core.store,
        reactor,
        arch,
        __version__,
        started_at=started_at,
        counters=counters,
        publishing=publisher,
    ).install(pages.app)
    if archive is not None:
        ArchivePages(archive, in_thread, reactor).install(pages.app)

    DiffPages(core.store, in_thread, reactor, __version__).install(pages.app)
    TarballPage(core.store, core.local_store, in_thread, reactor).install(pages.app)
    GraphPages(
        deps,
        reactor,
        core.config.relationships_quick_links,
        spawn_dot(reactor, runner=runner),
        auto_rebuild=lambda: core.config.image_streams_to_auto_rebuild,
        version=__version__,
    ).install(pages.app)
    return pages
