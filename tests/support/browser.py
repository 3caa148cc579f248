"""Headless Chromium, driven without blocking the reactor."""

from __future__ import annotations

import shutil
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

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
