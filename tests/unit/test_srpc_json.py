"""SRPC's JSON coder: Go encoding/json output and json.Decoder framing."""

from __future__ import annotations

import json
import math

import pytest

from imaginator.rpc.srpc import JsonDecodeError, JsonFramer, decode_json, encode_json, go_float

# ------------------------------------------------------------------ encoding


def test_compact_and_in_the_given_order() -> None:
    value = {"Z": 1, "A": [True, False, None], "M": {"b": "x", "a": ""}}
    assert encode_json(value) == b'{"Z":1,"A":[true,false,null],"M":{"b":"x","a":""}}'


def test_go_html_escapes() -> None:
    encoded = encode_json({"<k>": "a<b>&c\u2028d\u2029"})
    assert encoded == b'{"\\u003ck\\u003e":"a\\u003cb\\u003e\\u0026c\\u2028d\\u2029"}'


def test_control_characters_and_non_ascii() -> None:
    text = 'q"b\\s\n\r\t\b\f\x01\x1f\x7fé€😀'
    encoded = encode_json(text)
    assert encoded == (b'"q\\"b\\\\s\\n\\r\\t\\b\\f\\u0001\\u001f\x7f' + "é€😀".encode() + b'"')
    assert json.loads(encoded) == text


def test_invalid_unicode_becomes_replacement_character() -> None:
    assert encode_json("a\udcffb") == '"a\ufffdb"'.encode()


def test_bytes_are_base64_like_go_byte_slices() -> None:
    assert encode_json({"BuildLog": b"hi\n", "Empty": b""}) == b'{"BuildLog":"aGkK","Empty":""}'


def test_integer_keys_and_tuples() -> None:
    assert encode_json({1: (1, 2), "x": []}) == b'{"1":[1,2],"x":[]}'


@pytest.mark.parametrize("value", [{1.5: 1}, {None: 1}, {True: 1}, object(), {1, 2}])
def test_unencodable_values(value: object) -> None:
    with pytest.raises(TypeError):
        encode_json(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_refused(value: float) -> None:
    with pytest.raises(ValueError):
        encode_json(value)


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


def test_booleans_are_not_integers() -> None:
    assert encode_json([True, 1, False, 0]) == b"[true,1,false,0]"


# ------------------------------------------------------------------ decoding


def test_decode_replaces_invalid_utf8() -> None:
    assert decode_json(b'"a\xffb"') == "a\ufffdb"


@pytest.mark.parametrize("raw", [b"NaN", b"[Infinity]", b"{", b'{"a":}', b"tru"])
def test_decode_errors(raw: bytes) -> None:
    with pytest.raises(JsonDecodeError):
        decode_json(raw)


# ------------------------------------------------------------------ framing


def frame(chunks: list[bytes]) -> tuple[int, bytes]:
    """Feed chunks one by one; return (offset, value bytes) when complete."""
    framer = JsonFramer()
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        end = framer.scan(buffer)
        if end is not None:
            return end, bytes(buffer[framer.start : end])
    raise AssertionError("value never completed")


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b'{"a":1}\n', b'{"a":1}'),
        (b'  \r\n\t{"a":"}{]["}  ', b'{"a":"}{]["}'),
        (b'{"a":"\\"}"}x', b'{"a":"\\"}"}'),
        (b'{"a":"\\\\"}', b'{"a":"\\\\"}'),
        (b"[[1,[2]],{}]", b"[[1,[2]],{}]"),
        (b'"top \\" string"\n', b'"top \\" string"'),
        (b"12345\n", b"12345"),
        (b"-1.5e+3 ", b"-1.5e+3"),
        (b"null\n", b"null"),
        (b'{"k":"\xc3\xa9\\u00e9"}', b'{"k":"\xc3\xa9\\u00e9"}'),
    ],
)
def test_framer_byte_by_byte(data: bytes, value: bytes) -> None:
    end, found = frame([data[i : i + 1] for i in range(len(data))])
    assert found == value
    assert data[:end].endswith(value)
    assert frame([data])[1] == value


def test_framer_escape_split_across_chunks() -> None:
    assert frame([b'{"a":"x\\', b'"', b'"}'])[1] == b'{"a":"x\\""}'


def test_framer_waits_for_a_top_level_number_to_end() -> None:
    framer = JsonFramer()
    assert framer.scan(b"123") is None
    assert framer.scan(b"1234\n") == 4


def test_framer_bad_first_byte_is_a_go_style_error() -> None:
    with pytest.raises(JsonDecodeError) as raised:
        JsonFramer().scan(b"  hello\n")
    assert raised.value.text == "invalid character 'h' looking for beginning of value"
    assert raised.value.position == 2


@pytest.mark.parametrize(
    ("data", "bad"),
    [
        (b'{"a": tru\n', True),
        (b'{"a" 1\n', True),
        (b"[1 2\n", True),
        (b'{"a": 1,\n', False),
        (b"[1, 2\n", False),
        (b'{"a"\n', False),
        (b"{\n", False),
        (b'{"a": tru', False),  # no whitespace yet: the token may go on
    ],
)
def test_check_syntax_inside_an_incomplete_value(data: bytes, bad: bool) -> None:
    framer = JsonFramer()
    assert framer.scan(data) is None
    if bad:
        with pytest.raises(JsonDecodeError):
            framer.check_syntax(data)
    else:
        framer.check_syntax(data)


def test_check_syntax_work_stays_linear() -> None:
    framer = JsonFramer()
    buffer = bytearray(b"[")
    checks = 0
    original = json.JSONDecoder.raw_decode

    def counting(self: json.JSONDecoder, text: str, index: int = 0) -> object:
        nonlocal checks
        checks += 1
        return original(self, text, index)

    json.JSONDecoder.raw_decode = counting  # type: ignore[method-assign]
    try:
        for _ in range(1000):
            buffer += b"1,\n"
            assert framer.scan(buffer) is None
            framer.check_syntax(buffer)
    finally:
        json.JSONDecoder.raw_decode = original  # type: ignore[method-assign]
    assert checks <= 15


def test_pending_size() -> None:
    framer = JsonFramer()
    buffer = b'  {"a":'
    assert framer.scan(buffer) is None
    assert framer.pending_size(buffer) == 5
