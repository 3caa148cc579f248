"""Certificate identities, Go filepath.Match globbing and the per-call rules."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from imaginator.srpc.identity import (
    GROUPS_OID,
    INSECURE_IDENTITY,
    PERMITTED_METHODS_OID,
    AuthError,
    Authoriser,
    CallAuth,
    GlobError,
    Identity,
    decode_string_sequence,
    encode_string_sequence,
    glob_match,
    identity_from_chain,
)
from imaginator.tools.certs import make_ca, make_user_cert

# ------------------------------------------------------------------ DER


def test_string_sequence_der_is_exact() -> None:
    assert encode_string_sequence([]) == b"\x30\x00"
    assert encode_string_sequence(["a.b", "é"]) == b"\x30\x09\x0c\x03a.b\x0c\x02\xc3\xa9"


def test_string_sequence_long_form_lengths_round_trip() -> None:
    items = ["Service.Method" * 20, "x" * 300]
    encoded = encode_string_sequence(items)
    assert encoded[:2] == b"\x30\x82"
    assert decode_string_sequence(encoded) == items


def test_other_string_types_are_accepted() -> None:
    # PrintableString, IA5String, BMPString, as Go's asn1 accepts them.
    body = b"\x13\x03a.b" + b"\x16\x03c.d" + b"\x1e\x04\x00x\x00y"
    assert decode_string_sequence(b"\x30" + bytes([len(body)]) + body) == ["a.b", "c.d", "xy"]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x31\x00",  # a SET, not a SEQUENCE
        b"\x30\x00\x00",  # trailing bytes
        b"\x30\x06\x0c\x03a.b",  # truncated
        b"\x30\x03\x02\x01\x05",  # an INTEGER element
        b"\x30\x04\x0c\x02\xff\xfe",  # bad UTF-8
        b"\x30\x80",  # indefinite length
    ],
)
def test_bad_der_is_an_auth_error(data: bytes) -> None:
    with pytest.raises(AuthError):
        decode_string_sequence(data)


# ------------------------------------------------------------------ identity


def load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def certificate(
    common_name: str | None, extensions: dict[x509.ObjectIdentifier, bytes]
) -> x509.Certificate:
    """A self-signed certificate with raw extension values (for odd cases)."""
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    name = x509.Name(attributes or [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "o")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    for oid, value in extensions.items():
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=False)
    return builder.sign(key, hashes.SHA256())


def test_identity_from_a_user_certificate() -> None:
    ca_cert, ca_key = make_ca()
    user_cert, _ = make_user_cert(
        ca_cert, ca_key, "alice", groups=["devs", "ops"], methods=["Imaginator.*", "A.B"]
    )
    identity = identity_from_chain([load(user_cert), load(ca_cert)])
    assert identity == Identity(
        "alice", frozenset({"devs", "ops"}), frozenset({"Imaginator.*", "A.B"})
    )


def test_identity_rules_over_a_chain() -> None:
    leaf = certificate(None, {GROUPS_OID: encode_string_sequence([])})
    middle = certificate(
        "middle",
        {
            GROUPS_OID: encode_string_sequence(["g1"]),
            PERMITTED_METHODS_OID: encode_string_sequence(["X.Y"]),
        },
    )
    root = certificate(
        "root",
        {
            GROUPS_OID: encode_string_sequence(["g2"]),
            PERMITTED_METHODS_OID: encode_string_sequence(["Z.*"]),
        },
    )
    identity = identity_from_chain([leaf, middle, root])
    # First non-empty CN and groups, leaf to root; methods are the union.
    assert identity == Identity("middle", frozenset({"g1"}), frozenset({"X.Y", "Z.*"}))


@pytest.mark.parametrize("entry", ["NoDot", "a.b.c", ""])
def test_a_method_entry_without_exactly_one_dot_is_refused(entry: str) -> None:
    cert = certificate("u", {PERMITTED_METHODS_OID: encode_string_sequence(["Ok.Fine", entry])})
    with pytest.raises(AuthError):
        identity_from_chain([cert])


def test_malformed_extension_is_refused() -> None:
    cert = certificate("u", {GROUPS_OID: b"\x04\x01x"})
    with pytest.raises(AuthError):
        identity_from_chain([cert])


def test_ca_certificate_pem_from_certs_carries_no_identity_extensions() -> None:
    ca_cert, _ = make_ca("Some CA")
    assert identity_from_chain([load(ca_cert)]) == Identity("Some CA", frozenset(), frozenset())
    key = serialization.load_pem_private_key(make_ca()[1], None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)


# ------------------------------------------------------------------ globbing


@pytest.mark.parametrize(
    ("pattern", "name", "matched"),
    [
        ("*.*", "Imaginator.BuildImage", True),
        ("*.*", ".LocalUpgradeToUnix", True),
        ("Imaginator.*", "Imaginator.BuildImage", True),
        ("Imaginator.*", "ImageServer.GetImage", False),
        ("Image*.Get*", "ImageServer.GetImage", True),
        ("*", "a/b", False),
        ("a?c", "abc", True),
        ("a?c", "a/c", False),
        ("a?c", "ac", False),
        ("[abc]x", "bx", True),
        ("[a-c]x", "dx", False),
        ("[^a-c]x", "dx", True),
        ("[^a-c]x", "/x", True),
        ("[!a]", "!", True),
        ("[\\]]", "]", True),
        ("[a\\-z]", "-", True),
        ("[z-a]", "m", False),
        ("[^z-a]", "m", True),
        ("a\\*b", "a*b", True),
        ("a\\*b", "axb", False),
        ("A.B", "a.b", False),
        ("ab", "abc", False),
        ("a.b", "axb", False),
        ("(x)+", "(x)+", True),
        ("*x", "\nx", True),
    ],
)
def test_glob_match_like_go(pattern: str, name: str, matched: bool) -> None:
    assert glob_match(pattern, name) is matched


@pytest.mark.parametrize("pattern", ["[", "[]", "[^]", "[a-]", "a\\", "[a", "[-a]", "[]a]"])
def test_malformed_globs(pattern: str) -> None:
    with pytest.raises(GlobError):
        glob_match(pattern, "a")


# ------------------------------------------------------------------ authoriser


AUTHORISER = Authoriser(
    trusted_users=frozenset({"root"}),
    trusted_groups=frozenset({"wheel"}),
    public_methods=frozenset({"Imaginator.BuildImage"}),
    unauthenticated_methods=frozenset({"Health.Check"}),
)


def user(name: str = "u", groups: tuple[str, ...] = (), methods: tuple[str, ...] = ()) -> Identity:
    return Identity(name, frozenset(groups), frozenset(methods))


def test_permitted_methods_grant_method_powers() -> None:
    identity = user(methods=("Imaginator.Disable*",))
    assert AUTHORISER.check(identity, "Imaginator.DisableAutoBuilds") == CallAuth(
        "u", frozenset(), True
    )
    assert AUTHORISER.check(identity, "Imaginator.StartAutoBuilds") is None


def test_trusted_users_and_groups() -> None:
    assert AUTHORISER.check(user("root"), "Any.Thing") == CallAuth("root", frozenset(), True)
    auth = AUTHORISER.check(user("v", groups=("staff", "wheel")), "Any.Thing")
    assert auth == CallAuth("v", frozenset({"staff", "wheel"}), True)
    assert AUTHORISER.check(user("v", groups=("staff",)), "Any.Thing") is None


def test_public_methods_need_a_username_and_give_no_method_access() -> None:
    assert AUTHORISER.check(user("bob", ("devs",)), "Imaginator.BuildImage") == CallAuth(
        "bob", frozenset({"devs"}), False
    )
    assert AUTHORISER.check(user(""), "Imaginator.BuildImage") is None
    assert AUTHORISER.check(None, "Imaginator.BuildImage") is None


def test_public_method_with_method_powers_has_method_access() -> None:
    auth = AUTHORISER.check(user("root"), "Imaginator.BuildImage")
    assert auth is not None and auth.have_method_access


def test_do_not_use_method_powers() -> None:
    identity = user("root", methods=("*.*",))
    assert AUTHORISER.check(identity, "Any.Thing", method_powers=False) is None
    auth = AUTHORISER.check(identity, "Imaginator.BuildImage", method_powers=False)
    assert auth == CallAuth("root", frozenset(), False)


def test_unauthenticated_methods() -> None:
    assert AUTHORISER.check(None, "Health.Check") == CallAuth("", frozenset(), False)
    assert AUTHORISER.check(None, "Any.Thing") is None


def test_insecure_identity_has_every_method() -> None:
    assert AUTHORISER.check(INSECURE_IDENTITY, "Any.Thing") == CallAuth("", frozenset(), True)


def test_malformed_permitted_glob_matches_nothing() -> None:
    assert AUTHORISER.check(user(methods=("Any.[",)), "Any.[") is None
