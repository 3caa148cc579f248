"""SRPC framing: where a JSON value ends on a stream (Go json.Decoder rules)."""

from __future__ import annotations

import json

import pytest

from imaginator.goformats.gojson import JsonDecodeError
from imaginator.srpc.framing import JsonFramer

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
