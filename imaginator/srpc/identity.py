"""Who is calling, and may they call this method (reference §1.8).

A TLS client certificate carries the caller's identity: the username is the
certificate's CommonName, the groups and the *permitted methods* ("method
powers") come from two Dominator certificate extensions, each a DER
``SEQUENCE OF`` string. :class:`Authoriser` applies the Go server's per-call
rules, first match wins:

1. method powers: a permitted-method glob matches ``Service.Method``, or the
   user is a trusted user, or one of the user's groups is a trusted group;
2. a *public* method, and the caller has a username;
3. an *unauthenticated* method;
4. otherwise: access to method denied.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

PERMITTED_METHODS_OID = x509.ObjectIdentifier("1.3.6.1.4.1.9586.100.7.1")
GROUPS_OID = x509.ObjectIdentifier("1.3.6.1.4.1.9586.100.7.2")

# DER string types Go's asn1 package accepts for a []string element.
_STRING_TAGS = {
    0x0C: "utf-8",  # UTF8String
    0x12: "ascii",  # NumericString
    0x13: "ascii",  # PrintableString
    0x14: "latin-1",  # T61String (Go decodes it as Latin-1)
    0x16: "ascii",  # IA5String
    0x1E: "utf-16-be",  # BMPString
}
_SEQUENCE_TAG = 0x30


class AuthError(Exception):
    """A certificate whose identity extensions cannot be used."""


class GlobError(ValueError):
    """A malformed ``filepath.Match`` pattern."""


@dataclass(frozen=True)
class Identity:
    """The caller named by a verified certificate chain."""

    username: str
    groups: frozenset[str]
    permitted_methods: frozenset[str]


@dataclass(frozen=True)
class CallAuth:
    """What a handler learns about its caller (Go's ``AuthInformation``)."""

    username: str
    groups: frozenset[str]
    have_method_access: bool


# A plaintext connection on a server that permits insecure mode: like the Go
# server without required TLS, it may call every method, with method powers.
INSECURE_IDENTITY = Identity(username="", groups=frozenset(), permitted_methods=frozenset({"*.*"}))


# ---------------------------------------------------------------- DER strings


def encode_string_sequence(items: Iterable[str]) -> bytes:
    """DER ``SEQUENCE OF UTF8String`` holding ``items`` in order."""
    body = b"".join(_der_element(0x0C, item.encode("utf-8")) for item in items)
    return _der_element(_SEQUENCE_TAG, body)


def decode_string_sequence(data: bytes) -> list[str]:
    """Parse a DER ``SEQUENCE OF`` string; trailing bytes are an error."""
    tag, body, rest = _read_element(data)
    if tag != _SEQUENCE_TAG:
        raise AuthError(f"expected an ASN.1 SEQUENCE, found tag 0x{tag:02x}")
    if rest:
        raise AuthError("trailing data after ASN.1 SEQUENCE")
    items = []
    while body:
        tag, value, body = _read_element(body)
        encoding = _STRING_TAGS.get(tag)
        if encoding is None:
            raise AuthError(f"unexpected ASN.1 tag 0x{tag:02x} in string sequence")
        try:
            items.append(value.decode(encoding))
        except UnicodeDecodeError as exc:
            raise AuthError(f"bad ASN.1 string: {exc}") from None
    return items


def _der_element(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(body)) + body


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(encoded)]) + encoded


def _read_element(data: bytes) -> tuple[int, bytes, bytes]:
    """(tag, body, remaining bytes) of the first DER element of ``data``."""
    if len(data) < 2:
        raise AuthError("truncated ASN.1 element")
    tag, first = data[0], data[1]
    offset = 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or len(data) < offset + count:
            raise AuthError("bad ASN.1 length")
        length = int.from_bytes(data[offset : offset + count], "big")
        offset += count
    if len(data) < offset + length:
        raise AuthError("truncated ASN.1 element")
    return tag, data[offset : offset + length], data[offset + length :]


# ---------------------------------------------------------------- identity


def identity_from_chain(certs: Sequence[x509.Certificate]) -> Identity:
    """The identity carried by a verified chain, ordered leaf to root.

    Username: the first non-empty CommonName. Groups: the first non-empty
    groups extension. Permitted methods: the union over every certificate;
    an entry without exactly one ``.`` raises :class:`AuthError`.
    """
    username = ""
    groups: list[str] = []
    methods: set[str] = set()
    for cert in certs:
        if not username:
            username = _common_name(cert)
        if not groups:
            groups = _extension_strings(cert, GROUPS_OID)
        for method in _extension_strings(cert, PERMITTED_METHODS_OID):
            if method.count(".") != 1:
                raise AuthError(f"bad permitted method: {method!r}")
            methods.add(method)
    return Identity(username, frozenset(groups), frozenset(methods))


def _common_name(cert: x509.Certificate) -> str:
    for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = attribute.value
        text = value if isinstance(value, str) else value.decode("utf-8", "replace")
        if text:
            return text
    return ""


def _extension_strings(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> list[str]:
    try:
        extension = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return []
    value = extension.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise AuthError(f"unexpected extension type for {oid.dotted_string}")
    return decode_string_sequence(value.value)


# ---------------------------------------------------------------- globbing


def glob_match(pattern: str, name: str) -> bool:
    """Go ``filepath.Match`` on Unix: ``*``, ``?``, ``[...]``, ``\\`` escapes.

    ``*`` and ``?`` never match ``/``. A malformed pattern raises
    :class:`GlobError`.
    """
    return _compile_glob(pattern).fullmatch(name) is not None


@functools.lru_cache(maxsize=512)
def _compile_glob(pattern: str) -> re.Pattern[str]:
    parts: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "*":
            parts.append("[^/]*")
            index += 1
        elif char == "?":
            parts.append("[^/]")
            index += 1
        elif char == "[":
            text, index = _glob_class(pattern, index + 1)
            parts.append(text)
        else:
            literal, index = _glob_escaped(pattern, index)
            parts.append(re.escape(literal))
    return re.compile("".join(parts), re.DOTALL)


def _glob_escaped(pattern: str, index: int) -> tuple[str, int]:
    """One possibly ``\\``-escaped character at ``index``; (char, next index)."""
    if pattern[index] != "\\":
        return pattern[index], index + 1
    if index + 1 >= len(pattern):
        raise GlobError(f"syntax error in pattern: {pattern!r}")
    return pattern[index + 1], index + 2


def _glob_class(pattern: str, index: int) -> tuple[str, int]:
    """Translate a character class starting after ``[``; (regex, next index)."""
    negated = index < len(pattern) and pattern[index] == "^"
    if negated:
        index += 1
    ranges: list[str] = []
    count = 0
    while True:
        if index < len(pattern) and pattern[index] == "]" and count:
            return _class_regex(ranges, negated), index + 1
        low, index = _glob_class_char(pattern, index)
        high = low
        if index < len(pattern) and pattern[index] == "-":
            high, index = _glob_class_char(pattern, index + 1)
        count += 1
        if low <= high:  # Go accepts an inverted range, which matches nothing
            ranges.append(f"{re.escape(low)}-{re.escape(high)}")


def _class_regex(ranges: list[str], negated: bool) -> str:
    if not ranges:
        return "." if negated else "(?!)"
    return f"[{'^' if negated else ''}{''.join(ranges)}]"


def _glob_class_char(pattern: str, index: int) -> tuple[str, int]:
    if index >= len(pattern) or pattern[index] in "-]":
        raise GlobError(f"syntax error in pattern: {pattern!r}")
    char, index = _glob_escaped(pattern, index)
    if index >= len(pattern):
        raise GlobError(f"syntax error in pattern: {pattern!r}")
    return char, index


def _glob_matches(pattern: str, name: str) -> bool:
    """Like :func:`glob_match`, but a malformed pattern matches nothing (as in Go)."""
    try:
        return glob_match(pattern, name)
    except GlobError:
        return False


# ---------------------------------------------------------------- authoriser


class Authoriser:
    """Decides, per call, whether a caller may call a method (reference §1.8).

    ``trusted_users`` and ``trusted_groups`` are Go's ``-srpcTrustedUsers`` and
    ``-srpcTrustedGroups``; ``public_methods`` need only an authenticated
    username; ``unauthenticated_methods`` need nothing. All method names are
    ``Service.Method``.
    """

    def __init__(
        self,
        trusted_users: frozenset[str],
        trusted_groups: frozenset[str],
        public_methods: frozenset[str],
        unauthenticated_methods: frozenset[str] = frozenset(),
    ) -> None:
        self.trusted_users = frozenset(trusted_users)
        self.trusted_groups = frozenset(trusted_groups)
        self.public_methods = frozenset(public_methods)
        self.unauthenticated_methods = frozenset(unauthenticated_methods)

    def check(
        self, identity: Identity | None, method: str, method_powers: bool = True
    ) -> CallAuth | None:
        """The caller's :class:`CallAuth` for ``method``, or None: access denied.

        ``identity`` is None for a plaintext connection without a certificate;
        ``method_powers`` is False when the client connected with
        ``doNotUseMethodPowers=true``.
        """
        username = identity.username if identity is not None else ""
        groups = identity.groups if identity is not None else frozenset()
        if method_powers and identity is not None and self.has_method_powers(identity, method):
            return CallAuth(username, groups, True)
        if method in self.public_methods and username:
            return CallAuth(username, groups, False)
        if method in self.unauthenticated_methods:
            return CallAuth(username, groups, False)
        return None

    def has_method_powers(self, identity: Identity, method: str) -> bool:
        """Go's built-in check: a permitted-method glob, a trusted user or group."""
        if any(_glob_matches(pattern, method) for pattern in identity.permitted_methods):
            return True
        if identity.username and identity.username in self.trusted_users:
            return True
        return not identity.groups.isdisjoint(self.trusted_groups)
