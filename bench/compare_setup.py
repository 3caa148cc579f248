"""What ``compare_go.py`` prepares before starting any daemon: certificates and the workload.

The workload is one configuration written for both daemons: a bootstrap stream
(Debian 12 minbase by ``debootstrap``, or busybox for ``--quick``), a layered
stream ``bench/base`` on it (one package, one file) and ``bench/app`` on that
(one file), from manifests committed to a local git repository, all three
listed for the automatic rebuild cycle.

The two configuration files differ in one place only: the Debian mirror. Ours
reads ``$DEBIAN_MIRROR`` from the host's variables file (the plain one that
``scripts/setup-host`` writes, or an older secret one), given as
``-variablesFile``; the Go imaginator expands a bootstrap command with the
request's variables only (reference §3.6), so its copy carries the value itself.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CONF = REPO / "sample-config" / "conf.json"
VARIABLES_FILE = Path("/etc/imaginator/variables")
PLAIN_VARIABLES_FILE = Path("/etc/imaginator/plain-variables")

#: The certificate user the requests come from; its certificate grants ``Imaginator.*``.
BENCH_USER = "bench"
#: Common names of the daemons' certificates: the imageserver trusts these users.
GO_IDENTITY = "imaginator-go"
OURS_IDENTITY = "imaginator-ours"
IMAGESERVER_IDENTITY = "imageserver"

BASE_STREAM = "bench/base"
APP_STREAM = "bench/app"
#: The one package of the layered stream (not in a minbase root).
DEBIAN_PACKAGE = "less"

#: ``--fast-paths=off``: ours without any of its fast paths (README, "Fast paths").
FAST_PATHS_OFF = {
    "NoFsyncInBuilds": False,
    "ReuseBootstrapTrees": False,
    "SkipUnchangedBuilds": False,
    "PackageCaches": [],
}

#: ``--fast-paths`` choices: the sample's, all off, or the sample's without one.
FAST_PATHS_CHOICES = ("sample", "off", *(f"without-{name}" for name in FAST_PATHS_OFF))


def fast_paths_setting(sample: dict, choice: str) -> dict:
    """The ``FastPaths`` object for a ``--fast-paths`` choice (see :data:`FAST_PATHS_CHOICES`)."""
    if choice == "sample":
        return sample
    if choice == "off":
        return FAST_PATHS_OFF
    name = choice.removeprefix("without-")
    if name == choice or name not in FAST_PATHS_OFF:
        raise ValueError(f"unknown fast paths choice: {choice}")
    return {**sample, name: FAST_PATHS_OFF[name]}


_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


class SetupError(Exception):
    """Something the benchmark needs is missing; the message says what to do."""


def go_arch() -> str:
    """The ``$ARCH`` both daemons expand stream names with."""
    machine = platform.machine().lower()
    return _GOARCH.get(machine, machine)


def parse_variables(text: str) -> dict[str, str]:
    """A variables file: a JSON object, or ``NAME=Value`` lines (``#`` comments)."""
    body = "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith(("#", "//", "!"))
    )
    if body.strip().startswith("{"):
        document = json.loads(body)
        return {str(k): str(v) for k, v in document.items()}
    result = {}
    for line in body.splitlines():
        name, has_value, value = line.strip().partition("=")
        if has_value and name.strip():
            result[name.strip()] = value
    return result


def mirror_file(paths: tuple[Path, ...] = (PLAIN_VARIABLES_FILE, VARIABLES_FILE)) -> Path:
    """The first of the host's variables files that defines ``DEBIAN_MIRROR``."""
    for path in paths:
        try:
            if parse_variables(path.read_text()).get("DEBIAN_MIRROR"):
                return path
        except OSError:
            continue
    shown = " or ".join(str(path) for path in paths)
    raise SetupError(f"no DEBIAN_MIRROR in {shown}: run scripts/setup-host first")


def debian_mirror(path: Path | None = None) -> str:
    """``DEBIAN_MIRROR`` from the host's variables files (never a built-in mirror)."""
    path = mirror_file() if path is None else path
    try:
        variables = parse_variables(path.read_text())
    except OSError as exc:
        raise SetupError(f"{path}: {exc.strerror}: run scripts/setup-host first") from None
    mirror = variables.get("DEBIAN_MIRROR", "")
    if not mirror:
        raise SetupError(f"{path} has no DEBIAN_MIRROR: run scripts/setup-host first")
    return mirror


def load_sample() -> dict:
    """The sample configuration (comment lines dropped, as both daemons read it)."""
    lines = [
        line
        for line in SAMPLE_CONF.read_text().splitlines()
        if not line.lstrip().startswith(("#", "//", "!"))
    ]
    return json.loads("\n".join(lines))


# ------------------------------------------------------------------ certificates


def make_certificates(pki: Path) -> None:
    """A CA, a certificate per daemon and imageserver, and the requesting user's.

    Made with our ``imaginator-certs`` (run from this repository), so the Go
    programs and ours trust the same CA.
    """
    ca = ["-caFile", str(pki / "CA.pem"), "-caKeyFile", str(pki / "CA.key")]
    for identity in (IMAGESERVER_IDENTITY, GO_IDENTITY, OURS_IDENTITY):
        _certs(
            "init",
            *ca,
            "-certFile",
            str(pki / f"{identity}.cert"),
            "-keyFile",
            str(pki / f"{identity}.key"),
            "-hostnames",
            f"{identity},localhost,127.0.0.1",
        )
    _certs("user", BENCH_USER, "-methods", "Imaginator.*", "-certDirectory", str(pki / "user"), *ca)


def _certs(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "imaginator.tools.certs", *args],
        cwd=REPO,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SetupError(f"imaginator-certs {args[0]} failed: {result.stderr.strip()}")


# ------------------------------------------------------------------ workload


@dataclass(frozen=True)
class Workload:
    """The files of the configuration and the names of its streams."""

    bootstrap: str
    base: str
    app: str
    go_conf: Path
    ours_conf: Path
    #: ``-variablesFile`` for ours (``None``: no variables needed).
    ours_variables: Path | None

    @property
    def chain(self) -> tuple[str, str, str]:
        return (self.bootstrap, self.base, self.app)


#: The sample's Debian 12 bootstrap stream made by each ``--bootstrap`` program.
DEBIAN_STREAMS = {
    "debootstrap": "bootstrap/Debian-12/$ARCH",
    "mmdebstrap": "bootstrap/Debian-12-mm/$ARCH",
}


def write_workload(
    root: Path, *, quick: bool, fast_paths: str = "sample", bootstrap: str = "debootstrap"
) -> Workload:
    """Write the manifests repository, the image streams and both conf.json files.

    Both get the sample's ``FastPaths`` (the Go imaginator ignores the key), or
    with ``fast_paths="off"`` every fast path switched off, or with
    ``"without-NAME"`` the sample's with that one switched off. The Debian root
    is made by ``bootstrap`` (a key of :data:`DEBIAN_STREAMS`).
    """
    root.mkdir(parents=True, exist_ok=True)
    sample = load_sample()
    arch = go_arch()
    if quick:
        bootstrap_key, bootstrap = "bootstrap/busybox", _busybox_stream(sample)
        packagers = {"busybox": _busybox_packager(sample)}
        package, mirror, variables = "benchpkg", None, None
    else:
        bootstrap_key, bootstrap = _debian_stream(sample, DEBIAN_STREAMS[bootstrap])
        packagers = {"deb": sample["PackagerTypes"]["deb"]}
        variables = mirror_file()
        package, mirror = DEBIAN_PACKAGE, debian_mirror(variables)
    bootstrap_name = bootstrap_key.replace("$ARCH", arch)

    repository = root / "manifests"
    _write_manifests(repository, bootstrap_name, package)
    streams = root / "image-streams.json"
    streams.write_text(
        json.dumps(
            {
                "Streams": {
                    BASE_STREAM: {"ManifestUrl": repository.as_uri(), "ManifestDirectory": "base"},
                    APP_STREAM: {"ManifestUrl": repository.as_uri(), "ManifestDirectory": "app"},
                }
            },
            indent=4,
        )
    )
    conf = {
        "BootstrapStreams": {bootstrap_key: bootstrap},
        "PackagerTypes": packagers,
        "ImageStreamsUrl": streams.as_uri(),
        "ImageStreamsToAutoRebuild": [bootstrap_key, BASE_STREAM, APP_STREAM],
        "FastPaths": fast_paths_setting(sample.get("FastPaths", {}), fast_paths),
    }
    ours_conf, go_conf = root / "conf-ours.json", root / "conf-go.json"
    ours_conf.write_text(json.dumps(conf, indent=4))
    if mirror is not None:
        command = [_with_mirror(arg, mirror) for arg in bootstrap["BootstrapCommand"]]
        conf["BootstrapStreams"] = {bootstrap_key: {**bootstrap, "BootstrapCommand": command}}
    go_conf.write_text(json.dumps(conf, indent=4))
    return Workload(bootstrap_name, BASE_STREAM, APP_STREAM, go_conf, ours_conf, variables)


def _with_mirror(argument: str, mirror: str) -> str:
    return argument.replace("${DEBIAN_MIRROR}", mirror).replace("$DEBIAN_MIRROR", mirror)


def _debian_stream(sample: dict, key: str) -> tuple[str, dict]:
    """The sample's Debian 12 stream ``key``, its filter and triggers as absolute URLs."""
    stream = dict(sample["BootstrapStreams"][key])
    for field in ("ImageFilterUrl", "ImageTriggersUrl"):
        if stream.get(field):
            stream[field] = (SAMPLE_CONF.parent / stream[field]).as_uri()
    return key, stream


def _busybox_stream(sample: dict) -> dict:
    return dict(sample["BootstrapStreams"]["bootstrap/busybox"])


def _busybox_packager(sample: dict) -> dict:
    """The sample's busybox packager, made able to "install" a package, in Go's dialect.

    Install records the package under ``/var/lib/bench-packages`` so the layered
    stream runs update, upgrade and install like the Debian one. The list
    command avoids single quotes: the Go imaginator writes arguments into
    ``/bin/generic-packager`` inside single quotes without escaping them
    (reference §5.8.1), which breaks the sample's ``cut -d' '``.
    """
    packager = dict(sample["PackagerTypes"]["busybox"])
    packager["InstallCommand"] = [
        "/bin/sh",
        "-c",
        "mkdir -p /var/lib/bench-packages; "
        'for p; do echo "$p 1" > /var/lib/bench-packages/$p; done',
        "install",
    ]
    packager["ListCommand"] = {
        "ArgList": [
            "/bin/sh",
            "-c",
            'echo busybox $(busybox | head -1 | cut -d" " -f2) '
            "$(( $(wc -c < /bin/busybox) / 1024 )); cat /var/lib/bench-packages/* 2>/dev/null"
            "; true",
        ],
        "SizeMultiplier": 1024,
    }
    return packager


def _write_manifests(repository: Path, bootstrap: str, package: str) -> None:
    """A git repository (branch ``master``, which the Go imaginator assumes) of two manifests."""
    files = {
        "base/manifest": json.dumps({"SourceImage": bootstrap}) + "\n",
        "base/package-list": package + "\n",
        "base/files/etc/bench-base": "layered by compare_go.py\n",
        "app/manifest": json.dumps({"SourceImage": BASE_STREAM}) + "\n",
        "app/files/etc/bench-app": "application layer of compare_go.py\n",
    }
    for relative, content in files.items():
        path = repository / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    git = ["git", "-C", str(repository), "-c", "user.name=bench", "-c", "user.email=bench@bench"]
    for args in (["init", "-q", "-b", "master"], ["add", "-A"], ["commit", "-q", "-m", "bench"]):
        result = subprocess.run([*git, *args], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SetupError(f"git {args[0]} failed: {result.stderr.strip()}")
