"""A real CNCF distribution registry (Debian's ``docker-registry``) for tests:
own configuration and storage under the test's directory, a loopback port
the registry picks itself, its log kept for counting requests."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_LISTENING = re.compile(r'msg="listening on ([0-9.]+:[0-9]+)')
_METHOD = re.compile(r"http\.request\.method=(\w+)")
_URI = re.compile(r'http\.request\.uri=("[^"]*"|\S+)')


def need(*programs: str) -> None:
    """Fail (not skip) when a program ``scripts/setup-host`` installs is missing."""
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run scripts/setup-host")


@dataclass
class Registry:
    directory: Path
    address: str = ""
    log: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None

    def requests(self, method: str, uri_part: str = "") -> int:
        """How many requests with ``method`` whose URI contains ``uri_part`` the log shows."""
        count = 0
        for line in list(self.log):
            if 'msg="response completed"' not in line:
                continue
            found_method, found_uri = _METHOD.search(line), _URI.search(line)
            if found_method and found_uri and found_method.group(1) == method:
                count += uri_part in found_uri.group(1)
        return count

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


def start_registry(directory: Path, extra: str = "", address: str = "127.0.0.1:0") -> Registry:
    """Start ``docker-registry serve`` on ``address`` (default: 127.0.0.1, the
    port chosen by it) and return once it listens."""
    need("docker-registry")
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {directory / 'storage'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: {address}\n{extra}"
    )
    registry = Registry(directory)
    process = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    registry.process = process
    listening = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            registry.log.append(line)
            match = _LISTENING.search(line)
            if match:
                registry.address = match.group(1)
                listening.set()
        listening.set()  # it exited: let the waiter see that

    threading.Thread(target=read, daemon=True).start()
    if not listening.wait(timeout=60) or not registry.address:
        registry.stop()
        raise RuntimeError("docker-registry did not start:\n" + "".join(registry.log))
    return registry
