"""imaginator-certs: the CA, daemon and user certificates, and the command line."""

from __future__ import annotations

import datetime
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from imaginator.srpc.identity import GROUPS_OID, PERMITTED_METHODS_OID, identity_from_chain
from imaginator.tools.certs import (
    IMAGESERVER_METHODS,
    CertError,
    main,
    make_ca,
    make_server_cert,
    make_user_cert,
)


def load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def ca() -> tuple[bytes, bytes]:
    return make_ca("unit CA")


# ------------------------------------------------------------------ library


def test_ca(ca: tuple[bytes, bytes]) -> None:
    cert = load(ca[0])
    assert common_name(cert) == "unit CA"
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=3650) <= lifetime <= datetime.timedelta(days=3651)
    key = serialization.load_pem_private_key(ca[1], None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert ca[1].startswith(b"-----BEGIN PRIVATE KEY-----")


def test_server_certificate(ca: tuple[bytes, bytes]) -> None:
    cert_pem, key_pem = make_server_cert(*ca, ["imaginator.example", "localhost", "127.0.0.1"])
    cert = load(cert_pem)
    cert.verify_directly_issued_by(load(ca[0]))
    assert common_name(cert) == "imaginator.example"
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["imaginator.example", "localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=825) <= lifetime <= datetime.timedelta(days=826)
    key = serialization.load_pem_private_key(key_pem, None)
    assert key.public_key() == cert.public_key()


def test_server_certificate_needs_a_name(ca: tuple[bytes, bytes]) -> None:
    with pytest.raises(CertError):
        make_server_cert(*ca, ["", ""])


def test_user_certificate_extensions_are_exact_der(ca: tuple[bytes, bytes]) -> None:
    cert_pem, _ = make_user_cert(*ca, "alice", groups=["devs"], methods=["A.B", "*.*"])
    cert = load(cert_pem)
    cert.verify_directly_issued_by(load(ca[0]))
    methods = cert.extensions.get_extension_for_oid(PERMITTED_METHODS_OID)
    groups = cert.extensions.get_extension_for_oid(GROUPS_OID)
    assert not methods.critical and not groups.critical
    assert methods.value.value == b"\x30\x0a\x0c\x03A.B\x0c\x03*.*"  # type: ignore[attr-defined]
    assert groups.value.value == b"\x30\x06\x0c\x04devs"  # type: ignore[attr-defined]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    identity = identity_from_chain([cert, load(ca[0])])
    assert (identity.username, identity.groups) == ("alice", frozenset({"devs"}))
    assert identity.permitted_methods == frozenset({"A.B", "*.*"})


def test_user_certificate_without_groups_or_methods(ca: tuple[bytes, bytes]) -> None:
    cert = load(make_user_cert(*ca, "bob")[0])
    oids = {extension.oid for extension in cert.extensions}
    assert PERMITTED_METHODS_OID not in oids and GROUPS_OID not in oids
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=365) <= lifetime <= datetime.timedelta(days=366)


def test_user_certificate_validity_override(ca: tuple[bytes, bytes]) -> None:
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    end = datetime.datetime(2020, 2, 1, tzinfo=datetime.UTC)
    cert = load(make_user_cert(*ca, "old", not_before=start, not_after=end)[0])
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (start, end)
    cert = load(make_user_cert(*ca, "short", days=2)[0])
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=2) <= lifetime <= datetime.timedelta(days=2, minutes=10)


@pytest.mark.parametrize("method", ["NoDot", "a.b.c"])
def test_user_certificate_refuses_bad_methods(ca: tuple[bytes, bytes], method: str) -> None:
    with pytest.raises(CertError):
        make_user_cert(*ca, "u", methods=[method])


def test_mismatched_ca_key(ca: tuple[bytes, bytes]) -> None:
    other_key = make_ca()[1]
    with pytest.raises(CertError, match="does not belong"):
        make_user_cert(ca[0], other_key, "u")


def test_ca_key_that_cannot_sign(ca: tuple[bytes, bytes]) -> None:
    # An X25519 key can be certified (by another CA) but cannot sign certificates.
    issuer = serialization.load_pem_private_key(ca[1], password=None)
    assert isinstance(issuer, ec.EllipticCurvePrivateKey)
    key = x25519.X25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x25519")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(load(ca[0]).subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(issuer, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(CertError, match=r"^the CA key cannot sign certificates$"):
        make_user_cert(cert.public_bytes(serialization.Encoding.PEM), key_pem, "u")


# ------------------------------------------------------------------ command line


def init_args(tmp: Path, *extra: str) -> list[str]:
    return [
        "init",
        "-caFile",
        str(tmp / "ssl/CA.pem"),
        f"-caKeyFile={tmp / 'ssl/CA.key'}",
        "-certFile",
        str(tmp / "ssl/imaginator/cert.pem"),
        "--keyFile",
        str(tmp / "ssl/imaginator/key.pem"),
        *extra,
    ]


def test_init_creates_the_ca_and_the_daemon_certificate(tmp_path: Path) -> None:
    assert main(init_args(tmp_path, "-hostnames", "build.example,localhost")) == 0
    ssl = tmp_path / "ssl"
    assert mode(ssl / "CA.key") == 0o600
    assert mode(ssl / "imaginator/key.pem") == 0o600
    assert mode(ssl / "CA.pem") == 0o644
    cert = load((ssl / "imaginator/cert.pem").read_bytes())
    cert.verify_directly_issued_by(load((ssl / "CA.pem").read_bytes()))
    assert common_name(cert) == "build.example"


def test_init_grants_the_daemon_methods_on_other_servers(tmp_path: Path) -> None:
    assert main(init_args(tmp_path, "-methods", "imageserver,Imaginator.BuildImage")) == 0
    cert = load((tmp_path / "ssl/imaginator/cert.pem").read_bytes())
    identity = identity_from_chain([cert])
    assert identity.permitted_methods == {*IMAGESERVER_METHODS, "Imaginator.BuildImage"}
    assert "ObjectServer.AddObjects" in identity.permitted_methods
    assert main(init_args(tmp_path)) == 0  # and none by default
    plain = load((tmp_path / "ssl/imaginator/cert.pem").read_bytes())
    assert identity_from_chain([plain]).permitted_methods == frozenset()


def test_init_never_overwrites_the_ca(tmp_path: Path) -> None:
    assert main(init_args(tmp_path)) == 0
    ssl = tmp_path / "ssl"
    ca_before = (ssl / "CA.pem").read_bytes(), (ssl / "CA.key").read_bytes()
    daemon_before = (ssl / "imaginator/cert.pem").read_bytes()
    assert main(init_args(tmp_path)) == 0
    assert ((ssl / "CA.pem").read_bytes(), (ssl / "CA.key").read_bytes()) == ca_before
    daemon_after = (ssl / "imaginator/cert.pem").read_bytes()
    assert daemon_after != daemon_before
    load(daemon_after).verify_directly_issued_by(load(ca_before[0]))


def test_init_with_half_a_ca_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ssl").mkdir()
    (tmp_path / "ssl/CA.pem").write_bytes(b"existing")
    assert main(init_args(tmp_path)) == 1
    assert "not overwriting" in capsys.readouterr().err
    assert (tmp_path / "ssl/CA.pem").read_bytes() == b"existing"
    assert not (tmp_path / "ssl/CA.key").exists()


def test_default_hostnames_include_localhost(tmp_path: Path) -> None:
    assert main(init_args(tmp_path)) == 0
    cert = load((tmp_path / "ssl/imaginator/cert.pem").read_bytes())
    assert common_name(cert) == "localhost"
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert len(names.get_values_for_type(x509.DNSName)) >= 2


def test_user_command(tmp_path: Path) -> None:
    assert main(init_args(tmp_path)) == 0
    certs = tmp_path / "home/.ssl"
    code = main(
        [
            "user",
            "alice",
            "-groups",
            "devs,ops",
            "-methods=Imaginator.BuildImage,Imaginator.GetDependencies",
            "-days",
            "30",
            "-certDirectory",
            str(certs),
            "-caFile",
            str(tmp_path / "ssl/CA.pem"),
            "-caKeyFile",
            str(tmp_path / "ssl/CA.key"),
        ]
    )
    assert code == 0
    assert mode(certs / "alice.key") == 0o600
    assert mode(certs) == 0o700
    cert = load((certs / "alice.cert").read_bytes())
    identity = identity_from_chain([cert])
    assert identity.username == "alice"
    assert identity.groups == frozenset({"devs", "ops"})
    assert identity.permitted_methods == frozenset(
        {"Imaginator.BuildImage", "Imaginator.GetDependencies"}
    )
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime <= datetime.timedelta(days=30, minutes=10)
    key = serialization.load_pem_private_key((certs / "alice.key").read_bytes(), None)
    assert key.public_key() == cert.public_key()


def test_user_command_default_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(init_args(tmp_path)) == 0
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ca_flags = ["-caFile", str(tmp_path / "ssl/CA.pem"), "-caKeyFile", str(tmp_path / "ssl/CA.key")]
    assert main(["user", "bob", *ca_flags]) == 0
    assert (tmp_path / "home/.ssl/bob.cert").is_file()


def test_user_command_without_a_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["user", "bob", "-caFile", str(tmp_path / "no.pem"), "-certDirectory", "x"])
    assert code == 1
    assert "run imaginator-certs init" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["user"],
        ["user", "a", "b"],
        ["user", "a/b"],
        ["user", "a", "-days", "many"],
        ["user", "a", "-hostnames", "x"],
        ["init", "extra"],
        ["init", "-caFile"],
    ],
)
def test_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "Usage:" in capsys.readouterr().err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-h"]) == 0
    assert "imaginator-certs user NAME" in capsys.readouterr().out
