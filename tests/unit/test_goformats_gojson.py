"""Go's encoding/json output (compact and indented) and the strict decoder."""

from __future__ import annotations

import collections
import enum
import json
import math
import types
from typing import Any, NamedTuple

import pytest

from imaginator.goformats import gojson
from imaginator.goformats.gojson import (
    JsonDecodeError,
    decode_json,
    go_float,
    marshal,
    marshal_text,
)
from tests.support.vectors import VECTORS

# ------------------------------------------------------------------ compact


def test_compact_and_in_the_given_order() -> None:
    value = {"Z": 1, "A": [True, False, None], "M": {"b": "x", "a": ""}}
    assert marshal(value) == b'{"Z":1,"A":[true,false,null],"M":{"b":"x","a":""}}'


def test_go_html_escapes() -> None:
    encoded = marshal({"<k>": "a<b>&c\u2028d\u2029"})
    assert encoded == b'{"\\u003ck\\u003e":"a\\u003cb\\u003e\\u0026c\\u2028d\\u2029"}'


def test_control_characters_and_non_ascii() -> None:
    text = 'q"b\\s\n\r\t\b\f\x01\x1f\x7fé€😀'
    encoded = marshal(text)
    assert encoded == (b'"q\\"b\\\\s\\n\\r\\t\\b\\f\\u0001\\u001f\x7f' + "é€😀".encode() + b'"')
    assert json.loads(encoded) == text


def test_invalid_utf8_is_written_as_go_writes_it() -> None:
    """Each byte that was not UTF-8 (a surrogateescape surrogate) becomes the
    six characters ``\\ufffd``; a real U+FFFD stays a character."""
    name = b"a\xff\xfeb".decode("utf-8", "surrogateescape")
    assert marshal({"Name": name, "R": "\ufffd"}) == (
        b'{"Name":"a\\ufffd\\ufffdb","R":"\xef\xbf\xbd"}'
    )
    assert marshal([name, 1.5]) == b'["a\\ufffd\\ufffdb",1.5]'  # the reference encoder too


def test_marshal_text_keeps_names_that_are_not_utf8() -> None:
    name = b"caf\xe9".decode("utf-8", "surrogateescape")
    text = marshal_text({"Name": name, "X": "<"})
    assert text == '{"Name":"caf\udce9","X":"\\u003c"}'
    assert text.encode("utf-8", "surrogateescape") == b'{"Name":"caf\xe9","X":"\\u003c"}'


def test_bytes_are_base64_like_go_byte_slices() -> None:
    value = {"BuildLog": b"hi\n", "Empty": b"", "A": bytearray(b"\xff"), "M": memoryview(b"ab")}
    assert marshal(value) == b'{"BuildLog":"aGkK","Empty":"","A":"/w==","M":"YWI="}'


def test_integer_keys_and_tuples() -> None:
    assert marshal({1: (1, 2), "x": []}) == b'{"1":[1,2],"x":[]}'


@pytest.mark.parametrize(
    "value", [{1.5: 1}, {None: 1}, {True: 1}, object(), {1, 2}, [1, {"a": {2}}], {"a": 1j}]
)
def test_unencodable_values(value: object) -> None:
    with pytest.raises(TypeError):
        marshal(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, [1, {"a": math.nan}]])
def test_non_finite_floats_are_refused(value: Any) -> None:
    with pytest.raises(ValueError):
        marshal(value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1"),
        (2.5, "2.5"),
        (-0.0, "-0"),
        (0.0, "0"),
        (0.1, "0.1"),
        (1e16, "10000000000000000"),
        (1e20, "100000000000000000000"),
        (123456789.0, "123456789"),
        (12345678901234567890.0, "12345678901234567000"),
        (1e21, "1e+21"),
        (1.5e300, "1.5e+300"),
        (0.000001, "0.000001"),
        (1e-7, "1e-7"),
        (-2.5e-9, "-2.5e-9"),
        (1e-100, "1e-100"),
        (5e-324, "5e-324"),
    ],
)
def test_floats_like_go(value: float, text: str) -> None:
    assert go_float(value) == text
    assert float(text) == value
    assert marshal({"F": [value]}) == b'{"F":[' + text.encode() + b"]}"


def test_booleans_are_not_integers() -> None:
    assert marshal([True, 1, False, 0]) == b"[true,1,false,0]"


# ------------------------------------------------------------------ indented


def test_indent_like_go_marshal_indent() -> None:
    value = {"a": [], "b": {"c": [1, 2], "d": 'x,{:}"'}, "e": None, "f": {}}
    assert marshal({}, indent="    ") == b"{}"
    assert marshal([], indent="    ") == b"[]"
    assert marshal(value, indent="    ") == (
        b'{\n    "a": [],\n    "b": {\n        "c": [\n            1,\n            2\n'
        b'        ],\n        "d": "x,{:}\\""\n    },\n    "e": null,\n    "f": {}\n}'
    )
    assert marshal([{"x": 1}], indent="\t") == b'[\n\t{\n\t\t"x": 1\n\t}\n]'


def test_indented_go_vector() -> None:
    """A buildInfo file the Go imaginator wrote (json.MarshalIndent, 4 spaces)."""
    raw = (VECTORS / "archive-buildInfo-failed.json").read_bytes()
    assert marshal(json.loads(raw), indent="    ") + b"\n" == raw


def test_compact_go_vector() -> None:
    """An image record as the Go imageserver sent it: byte for byte."""
    raw = (VECTORS / "image-bb.json").read_bytes().rstrip(b"\n")
    assert marshal(json.loads(raw)) == raw


# ------------------------------------------------------------------ the two encoders


class Kind(enum.IntEnum):
    DIRECTORY = 1


class Pair(NamedTuple):
    a: int
    b: str


PLAIN_VALUES: list[Any] = [
    None,
    True,
    0,
    -(2**70),
    "",
    '<&>\u2028\u2029\x00\x1f"\\/é😀',
    b"\x00\xff",
    [],
    (),
    {},
    {"a": [1, "x", None, {"b": [[], {}]}], 7: True, -1: b"z"},
    [Kind.DIRECTORY, {"k": Kind.DIRECTORY}, {Kind.DIRECTORY: "key"}],
    b"bad\xffname".decode("utf-8", "surrogateescape"),
]
REFERENCE_ONLY_VALUES: list[Any] = [
    1.5,
    [1, {"a": [2.0]}],
    collections.OrderedDict([("b", 1), ("a", 2)]),
    types.MappingProxyType({"x": [1]}),
    Pair(1, "<"),
    {"a": (1, 2, [3, 0.25])},
]


@pytest.mark.parametrize("value", PLAIN_VALUES, ids=repr)
def test_fast_path_writes_what_the_reference_writes(value: Any) -> None:
    assert gojson._plain(value)
    for indent in (None, "  "):
        parts: list[str] = []
        gojson._encode_value(value, parts, None if indent is None else "\n", indent or "")
        reference = "".join(parts).translate(gojson._HTML_ESCAPES)
        assert marshal_text(value, indent=indent) == reference
    assert marshal_text(value) == gojson._C_ENCODER.encode(value).translate(gojson._HTML_ESCAPES)


@pytest.mark.parametrize("value", REFERENCE_ONLY_VALUES, ids=repr)
def test_values_the_fast_path_leaves_to_the_reference(value: Any) -> None:
    assert not gojson._plain(value)
    assert json.loads(marshal(value)) == json.loads(json.dumps(value, default=dict))


def test_large_plain_value_takes_the_fast_path() -> None:
    inodes = {str(n): {"Mode": 33188, "Size": n, "Hash": "ab" * 64} for n in range(2000)}
    image = {"FileSystem": {"InodeTable": inodes}, "Tags": {"a": "<b>"}}
    assert gojson._plain(image)
    parts: list[str] = []
    gojson._encode_value(image, parts, None, "")
    assert marshal(image) == "".join(parts).translate(gojson._HTML_ESCAPES).encode()


# ------------------------------------------------------------------ decoding


def test_decode_replaces_invalid_utf8() -> None:
    assert decode_json(b'"a\xffb"') == "a\ufffdb"


@pytest.mark.parametrize("raw", [b"NaN", b"[Infinity]", b"{", b'{"a":}', b"tru", b"1 2"])
def test_decode_errors(raw: bytes) -> None:
    with pytest.raises(JsonDecodeError) as raised:
        decode_json(raw)
    assert raised.value.text


def test_decode_round_trips_what_marshal_writes() -> None:
    value = {"A": [1, -2, "x<y", None, True], "B": {"c": ""}}
    assert decode_json(marshal(value)) == value
