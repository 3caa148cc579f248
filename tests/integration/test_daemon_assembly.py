"""``create_daemon`` in-process on the real reactor: the wiring, and stopping it."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.error import ConnectionRefusedError

from imaginator.config.main import ConfigError
from imaginator.daemon import create_daemon
from imaginator.flags import FLAGS
from imaginator.lifecycle import (
    AUTO,
    BUILDS,
    COLLECTOR,
    DEPS,
    POOL,
    PUBLISH,
    STREAMS,
    VARIABLES,
    WEB,
)
from imaginator.runtime.threads import make_thread_pool
from tests.support.configs import busybox_conf


def options(tmp_path, **overrides: Any) -> dict[str, Any]:
    values = {flag.name: flag.parse(flag.default) for flag in FLAGS}
    values.update(
        portNum=0,
        stateDir=str(tmp_path / "state"),
        configurationUrl=busybox_conf(tmp_path, auto_rebuild=[]).as_uri(),
        buildLogDir="",
        imageRebuildInterval=0.0,
        # A fresh machine whatever this one has: RPC without TLS, allowed.
        permitInsecureMode=True,
    )
    values.update(overrides)
    return values


@pytest.fixture
def no_default_certificates(tmp_path, monkeypatch):
    """The certificate flags' defaults point at files that do not exist."""
    from imaginator import flags

    for name in ("CAfile", "certFile", "keyFile"):
        flag = flags.FLAGS_BY_NAME[name]
        replaced = type(flag)(flag.name, flag.kind, str(tmp_path / f"no-{name}.pem"), flag.help)
        monkeypatch.setitem(flags.FLAGS_BY_NAME, name, replaced)
    return {name: str(tmp_path / f"no-{name}.pem") for name in ("CAfile", "certFile", "keyFile")}


@pytest_twisted.ensureDeferred
async def test_create_daemon_wires_the_parts_and_stops_them(tmp_path, no_default_certificates):
    pool = make_thread_pool("test-daemon", 2)
    daemon = await create_daemon(options(tmp_path, **no_default_certificates), reactor, pool)
    try:
        names = [service.name for service in daemon.services]
        assert names == [POOL, VARIABLES, STREAMS, BUILDS, PUBLISH, DEPS, WEB, AUTO, COLLECTOR]
        assert all(service.running for service in daemon.services)
        # Passed in constructors, not patched in afterwards.
        assert daemon.rpc.auto is daemon.auto and daemon.rpc.deps is daemon.deps
        assert daemon.rpc.builder is daemon.builder
        assert daemon.web.site is daemon.site and daemon.site.http_factory.access_log is None
        page = await treq.get(f"http://127.0.0.1:{daemon.port}/healthz")
        assert page.code == 200
        assert daemon.site.config.permit_insecure and daemon.site.config.tls_factory is None
    finally:
        await daemon.services.stopService()
    assert not any(service.running for service in daemon.services)
    assert daemon.builder.shutting_down
    assert not pool.started
    with pytest.raises(ConnectionRefusedError):
        await treq.get(f"http://127.0.0.1:{daemon.port}/healthz")


@pytest_twisted.ensureDeferred
async def test_a_failed_start_stops_what_was_started(tmp_path, no_default_certificates):
    conf = tmp_path / "bad.json"
    conf.write_text("{ not json")
    pool = make_thread_pool("test-daemon", 2)
    with pytest.raises(ConfigError, match=r"bad\.json"):
        await create_daemon(
            options(tmp_path, configurationUrl=conf.as_uri(), **no_default_certificates),
            reactor,
            pool,
        )
    assert not pool.started
