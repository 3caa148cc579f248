"""Unpacking an image from the embedded store into a build root (part of DESIGN §5's
derived-build overhead), from a scan of TREE (default /usr/lib/python3).

Prints the time to materialise, and how much of it is waiting for the disk: the
same unpack is timed once more after the page cache has flushed what the first
wrote.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer, task
from twisted.python.threadpool import ThreadPool

from imaginator.image.model import Image
from imaginator.image.scan import scan_tree
from imaginator.image.unpack import materialise
from imaginator.store.local import LocalImageStore


def main(reactor, tree: str = "/usr/lib/python3"):
    work = tempfile.mkdtemp(prefix="bench-unpack", dir="/var/tmp")
    store = LocalImageStore(os.path.join(work, "store"))
    pool = ThreadPool(0, 4)
    pool.start()

    async def run():
        try:
            scanned = await scan_tree(tree, reactor=reactor, threadpool=pool, store=store)
            fs = scanned.file_system
            mib = fs.total_data_bytes / (1 << 20)
            print(f"image of {tree}: {fs.num_regular_inodes} files, {mib:.0f} MiB")
            image = Image(file_system=fs)
            for attempt in (1, 2):
                subprocess.run(["sync"], check=True)
                dest = os.path.join(work, f"root{attempt}")
                started = time.monotonic()
                materialise(image, store, dest)
                took = time.monotonic() - started
                print(f"materialise #{attempt}: {took:.2f}s ({mib / took:.0f} MiB/s)")
                shutil.rmtree(dest)
        finally:
            pool.stop()
            shutil.rmtree(work)

    return defer.ensureDeferred(run())


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
