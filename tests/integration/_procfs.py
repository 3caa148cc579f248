"""Test helpers that look at processes through /proc and pidfds, without sleeping."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError
from twisted.python.failure import Failure


def group_members(pgid: int) -> list[int]:
    """Pids of the processes (zombies excluded) whose process group is ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in ("Z", "X"):
            members.append(int(entry))
    return members


def matching_processes(needle: bytes) -> list[int]:
    """Pids of live processes whose command line contains ``needle``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if needle in cmdline and stat[stat.rindex(")") + 2] not in "ZX":
            found.append(int(entry))
    return found


class _PidfdReader:
    """Fires ``exited`` when the process behind a pidfd has exited."""

    def __init__(self, pid: int) -> None:
        self.exited: Deferred[None] = Deferred()
        try:
            self._fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._fd = -1
            self.exited.callback(None)
            return
        reactor.addReader(self)

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "pidfd"

    def doRead(self) -> None:
        self._close()
        self.exited.callback(None)

    def connectionLost(self, reason: Failure) -> None:
        self._close()

    def _close(self) -> None:
        if self._fd >= 0:
            reactor.removeReader(self)
            os.close(self._fd)
            self._fd = -1


async def wait_until_exited(pids: list[int], timeout: float = 5.0) -> list[int]:
    """Wait for each pid to exit; return those still running after ``timeout``.

    A process that was SIGKILLed can still be visible for a moment while it
    tears down; one that survived never exits. Waiting on its pidfd tells the
    two apart without polling.
    """
    survivors = []
    for pid in pids:
        waiter = _PidfdReader(pid)
        try:
            await waiter.exited.addTimeout(timeout, reactor)
        except TimeoutError:
            waiter.connectionLost(Failure(TimeoutError()))
            survivors.append(pid)
    return survivors


async def group_survivors(pgid: int) -> list[int]:
    """Members of process group ``pgid`` that do not exit within a few seconds."""
    return await wait_until_exited(group_members(pgid))
