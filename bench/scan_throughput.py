"""Scan + hash throughput against sha512sum (DESIGN §5: >= 80% of sha512sum on 2 cores).

Usage: scan_throughput.py [TREE]   (default: /usr/lib, a few hundred MiB of real files)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer, task
from twisted.python.threadpool import ThreadPool

from imaginator.image.scan import scan_tree
from imaginator.store.local import LocalImageStore


def tree_size(root: str) -> tuple[int, int]:
    files = size = 0
    for base, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(base, name)
            if os.path.isfile(path) and not os.path.islink(path):
                files += 1
                size += os.path.getsize(path)
    return files, size


def sha512sum_seconds(root: str) -> float:
    started = time.monotonic()
    subprocess.run(
        f"find {root} -type f -print0 | xargs -0 -P2 -n64 sha512sum > /dev/null",
        shell=True,
        check=True,
    )
    return time.monotonic() - started


async def scan_seconds(reactor, root: str, store: LocalImageStore, pool: ThreadPool) -> float:
    result = await scan_tree(root, reactor=reactor, threadpool=pool, store=store)
    return result.duration


def main(reactor, root: str = "/usr/lib"):
    files, size = tree_size(root)
    mib = size / (1 << 20)
    print(f"tree: {root}: {files} files, {mib:.0f} MiB")
    sha = min(sha512sum_seconds(root) for _ in range(2))  # the second run is cache-warm
    print(f"sha512sum -P2: {sha:.2f}s ({mib / sha:.0f} MiB/s)")
    pool = ThreadPool(0, 4)
    pool.start()
    store_dir = tempfile.mkdtemp(prefix="bench-store", dir="/var/tmp")
    store = LocalImageStore(store_dir)

    async def run():
        try:
            first = await scan_seconds(reactor, root, store, pool)
            print(f"scan into an empty store: {first:.2f}s ({mib / first:.0f} MiB/s)")
            again = await scan_seconds(reactor, root, store, pool)
            print(
                f"scan, objects present:    {again:.2f}s ({mib / again:.0f} MiB/s), "
                f"{sha / again:.0%} of sha512sum"
            )
        finally:
            pool.stop()
            subprocess.run(["rm", "-rf", store_dir], check=True)

    return defer.ensureDeferred(run())


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
