"""The variables files, kept current: the secret one (``-variablesFile``,
reference §3.5) and the plain one (``-plainVariablesFile``).

No message here ever contains a value of either file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from types import MappingProxyType

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from imaginator.config.variables import make_redactor, parse_variables
from imaginator.goformats.jsonc import ConfigError
from imaginator.runtime.reactors import IReactorTimeTCPAndThreads
from imaginator.sources.documents import redact_url
from imaginator.sources.watch import (
    DEFAULT_LOCAL_POLL,
    DocumentSource,
    Fetch,
    InodeOf,
    locate_document,
)

__all__ = ["BuildVariables", "VariablesFile"]

_log = Logger()


class VariablesFile(Service):
    """A variables file, kept current: secret (``-variablesFile``, reference
    §3.5) unless ``secret`` is false (``-plainVariablesFile``).

    :meth:`load_initial` reads it once before the reactor runs; while the
    service runs it is watched (inode change, every ``local_poll`` seconds)
    and a replaced file swaps the values; a bad new version is logged and
    the old values stay. An empty ``path`` means no variables. No message
    ever contains a value.
    """

    def __init__(
        self,
        path: str,
        *,
        secret: bool = True,
        reactor: IReactorTimeTCPAndThreads,
        clock: IReactorTime,
        threadpool: ThreadPool,
        local_poll: float = DEFAULT_LOCAL_POLL,
        fetch: Fetch | None = None,
        inode_of: InodeOf | None = None,
    ) -> None:
        self.path = ""
        self.secret = secret
        self.source: DocumentSource | None = None
        self._values: Mapping[str, str] = MappingProxyType({})
        self._redactor: Callable[[str], str] = make_redactor({})
        self._hash: bytes | None = None
        self.loaded_at: float | None = None
        self._clock = clock
        if not path:
            return
        location = locate_document(path)
        if location.kind != "local":
            raise ConfigError(f"{redact_url(path)}: the variables file must be a local file")
        self.path = location.target
        self.source = DocumentSource(
            self.path,
            reactor=reactor,
            clock=clock,
            threadpool=threadpool,
            check_interval=0,
            on_document=self._on_document,
            on_error=self._on_error,
            name="variables",
            local_poll=local_poll,
            fetch=fetch,
            inode_of=inode_of,
        )

    def load_initial(self) -> None:
        """Read and parse the file now (blocking). Raises ``ConfigError`` naming the file."""
        if not self.path:
            return
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise ConfigError(f"{self.path}: {exc.strerror or exc}") from None
        self._swap(parse_variables(data, self.path), data)
        _log.info("Loaded variables from {file}", file=self.path, count=len(self._values))

    def values(self) -> Mapping[str, str]:
        """The current variables (read-only)."""
        return self._values

    def secret_values(self) -> Mapping[str, str]:
        """The values that must never be shown: all of them, or none for a plain file."""
        return self._values if self.secret else MappingProxyType({})

    def redact(self, text: str) -> str:
        """``text`` with every secret value replaced by ``[REDACTED]``."""
        return self._redactor(text) if self.secret else text

    def startService(self) -> None:
        super().startService()
        if self.source is not None:
            self.source.startService()

    def stopService(self) -> Deferred[None]:
        """No more checks; fires once the check in flight has ended (bounded)."""
        super().stopService()
        if self.source is None:
            return succeed(None)
        return self.source.stopService()

    def _swap(self, values: Mapping[str, str], data: bytes) -> None:
        self._values = MappingProxyType(dict(values))
        self._redactor = make_redactor(self._values)
        self._hash = hashlib.sha512(data).digest()
        self.loaded_at = self._clock.seconds()

    def _on_document(self, data: bytes) -> None:
        if hashlib.sha512(data).digest() == self._hash:
            return
        try:
            values = parse_variables(data, self.path)
        except ConfigError as exc:
            _log.error("Error loading variables: {error}", error=str(exc))
            return
        first = self._hash is None
        self._swap(values, data)
        if first:
            _log.info("Loaded variables from {file}", file=self.path, count=len(values))
        else:
            _log.info("Loaded new variables from {file}", file=self.path, count=len(values))

    def _on_error(self, message: str) -> None:
        _log.error("Error reading variables file: {error}", error=self.redact(message))


class BuildVariables:
    """The variables builds expand with: the plain file's, overridden by the
    secret file's; only the secret ones are redacted."""

    def __init__(self, secret: VariablesFile, plain: VariablesFile | None = None) -> None:
        self.secret = secret
        self.plain = plain

    def values(self) -> Mapping[str, str]:
        """Every variable, for expansion."""
        if self.plain is None or not self.plain.values():
            return self.secret.values()
        return MappingProxyType({**self.plain.values(), **self.secret.values()})

    def secret_values(self) -> Mapping[str, str]:
        """The values to redact."""
        return self.secret.values()

    def redact(self, text: str) -> str:
        return self.secret.redact(text)
