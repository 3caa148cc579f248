"""Our GOB against the real Go imageserver (``../shared/peers``).

The work happens in ``gob_peer_helper.py``, run in a network namespace of its
own (``unshare --net``: the imageserver, as Go programs do at start, tries to
reach a cloud metadata address; there it reaches nothing). It uploads objects,
checks them, adds an image our encoder wrote, reads it back with our decoder,
changes its expiry and downloads the objects. Skips without the peers or root;
fails instead when IMAGINATOR_REQUIRE_PEERS=1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PEERS = REPO.parent / "shared" / "peers"
HELPER = Path(__file__).with_name("gob_peer_helper.py")


def _unavailable() -> str | None:
    if not os.access(PEERS / "imageserver", os.X_OK):
        return f"the Go peers are not at {PEERS}"
    if os.geteuid() != 0:
        return "needs root (network namespace, imageserver as nobody)"
    return None


def test_the_go_imageserver_takes_our_gob():
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("IMAGINATOR_REQUIRE_PEERS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        ["unshare", "--net", "--", sys.executable, str(HELPER), str(PEERS)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks held" in result.stdout
