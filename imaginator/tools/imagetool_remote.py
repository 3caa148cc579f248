"""``imagetool -imageServerHostname=H``: the same commands on a Dominator imageserver.

The commands are synchronous (they read a store and write files); here they
run in a thread while the reactor, in the main thread, talks to the
imageserver through the daemon's own remote store
(``imaginator.store.imageserver``): GOB over TLS, presenting the best
certificate of ``-certDirectory`` (as builder-tool and the Go tools choose it)
and checking the server's against ``-CAfile``. :class:`RemoteImages` is what
the commands read: images fetched when asked for, objects downloaded into a
temporary cache (checked against their SHA-512) before they are read; ``get``,
``tar``, ``oci`` and ``push`` download all the objects they need in one go
first.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Coroutine
from typing import Any, BinaryIO, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.python.failure import Failure

from imaginator.image.model import Image
from imaginator.srpc.pool import SrpcPool
from imaginator.srpc.tls import make_client_tls_options
from imaginator.store.imageserver import (
    ImageServerAddress,
    ImageServerStore,
    make_dial,
    open_cache,
)
from imaginator.tools.builder_remote import CertError, find_client_certs
from imaginator.tools.imagetool_base import Arguments, CommandError, UsageError

T = TypeVar("T")

#: Commands that read every object of the image (``oci``, ``push``: and of its sources).
PREFETCH = {"get": False, "tar": False, "oci": True, "push": True}


class RemoteImages:
    """The synchronous store the commands read (``get_image``,
    ``list_images``, ``open_object``, ``object_path``…), called from the
    command's thread; every call waits for the reactor."""

    def __init__(self, store: ImageServerStore, reactor: Any) -> None:
        self._store = store
        self._reactor = reactor
        self._images: dict[str, Image | None] = {}

    def _wait(self, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        def start() -> Deferred[T]:
            return Deferred.fromCoroutine(work())

        # The stub's union of callables leaves mypy unable to infer the result
        # type; this is the same function, seen with the one signature used here.
        wait: Callable[[Any, Callable[[], Deferred[T]]], T] = blockingCallFromThread
        return wait(self._reactor, start)

    def get_image(self, name: str) -> Image | None:
        if name not in self._images:
            self._images[name] = self._wait(lambda: self._store.get_image(name))
        return self._images[name]

    def list_images(self) -> list[str]:
        return self._wait(self._store.list_images)

    def fetch(self, image: Image) -> None:
        """Download every object of ``image`` the cache lacks."""
        self._wait(lambda: self._store.fetch_objects(image.object_hashes()))

    def _ensure(self, hash_hex: str) -> None:
        if not self._store.local.has_object(hash_hex):
            self._wait(lambda: self._store.fetch_objects([bytes.fromhex(hash_hex)]))

    def has_object(self, hash_hex: str) -> bool:
        return self._wait(lambda: self._store.has_object(hash_hex))

    def object_path(self, hash_hex: str) -> str:
        self._ensure(hash_hex)
        return self._store.local.object_path(hash_hex)

    def open_object(self, hash_hex: str) -> BinaryIO:
        self._ensure(hash_hex)
        return self._store.local.open_object(hash_hex)

    def read_object(self, hash_hex: str) -> bytes:
        self._ensure(hash_hex)
        return self._store.local.read_object(hash_hex)


def _prefetch(images: RemoteImages, arguments: Arguments) -> None:
    """Fetch the objects a command reads in bulk (with its source images'
    for the OCI commands, as far as they exist)."""
    chain = PREFETCH.get(arguments.command)
    if chain is None:
        return
    name = arguments.args[0]
    seen: set[str] = set()
    while name and name not in seen:
        seen.add(name)
        image = images.get_image(name)
        if image is None:
            return
        images.fetch(image)
        name = image.source_image if chain else ""


def _client_files(arguments: Arguments) -> tuple[str, str, str]:
    """(certificate, key, CA file) to dial with; ``CommandError`` if unusable."""
    directory = os.path.expanduser(arguments.cert_directory)
    try:
        certs = find_client_certs(directory)
    except CertError as exc:
        raise CommandError(str(exc)) from None
    if not certs:
        raise CommandError(
            f"-certDirectory={arguments.cert_directory}: no usable certificate and key "
            "(NAME.cert and NAME.key, or cert.pem and key.pem)"
        )
    if not os.path.isfile(arguments.ca_file):
        raise CommandError(f"-CAfile={arguments.ca_file}: No such file")
    return certs[0].cert_file, certs[0].key_file, arguments.ca_file


def run_remote(arguments: Arguments, command: Callable[..., None]) -> None:
    """Run ``command(images, arguments, *args)`` against the imageserver of
    ``-imageServerHostname``; raises what the command raises (``StoreError``
    for the server's failures, each naming it)."""
    from twisted.internet import reactor as installed

    # The installed reactor provides every interface used here (TCP, threads,
    # running and stopping); its declared type says none of them.
    reactor: Any = installed

    if arguments.image_server_port < 1 or arguments.image_server_port > 65535:
        raise UsageError(f"-imageServerPortNum: bad port {arguments.image_server_port}")
    cert_file, key_file, ca_file = _client_files(arguments)
    host = arguments.image_server_hostname
    try:
        options = make_client_tls_options(cert_file, key_file, ca_file=ca_file, hostname=host)
    except Exception as exc:
        raise CommandError(f"{cert_file}, {ca_file}: cannot be used: {exc}") from None
    address = ImageServerAddress(host, arguments.image_server_port)
    cache_dir = tempfile.mkdtemp(prefix="imagetool-objects-", dir=os.environ.get("TMPDIR"))
    outcome: list[Any] = []

    async def run() -> None:
        pool = reactor.getThreadPool()
        store = ImageServerStore(
            address,
            SrpcPool(make_dial(address, options, reactor=reactor), size=1),
            await deferToThread(open_cache, cache_dir),
            reactor=reactor,
            threadpool=pool,
        )
        images = RemoteImages(store, reactor)

        def in_thread() -> None:
            _prefetch(images, arguments)
            command(images, arguments, *arguments.args)

        try:
            await deferToThread(in_thread)
        finally:
            await store.close()

    def start() -> None:
        done = Deferred.fromCoroutine(run())
        done.addBoth(outcome.append)
        done.addBoth(lambda _: reactor.stop())

    try:
        reactor.callWhenRunning(start)
        reactor.run()
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    if not outcome:
        raise CommandError("interrupted")
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
