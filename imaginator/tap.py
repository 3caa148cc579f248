"""twistd plugin ``imaginator``: the daemon's options and ``makeService``.

The parts are assembled by ``imaginator.daemon``; this module only turns the
flags table into twistd options and hands them over, with the reactor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.python import usage

from imaginator.daemon import DaemonRunner, check_process_environment
from imaginator.flags import FLAGS, FlagError
from imaginator.goformats.goflags import FlagSpec
from imaginator.runtime.reactors import IDaemonReactor


def _coerce(flag: FlagSpec) -> Callable[[str], Any]:
    def coerce(text: str) -> Any:
        try:
            return flag.parse(text)
        except FlagError as exc:
            raise ValueError(str(exc)) from None

    # twisted.python.usage reads this attribute off a coercer (its doc text).
    coerce.coerceDoc = ""  # type: ignore[attr-defined]
    return coerce


class Options(usage.Options):
    """The Go imaginator's flags (see ``imaginator.flags``).

    ``exit_status`` is what the ``imaginator`` command exits with once the
    reactor has stopped (set to 1 by a start-up failure).
    """

    synopsis = "[options]"
    longdesc = "Build OS and OS+application images from manifests; see README.md."
    optParameters = [
        [flag.name, None, flag.parse(flag.default), flag.help, _coerce(flag)] for flag in FLAGS
    ]

    def __init__(self) -> None:
        super().__init__()
        self.exit_status = 0


def makeService(options: Options) -> DaemonRunner:
    check_process_environment()
    from twisted.internet import reactor

    def set_exit_status(code: int) -> None:
        options.exit_status = code

    # Twisted types its global reactor as _IReactorCommon, without the thread
    # interfaces the real one has: the daemon's reactor is all of IDaemonReactor.
    return DaemonRunner(options, cast(IDaemonReactor, reactor), set_exit_status=set_exit_status)
