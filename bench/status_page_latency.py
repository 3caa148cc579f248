"""Status-page latency under load (DESIGN §5: p99 < 50 ms at 100 requests/s while builds run).

Starts the real daemon on a busybox configuration whose bootstrap command keeps both
cores busy for the whole measurement, then requests ``/`` 100 times a second for 10
seconds from a separate process and prints p50/p99 latency and the daemon's RSS.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RATE, SECONDS = 100, 10


def config(tmp: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from tests.support.configs import busybox_conf

    burn = "sha512sum /dev/zero & sha512sum /dev/zero & sleep 40; kill %1 %2; exit 1"
    conf = busybox_conf(tmp, command=["/bin/bash", "-c", burn])
    document = json.loads(conf.read_text())
    conf.write_text(json.dumps(document))
    return conf


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-status"))
    conf = config(tmp)
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    output = open(tmp / "daemon.log", "w+")
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "imaginator.cli",
            "-portNum=0",
            f"-stateDir={tmp / 'state'}",
            f"-configurationUrl=file://{conf}",
            "-buildLogDir=",
        ],
        stdout=output,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    try:
        port, text = None, ""
        while port is None or "Starting automatic image build cycle" not in text:
            time.sleep(0.2)
            text = (tmp / "daemon.log").read_text()
            match = re.search(r"listening on port (\d+)", text)
            port = int(match.group(1)) if match else None
        time.sleep(2)  # let the burners start
        url = f"http://127.0.0.1:{port}/"
        latencies: list[float] = []

        def fetch() -> None:
            started = time.monotonic()
            with urllib.request.urlopen(url, timeout=10) as response:
                response.read()
            latencies.append(time.monotonic() - started)

        with ThreadPoolExecutor(16) as pool:
            begin = time.monotonic()
            for n in range(RATE * SECONDS):
                delay = begin + n / RATE - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(fetch)
        latencies.sort()
        p50 = latencies[len(latencies) // 2] * 1000
        p99 = latencies[int(len(latencies) * 0.99)] * 1000
        load = os.getloadavg()[0]
        print(
            f"{len(latencies)} requests at {RATE}/s, load {load:.1f}: "
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms (target < 50 ms)"
        )
        print(f"daemon RSS: {rss_kib(daemon.pid) / 1024:.0f} MiB (target < 150 MB)")
    finally:
        daemon.terminate()
        daemon.wait(60)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    main()
