"""Certificates for SRPC: a CA, the daemon's certificate, user certificates.

Keys are ECDSA P-256: small, fast to generate and to handshake with (which
matters for tests that make many certificates and connections), and accepted
by Go's ``crypto/tls`` and ``crypto/x509`` exactly like RSA keys. Private keys
are written as unencrypted PKCS#8 PEM, which Go's ``tls.X509KeyPair`` reads.

User certificates carry the Dominator identity extensions (reference §1.8):
``1.3.6.1.4.1.9586.100.7.1`` lists the permitted methods (``Service.Method``
globs) and ``1.3.6.1.4.1.9586.100.7.2`` the groups, each a DER
``SEQUENCE OF UTF8String``.

Command line (Go-style flags, ``-name value`` or ``-name=value``)::

    imaginator-certs init [-caFile F] [-caKeyFile F] [-certFile F] [-keyFile F]
                          [-hostnames localhost,<hostname>] [-methods S.M,...|imageserver]
    imaginator-certs user NAME [-groups a,b] [-methods S.M,...] [-days N]
                          [-certDirectory ~/.ssl] [-caFile F] [-caKeyFile F]
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import socket
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from imaginator.srpc.identity import GROUPS_OID, PERMITTED_METHODS_OID, encode_string_sequence

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

#: The kinds of private key a CA certificate is signed with.
_ISSUER_KEYS = (
    ec.EllipticCurvePrivateKey,
    rsa.RSAPrivateKey,
    dsa.DSAPrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)

PROGRAM = "imaginator-certs"
CLOCK_SKEW = datetime.timedelta(minutes=5)

DEFAULT_CA_FILE = "/etc/ssl/CA.pem"
DEFAULT_CA_KEY_FILE = "/etc/ssl/CA.key"
DEFAULT_CERT_FILE = "/etc/ssl/imaginator/cert.pem"
DEFAULT_KEY_FILE = "/etc/ssl/imaginator/key.pem"
DEFAULT_CERT_DIRECTORY = "~/.ssl"

IMAGESERVER_METHODS = (
    "ImageServer.AddImage",
    "ImageServer.ChangeImageExpiration",
    "ImageServer.CheckImage",
    "ImageServer.FindLatestImage",
    "ImageServer.GetImage",
    "ImageServer.ListDirectories",
    "ImageServer.ListImages",
    "ImageServer.MakeDirectory",
    "ObjectServer.AddObjects",
    "ObjectServer.CheckObjects",
    "ObjectServer.GetObjects",
)
"""The methods the daemon calls on a Dominator imageserver: the powers its
certificate needs there (``-methods imageserver`` of ``init`` grants them)."""

USAGE = f"""\
Usage: {PROGRAM} init [flags]
       {PROGRAM} user NAME [flags]

init: create the CA (if {DEFAULT_CA_FILE} is missing; an existing CA is never
      overwritten) and the daemon's certificate and key, signed by the CA.
  -caFile string      CA certificate (default "{DEFAULT_CA_FILE}")
  -caKeyFile string   CA private key (default "{DEFAULT_CA_KEY_FILE}")
  -certFile string    daemon certificate (default "{DEFAULT_CERT_FILE}")
  -keyFile string     daemon private key (default "{DEFAULT_KEY_FILE}")
  -hostnames string   comma-separated names for the daemon certificate
                      (default "localhost,<this host's name>")
  -methods string     comma-separated methods the daemon certificate permits on
                      other SRPC servers; "imageserver" stands for those the daemon
                      calls on a Dominator imageserver (-imageServerHostname)

user: create NAME.cert and NAME.key for a user, signed by the CA.
  -caFile, -caKeyFile as above
  -certDirectory string  where to write them (default "{DEFAULT_CERT_DIRECTORY}")
  -days int              validity in days (default 365)
  -groups string         comma-separated groups
  -methods string        comma-separated permitted methods (e.g. Imaginator.BuildImage, *.*)
"""


class CertError(Exception):
    """A certificate operation that cannot be done (missing CA, bad input)."""


class UsageError(Exception):
    """A bad command line."""


# ---------------------------------------------------------------- library


def make_ca(common_name: str = "imaginator CA", days: int = 3650) -> tuple[bytes, bytes]:
    """A self-signed CA certificate; returns (certificate PEM, key PEM)."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    not_before, not_after = _validity(days, None, None)
    builder = (
        _builder(name, name, key.public_key(), not_before, not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    cert = builder.sign(key, hashes.SHA256())
    return _cert_pem(cert), _key_pem(key)


def make_server_cert(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    hostnames: Sequence[str],
    days: int = 825,
    *,
    methods: Sequence[str] = (),
) -> tuple[bytes, bytes]:
    """A daemon certificate for ``hostnames`` (CN = the first), signed by the CA.

    It is valid for both server and client authentication, because the daemon
    presents the same certificate when it calls other SRPC servers; the
    permitted ``methods`` are its powers there (e.g. ``IMAGESERVER_METHODS``
    on an imageserver).
    """
    names = [name for name in hostnames if name]
    if not names:
        raise CertError("at least one hostname is needed")
    _check_methods(methods)
    extended = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    extensions: list[x509.ExtensionType] = [
        x509.SubjectAlternativeName([_general_name(name) for name in names]),
        x509.ExtendedKeyUsage(extended),
    ]
    if methods:
        extensions.append(_strings_extension(PERMITTED_METHODS_OID, methods))
    return _issue(ca_cert_pem, ca_key_pem, names[0], extensions, _validity(days, None, None))


def _check_methods(methods: Sequence[str]) -> None:
    for method in methods:
        if method.count(".") != 1:
            raise CertError(f"permitted method must be Service.Method: {method!r}")


def make_user_cert(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    username: str,
    *,
    groups: Sequence[str] = (),
    methods: Sequence[str] = (),
    days: int = 365,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> tuple[bytes, bytes]:
    """A client certificate for ``username`` with groups and permitted methods.

    ``not_before``/``not_after`` override the validity (tests use them for
    expired certificates); by default it starts a few minutes ago and lasts
    ``days``.
    """
    if not username:
        raise CertError("a user name is needed")
    _check_methods(methods)
    extensions: list[x509.ExtensionType] = [
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    ]
    if methods:
        extensions.append(_strings_extension(PERMITTED_METHODS_OID, methods))
    if groups:
        extensions.append(_strings_extension(GROUPS_OID, groups))
    validity = _validity(days, not_before, not_after)
    return _issue(ca_cert_pem, ca_key_pem, username, extensions, validity)


def _issue(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    common_name: str,
    extensions: list[x509.ExtensionType],
    validity: tuple[datetime.datetime, datetime.datetime],
) -> tuple[bytes, bytes]:
    """A leaf certificate signed by the CA; returns (certificate PEM, key PEM)."""
    ca_cert, ca_key = _load_ca(ca_cert_pem, ca_key_pem)
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        _builder(subject, ca_cert.subject, key.public_key(), *validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return _cert_pem(cert), _key_pem(key)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(secrets.randbits(127) + 1)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )


def _validity(
    days: int, not_before: datetime.datetime | None, not_after: datetime.datetime | None
) -> tuple[datetime.datetime, datetime.datetime]:
    start = not_before or datetime.datetime.now(datetime.UTC) - CLOCK_SKEW
    end = not_after or start + CLOCK_SKEW + datetime.timedelta(days=days)
    if end <= start:
        raise CertError("certificate would expire before it becomes valid")
    return start, end


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _strings_extension(oid: x509.ObjectIdentifier, items: Sequence[str]) -> x509.ExtensionType:
    return x509.UnrecognizedExtension(oid, encode_string_sequence(items))


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _load_ca(
    ca_cert_pem: bytes, ca_key_pem: bytes
) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    try:
        cert = x509.load_pem_x509_certificate(ca_cert_pem)
        key = serialization.load_pem_private_key(ca_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CertError(f"cannot load the CA: {exc}") from None
    if cert.public_key() != key.public_key():
        raise CertError("the CA key does not belong to the CA certificate")
    if not isinstance(key, _ISSUER_KEYS):  # a key that matches a CA certificate signs
        raise CertError("the CA key cannot sign certificates")
    return cert, key


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# ---------------------------------------------------------------- files


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically with permissions ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def ensure_ca(ca_file: Path, ca_key_file: Path) -> tuple[bytes, bytes, bool]:
    """Load the CA, creating it when neither file exists; never overwrites.

    Returns (certificate PEM, key PEM, created).
    """
    have_cert, have_key = ca_file.exists(), ca_key_file.exists()
    if have_cert and have_key:
        return ca_file.read_bytes(), ca_key_file.read_bytes(), False
    if have_cert or have_key:
        missing = ca_key_file if have_cert else ca_file
        raise CertError(f"{missing} is missing but the CA exists: not overwriting it")
    cert_pem, key_pem = make_ca()
    write_file(ca_key_file, key_pem, 0o600)
    write_file(ca_file, cert_pem, 0o644)
    return cert_pem, key_pem, True


def load_ca_files(ca_file: Path, ca_key_file: Path) -> tuple[bytes, bytes]:
    """The CA certificate and key PEM; a missing file is a :class:`CertError`."""
    try:
        return ca_file.read_bytes(), ca_key_file.read_bytes()
    except FileNotFoundError as exc:
        raise CertError(f"{exc.filename}: no such file (run {PROGRAM} init)") from None


# ---------------------------------------------------------------- command line


@dataclass
class _Command:
    name: str = ""
    positional: list[str] = field(default_factory=list)
    flags: dict[str, str] = field(default_factory=dict)


_COMMAND_FLAGS = {
    "init": ("caFile", "caKeyFile", "certFile", "keyFile", "hostnames", "methods"),
    "user": ("caFile", "caKeyFile", "certDirectory", "days", "groups", "methods"),
}


def parse_command_line(argv: Sequence[str]) -> _Command:
    """The command, its positional arguments and its Go-style flags."""
    if not argv:
        raise UsageError("missing command")
    command = _Command(name=argv[0])
    if command.name not in _COMMAND_FLAGS:
        raise UsageError(f"unknown command: {command.name}")
    allowed = _COMMAND_FLAGS[command.name]
    index = 1
    while index < len(argv):
        arg = argv[index]
        index += 1
        if not arg.startswith("-") or arg == "-":
            command.positional.append(arg)
            continue
        name, has_value, value = arg.lstrip("-").partition("=")
        if name not in allowed:
            raise UsageError(f"flag provided but not defined: -{name}")
        if not has_value:
            if index >= len(argv):
                raise UsageError(f"flag needs an argument: -{name}")
            value, index = argv[index], index + 1
        command.flags[name] = value
    return command


def _split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def default_hostnames() -> list[str]:
    """``localhost`` plus this host's name and, if different, its FQDN."""
    names = ["localhost", socket.gethostname()]
    fqdn = socket.getfqdn()
    if fqdn and fqdn not in names:
        names.append(fqdn)
    return names


def cmd_init(command: _Command) -> None:
    """Create the CA if missing, then the daemon's certificate and key."""
    if command.positional:
        raise UsageError("init: unexpected arguments")
    flags = command.flags
    ca_file = Path(flags.get("caFile", DEFAULT_CA_FILE))
    ca_key_file = Path(flags.get("caKeyFile", DEFAULT_CA_KEY_FILE))
    hostnames = _split_list(flags["hostnames"]) if "hostnames" in flags else default_hostnames()
    ca_pem, ca_key_pem, created = ensure_ca(ca_file, ca_key_file)
    print(f"{'created' if created else 'using existing'} CA {ca_file}")
    methods: list[str] = []
    for method in _split_list(flags.get("methods", "")):
        methods += IMAGESERVER_METHODS if method == "imageserver" else [method]
    cert_pem, key_pem = make_server_cert(ca_pem, ca_key_pem, hostnames, methods=methods)
    cert_file = Path(flags.get("certFile", DEFAULT_CERT_FILE))
    key_file = Path(flags.get("keyFile", DEFAULT_KEY_FILE))
    write_file(key_file, key_pem, 0o600)
    write_file(cert_file, cert_pem, 0o644)
    print(f"wrote {cert_file} and {key_file} for {','.join(hostnames)}")


def cmd_user(command: _Command) -> None:
    """Create ``NAME.cert`` and ``NAME.key`` in the certificate directory."""
    if len(command.positional) != 1:
        raise UsageError("user: expected exactly one NAME")
    name = command.positional[0]
    if not name or "/" in name or name in (".", ".."):
        raise UsageError(f"user: bad name: {name!r}")
    flags = command.flags
    try:
        days = int(flags.get("days", "365"))
    except ValueError:
        raise UsageError(f"invalid value {flags['days']!r} for flag -days") from None
    ca_pem, ca_key_pem = load_ca_files(
        Path(flags.get("caFile", DEFAULT_CA_FILE)),
        Path(flags.get("caKeyFile", DEFAULT_CA_KEY_FILE)),
    )
    cert_pem, key_pem = make_user_cert(
        ca_pem,
        ca_key_pem,
        name,
        groups=_split_list(flags.get("groups", "")),
        methods=_split_list(flags.get("methods", "")),
        days=days,
    )
    directory = Path(os.path.expanduser(flags.get("certDirectory", DEFAULT_CERT_DIRECTORY)))
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_file(directory / f"{name}.key", key_pem, 0o600)
    write_file(directory / f"{name}.cert", cert_pem, 0o644)
    print(f"wrote {directory / f'{name}.cert'} and {directory / f'{name}.key'}")


_COMMANDS = {"init": cmd_init, "user": cmd_user}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``imaginator-certs``; returns the exit status (0, 1 error, 2 usage)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(arg.lstrip("-") in ("h", "help") and arg.startswith("-") for arg in args):
        sys.stdout.write(USAGE)
        return 0
    try:
        command = parse_command_line(args)
        _COMMANDS[command.name](command)
    except UsageError as exc:
        print(f"{PROGRAM}: {exc}", file=sys.stderr)
        sys.stderr.write(USAGE)
        return 2
    except CertError as exc:
        print(f"{PROGRAM}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{PROGRAM}: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
