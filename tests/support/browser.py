"""Headless Chromium, driven without blocking the reactor."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise AssertionError("chromium is not installed: run scripts/setup-host")
    return path


async def _run(args: list[str], profile: Path) -> bytes:
    profile.mkdir(parents=True, exist_ok=True)
    out, err, code = await getProcessOutputAndValue(
        chromium(), [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], reactor=reactor
    )
    if code != 0:
        raise AssertionError(f"chromium exited {code}: {err.decode(errors='replace')[-2000:]}")
    return out


async def dump_dom(url: str, profile: Path) -> str:
    """The page's DOM after Chromium loaded and ran it."""
    return (await _run(["--dump-dom", url], profile)).decode("utf-8", errors="replace")


async def screenshot(url: str, profile: Path, target: Path, size: str = "1200,900") -> Path:
    await _run([f"--screenshot={target}", f"--window-size={size}", url], profile)
    return target


# -- driving a page: the DevTools protocol over a pipe -------------------------------


class DevTools(protocol.ProcessProtocol):
    """Headless Chromium driven through ``--remote-debugging-pipe``.

    Chromium reads commands on its fd 3 and writes answers and events on its
    fd 4, JSON messages ended by a NUL byte; no port, no extra library. Use
    :func:`open_page` to start it with one page; ``call`` sends a command
    (to the page's session unless ``session=None``) and fires with its result.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._next_id = 0
        self._waiting: dict[int, defer.Deferred[dict]] = {}
        self.session: str | None = None
        self.stderr = bytearray()
        self.ended: defer.Deferred[None] = defer.Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd == 2:
            self.stderr += data[-4096:]
            del self.stderr[:-8192]
            return
        if fd != 4:
            return
        self._buffer += data
        *messages, self._buffer = self._buffer.split(b"\0")
        for raw in messages:
            message = json.loads(raw)
            waiter = self._waiting.pop(message.get("id", -1), None)
            if waiter is None:
                continue  # an event: not needed here
            if "error" in message:
                waiter.errback(AssertionError(f"DevTools error: {message['error']}"))
            else:
                waiter.callback(message.get("result", {}))

    def processEnded(self, reason: Failure) -> None:
        for waiter in self._waiting.values():
            waiter.errback(AssertionError(f"chromium ended: {self.stderr[-2000:]!r}"))
        self._waiting.clear()
        self.ended.callback(None)

    def call(self, method: str, params: dict | None = None, *, session: Any = "page") -> Any:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session == "page":
            session = self.session
        if session is not None:
            message["sessionId"] = session
        waiter: defer.Deferred[dict] = defer.Deferred()
        self._waiting[self._next_id] = waiter
        self.transport.writeToChild(3, json.dumps(message).encode() + b"\0")
        return waiter

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = await self.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def navigate(self, url: str) -> None:
        await self.call("Page.navigate", {"url": url})

    async def wait_for(self, expression: str, timeout: float = 60.0) -> Any:
        """Evaluate ``expression`` until it is truthy (every 50 ms, at most ``timeout`` s)."""
        deadline = reactor.seconds() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if reactor.seconds() > deadline:
                raise AssertionError(f"still false after {timeout}s: {expression}")
            await task.deferLater(reactor, 0.05, lambda: None)

    async def close(self) -> None:
        if not self.ended.called:
            try:
                await self.call("Browser.close", session=None)
            except AssertionError:
                pass
            killer = reactor.callLater(10, self.transport.signalProcess, "KILL")
            await self.ended
            if killer.active():
                killer.cancel()


async def open_page(profile: Path, width: int = 900, height: int = 400) -> DevTools:
    """Chromium with one blank page of ``width`` x ``height`` CSS pixels, ready to navigate."""
    profile.mkdir(parents=True, exist_ok=True)
    tools = DevTools()
    argv = [
        chromium(),
        *CHROMIUM_FLAGS,
        "--disable-dev-shm-usage",
        "--remote-debugging-pipe",
        f"--user-data-dir={profile}",
    ]
    reactor.spawnProcess(
        tools,
        argv[0],
        argv,
        env=dict(os.environ),
        childFDs={0: "w", 1: "r", 2: "r", 3: "w", 4: "r"},
    )
    target = await tools.call("Target.createTarget", {"url": "about:blank"}, session=None)
    attached = await tools.call(
        "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}, session=None
    )
    tools.session = attached["sessionId"]
    await tools.call("Runtime.enable")
    await tools.call(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
    return tools
