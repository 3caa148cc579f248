"""The sample streams built into an unmodified Go imageserver (``../shared/peers``).

``imaginator -imageServerHostname=127.0.0.1 -imageServerPortNum=N`` builds the
sample configuration (busybox, the real Debian 12 bootstrap, ``base`` and
``apps/hello``) into the Go imageserver; the same configuration is built once
more by a daemon on its embedded store. The Go ``imagetool`` lists the
imageserver's images (one per stream, as our ``imagetool`` lists the embedded
store's) and unpacks each; every file of its tree equals the file of the
embedded store's image as our ``imagetool`` unpacks it (type, mode, owner,
content; the modification times of two builds differ).

Skipped without the peers (failed under ``IMAGINATOR_REQUIRE_PEERS=1``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.utils import getProcessOutputAndValue

from tests.e2e.test_debian_bootstrap import BASE, DEBIAN, HELLO, sample_config_in
from tests.support.configs import REPO, debian_mirror
from tests.support.daemon import Daemon
from tests.support.imageserver import HOST, PEERS, GoImageserver
from tests.support.treecompare import tree_listing

pytestmark = pytest.mark.slow

STREAMS = ("bootstrap/busybox", DEBIAN, BASE, HELLO)


async def run(program: str, *args: str, env: dict[str, str] | None = None) -> str:
    out, err, code = await getProcessOutputAndValue(
        program, args, env=env or {"PATH": os.environ["PATH"]}, path=str(REPO)
    )
    assert code == 0, f"{program} {' '.join(args)}: {err.decode()}"
    return out.decode()


async def build_all(arguments: list[str]) -> None:
    daemon = Daemon(arguments).start()
    try:
        await daemon.wait_listening()
        for stream in STREAMS:
            line = await daemon.wait_for(
                rf"(Built|Error building) image: {stream}[/:]", timeout=900
            )
            assert "Built image: " in line, daemon.output()
    finally:
        await daemon.stop()


def by_stream(names: list[str]) -> dict[str, str]:
    found = {name.rsplit("/", 1)[0]: name for name in names}
    assert len(found) == len(names), names
    return found


@pytest_twisted.ensureDeferred
async def test_the_sample_streams_on_the_go_imageserver_equal_the_embedded_store(tmp_path: Path):
    server = GoImageserver()
    try:
        await server.start()
        config = sample_config_in(tmp_path)
        plain = tmp_path / "plain-variables"
        plain.write_text(f"DEBIAN_MIRROR={debian_mirror()}\n")
        cert, key = server.client_cert()
        common = [
            "-portNum=0",
            f"-configurationUrl={(config / 'conf.json').as_uri()}",
            f"-plainVariablesFile={plain}",
            "-buildLogDir=",
            f"-certFile={cert}",
            f"-keyFile={key}",
            f"-CAfile={server.ca_file}",
        ]
        await build_all(
            [
                *common,
                f"-stateDir={tmp_path / 'remote'}",
                f"-imageServerHostname={HOST}",
                f"-imageServerPortNum={server.port}",
            ]
        )
        await build_all([*common, f"-stateDir={tmp_path / 'embedded'}"])

        go_tool = [
            f"-imageServerHostname={HOST}",
            f"-imageServerPortNum={server.port}",
            f"-certDirectory={server.cert_directory()}",
        ]
        ours = [sys.executable, "-m", "imaginator.tools.imagetool"]
        env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}
        remote = by_stream((await run(str(PEERS / "imagetool"), *go_tool, "list")).split())
        embedded_names = await run(*ours, f"-stateDir={tmp_path / 'embedded'}", "list", env=env)
        embedded = by_stream(embedded_names.split())
        assert sorted(remote) == sorted(embedded) == sorted(STREAMS)

        for stream in STREAMS:
            go_tree = tmp_path / "go" / stream.replace("/", "_")
            go_tree.mkdir(parents=True)
            await run(str(PEERS / "imagetool"), *go_tool, "get", remote[stream], str(go_tree))
            our_tree = tmp_path / "ours" / stream.replace("/", "_")
            await run(
                *ours,
                f"-stateDir={tmp_path / 'embedded'}",
                "get",
                embedded[stream],
                str(our_tree),
                env=env,
            )
            go_files = tree_listing(go_tree, mtimes=False)
            # imagetool get records the image it unpacked there.
            go_files.pop("/var/lib/initial-image")
            our_files = tree_listing(our_tree, mtimes=False)
            for parent in ("/var/lib", "/var"):
                if parent not in our_files:
                    go_files.pop(parent, None)
            differing = sorted(
                path
                for path in set(go_files) | set(our_files)
                if go_files.get(path) != our_files.get(path)
            )
            assert differing == [], stream
    finally:
        await server.stop()
        server.cleanup()
