"""The GOB codec against the bytes the real Go programs sent (tests/data/gob),
and against malformed and hostile input."""

from __future__ import annotations

import random
import struct

import pytest

from imaginator.goformats.gob import (
    BOOL,
    BYTES,
    COMPLEX,
    FLOAT,
    INT,
    INT8,
    STRING,
    TIME,
    UINT,
    UINT8,
    UINT64,
    Array,
    Decoder,
    Encoder,
    Field,
    GobError,
    GoInterface,
    GoTime,
    Interface,
    Map,
    Opaque,
    Slice,
    Struct,
    TypeIds,
    encode_int,
    encode_uint,
)
from imaginator.goformats.gobtypes import marshal_time, unmarshal_time
from tests.support.gobstreams import STREAMS, read_stream, recorded_calls

LABELS = sorted({path.name.split(".")[0] for path in STREAMS.iterdir() if ".c2s" in path.name})


def test_the_recordings_are_there():
    assert "add-1" in LABELS and "imaginator-hello-3" in LABELS and len(LABELS) == 19


# ---------------------------------------------------------------- integers and floats


@pytest.mark.parametrize(
    ("value", "data"),
    [
        (0, b"\x00"),
        (7, b"\x07"),
        (127, b"\x7f"),
        (128, b"\xff\x80"),
        (256, b"\xfe\x01\x00"),
        ((1 << 64) - 1, b"\xf8" + b"\xff" * 8),
    ],
)
def test_unsigned_integers(value, data):
    assert encode_uint(value) == data


@pytest.mark.parametrize(
    ("value", "data"),
    [(0, b"\x00"), (-1, b"\x01"), (1, b"\x02"), (-129, b"\xfe\x01\x01"), (64, b"\xff\x80")],
)
def test_signed_integers(value, data):
    assert encode_int(value) == data


def test_float_bits_are_byte_reversed():
    # encoding/gob's documentation: 17.0 is sent as FE 31 40.
    assert Encoder().encode(FLOAT, 17.0)[-3:] == b"\xfe\x31\x40"


@pytest.mark.parametrize(
    ("go_type", "value"),
    [
        (BOOL, True),
        (INT, -(1 << 63)),
        (UINT, (1 << 64) - 1),
        (FLOAT, -2.5e-300),
        (COMPLEX, complex(1.5, -2)),
        (STRING, "caf\u00e9 \udcff"),  # invalid UTF-8 survives (surrogateescape)
        (BYTES, b"\x00\xff" * 10),
        (Slice(INT, "[]int"), [1, -2, 3]),
        (Map(STRING, Slice(STRING), "m"), {"a": ["x"], "b": []}),
        (Array(UINT8, 4, "A4"), b"\x00\x7f\x80\xff"),
        (TIME, GoTime(63_900_000_000, 5, 3600)),
    ],
)
def test_singletons_round_trip(go_type, value):
    data = Encoder().encode(go_type, value)
    assert Decoder(go_type).feed(data) == [value]


# ---------------------------------------------------------------- time.Time


def test_time_binary_versions():
    utc = marshal_time(GoTime(100, 7, None))
    assert utc == b"\x01" + struct.pack(">qih", 100, 7, -1)
    assert marshal_time(GoTime(100, 7, 0))[-2:] == b"\x00\x00"  # a local zone at UTC
    with_seconds = marshal_time(GoTime(100, 7, -(5 * 3600 + 30 * 60 + 15)))
    assert with_seconds[0] == 2 and len(with_seconds) == 16
    assert struct.unpack(">h", with_seconds[13:15])[0] == -(5 * 60 + 30)
    assert struct.unpack(">b", with_seconds[15:])[0] == -15
    for data in (utc, with_seconds):
        assert marshal_time(unmarshal_time(data)) == data


def test_the_recorded_expiry_is_a_local_time_at_utc():
    (call,) = recorded_calls("change-image-expiration-1")
    decoded = Decoder(Struct("R", [Field("ExpiresAt", TIME)])).feed(call.requests[0].data)
    expires = decoded[0]["ExpiresAt"]
    assert expires.offset == 0 and not expires.is_zero
    assert 1_700_000_000 * 10**9 < expires.unix_ns < 2_000_000_000 * 10**9


@pytest.mark.parametrize(
    "data", [b"", b"\x03" + bytes(14), b"\x01" + bytes(13), b"\x02" + bytes(14)]
)
def test_bad_times_are_refused(data):
    with pytest.raises(GobError, match=r"Time\.UnmarshalBinary"):
        unmarshal_time(data)


# ---------------------------------------------------------------- recorded streams


def _messages():
    for label in LABELS:
        for call in recorded_calls(label):
            for messages, decoder in (
                (call.requests, call.request_decoder),
                (call.responses, call.response_decoder),
            ):
                if messages:
                    yield label, call.method, messages, decoder


@pytest.mark.parametrize("label", LABELS)
def test_every_recorded_message_re_encodes_to_the_same_bytes(label):
    """Decoded without a schema, with the stream's own type definitions and ids,
    every value encodes to exactly what Go sent: definitions, their order, field
    omission, map order, and the message split after a new interface type."""
    count = 0
    for call in recorded_calls(label):
        for messages, decoder in (
            (call.requests, call.request_decoder),
            (call.responses, call.response_decoder),
        ):
            ids = TypeIds()
            for type_id in decoder.types:
                ids.assign(decoder.schema_of(type_id), type_id)
            encoder = Encoder(ids)
            for message in messages:
                assert encoder.encode(decoder.schema_of(message.type_id), message.value) == (
                    message.data
                ), f"{call.method}"
                count += 1
    assert count > 0


def test_a_value_spans_messages_after_a_new_interface_type():
    (*_, add_image) = recorded_calls("add-1")
    data = add_image.requests[0].data
    decoder = Decoder()
    decoder.push(data)
    value = decoder.next()
    table = value["Image"]["FileSystem"]["InodeTable"]
    names = {inode.name for inode in table.values()}
    assert names == {
        "*filesystem.DirectoryInode",
        "*filesystem.RegularInode",
        "*filesystem.SymlinkInode",
        "*filesystem.SpecialInode",
    }
    # Go cut the value's message after each new concrete type's definition:
    # the value goes on in messages that start with that type's (positive) id.
    starts = []
    pos = 0
    while pos < len(data):
        size, pos = _uint(data, pos)
        starts.append(_uint(data, pos)[0])
        pos += size
    value_messages = [first for first in starts if first % 2 == 0]
    # DirectoryInode was defined with FileSystem (its embedded root): no cut.
    assert len(value_messages) == 1 + len(names - {"*filesystem.DirectoryInode"})


def _uint(data: bytes, pos: int) -> tuple[int, int]:
    """The unsigned integer at ``pos`` and where it ends."""
    if data[pos] < 0x80:
        return data[pos], pos + 1
    count = 256 - data[pos]
    return int.from_bytes(data[pos + 1 : pos + 1 + count], "big"), pos + 1 + count


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_bytes_may_arrive_in_any_pieces(chunk):
    (*_, add_image) = recorded_calls("add-1")
    data = add_image.requests[0].data + add_image.requests[0].data[:0]
    decoder = Decoder()
    values = []
    for start in range(0, len(data), chunk):
        values += decoder.feed(data[start : start + chunk])
    assert values == [add_image.requests[0].value]
    assert decoder.buffered == 0


def test_type_definitions_are_kept_for_later_messages_and_raw_bytes_can_be_taken():
    calls = recorded_calls("add-1")
    objects = [call for call in calls if call.method == "ObjectServer.AddObjects"][1]
    stream = b"".join(
        message.data + raw
        for message, raw in zip(objects.requests, [*objects.raw_sent, b""], strict=True)
    )
    decoder = Decoder()
    decoder.push(stream)
    received = []
    while (request := decoder.next()) is not None:
        length = request.get("Length", 0)
        if not length:
            break
        received.append(decoder.take_buffered(length))
    assert received == objects.raw_sent
    assert len(objects.requests[1].data) < len(objects.requests[0].data)  # no definitions
    assert decoder.buffered == 0


# ---------------------------------------------------------------- schemas, Go's rules

WIDE = Struct(
    "Wide",
    [
        Field("A", INT),
        Field("Extra", Struct("Inner", [Field("X", STRING), Field("Any", Interface())])),
        Field("B", STRING),
        Field("Things", Map(STRING, Slice(INT, "[]int"), "")),
        Field("C", BOOL),
    ],
)
NARROW = Struct("Narrow", [Field("C", BOOL), Field("A", INT8), Field("Missing", STRING)])


def _wide_value(a=5):
    inner = {"X": "x", "Any": GoInterface("int", 3, INT)}
    return {"A": a, "Extra": inner, "B": "b", "Things": {"k": [1, 2]}, "C": True}


def test_fields_are_matched_by_name_and_unknown_ones_skipped():
    data = Encoder().encode(WIDE, _wide_value())
    assert Decoder(NARROW).feed(data) == [{"C": True, "A": 5, "Missing": ""}]


def test_zero_fields_are_left_out_as_go_does():
    zero = Encoder().encode(NARROW, {"C": False, "A": 0, "Missing": ""})
    full = Encoder().encode(NARROW, {"C": True, "A": 1, "Missing": "m"})
    assert zero.endswith(b"\x00") and len(zero) < len(full)
    assert Decoder().feed(zero) == [{}]


def test_a_narrow_int_out_of_range_is_an_error():
    data = Encoder().encode(WIDE, _wide_value(a=300))
    with pytest.raises(GobError, match="out of range"):
        Decoder(NARROW).feed(data)


def test_a_field_of_another_kind_is_a_type_mismatch():
    other = Struct("Other", [Field("B", INT)])
    with pytest.raises(GobError, match="type mismatch"):
        Decoder(other).feed(Encoder().encode(WIDE, _wide_value()))


def test_no_common_field_is_a_type_mismatch():
    with pytest.raises(GobError, match="no fields matched"):
        Decoder(Struct("Q", [Field("Q", INT)])).feed(Encoder().encode(WIDE, _wide_value()))


def test_unregistered_interface_names_are_refused():
    registry = Interface({"int": INT})
    schema = Struct("S", [Field("V", registry)])
    data = Encoder().encode(
        Struct("S", [Field("V", Interface())]), {"V": GoInterface("str", "s", STRING)}
    )
    with pytest.raises(GobError, match="not registered"):
        Decoder(schema).feed(data)


def test_without_a_schema_marshaled_values_stay_opaque():
    data = Encoder().encode(Struct("T", [Field("When", TIME)]), {"When": GoTime(1, 2, None)})
    assert Decoder().feed(data) == [{"When": Opaque("Time", marshal_time(GoTime(1, 2, None)))}]


@pytest.mark.parametrize(
    ("go_type", "value"),
    [
        (INT8, 200),
        (UINT, -1),
        (BOOL, 1),
        (STRING, b"bytes"),
        (Array(UINT8, 2, "A"), b"abc"),
        (Struct("S", [Field("A", INT)]), {"B": 1}),
        (Slice(INT, "[]int"), "123"),
        (Interface(), 5),
    ],
)
def test_values_that_do_not_fit_the_schema_are_refused(go_type, value):
    with pytest.raises(GobError):
        Encoder().encode(go_type, value)


# ---------------------------------------------------------------- hostile input


def _definition_and_value():
    return Encoder().encode(WIDE, _wide_value())


def test_every_truncation_waits_or_fails_cleanly():
    data = _definition_and_value()
    for cut in range(len(data)):
        decoder = Decoder()
        assert decoder.feed(data[:cut]) == []
    assert len(Decoder().feed(data)) == 1


def test_random_corruption_gives_gob_errors_only():
    (*_, add_image) = recorded_calls("add-1")
    original = add_image.requests[0].data
    rng = random.Random(8)
    for _ in range(300):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            Decoder(max_message_size=1 << 20).feed(bytes(data))
        except GobError:
            pass


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xf0", "invalid message length"),
        (b"\xfc\x7f\xff\xff\xff", "exceeds the limit"),
        (b"\x00", "empty message"),
        (b"\x03\xff\xc8\x00", "unknown type id 100"),
        (b"\x05\x0c\x00\x7f" + b"ab", "string length 127 exceeds"),
        (b"\x04\x0a\x00\x7f\x00", "length 127 exceeds"),
        (b"\x04\x02\x00\x01\x05", "extra data"),
        (b"\x02\x01\x00", "reserved type id"),
    ],
)
def test_malformed_streams(data, message):
    with pytest.raises(GobError, match=message):
        Decoder(max_message_size=1 << 20).feed(data)


def test_lengths_are_checked_against_the_message_before_allocating():
    schema = Slice(STRING, "[]string")
    data = bytearray(Encoder().encode(schema, ["a"]))
    # Claim 2**40 strings: refused at once, nothing of that size is made.
    body = data[data.rindex(b"\x00\x01\x01a") :]
    forged = b"\x00" + encode_uint(1 << 40) + b"\x01a"
    data = data[: len(data) - len(body) - 1] + encode_uint(len(forged) + 2) + b"\xff\x80" + forged
    with pytest.raises(GobError):
        Decoder().feed(bytes(data))


def test_a_map_of_interfaces_goes_on_past_its_first_message():
    # A new concrete type in an interface ends the message: the map's count
    # (300) is more than the bytes left in the message that carries it.
    inner = Struct("Inner", [Field("A", UINT64)])
    table = Map(UINT64, Interface({"*x.Inner": inner}, "Iface"), "map[uint64]Iface")
    outer = Struct("Outer", [Field("M", table)])
    value = {"M": {i: GoInterface("*x.Inner", {"A": i + 1}, inner) for i in range(300)}}
    data = Encoder().encode(outer, value)
    (decoded,) = Decoder(outer).feed(data)
    assert {key: item.value for key, item in decoded["M"].items()} == {
        i: {"A": i + 1} for i in range(300)
    }
    # A count that the message cannot hold, of elements without interfaces: a clean error.
    strings = Map(UINT64, STRING, "map[uint64]string")
    short = bytearray(Encoder().encode(Struct("S", [Field("M", strings)]), {"M": {1: "a"}}))
    short[short.rindex(b"\x01\x01\x01a")] = 0x7F
    with pytest.raises(GobError, match="truncated message"):
        Decoder().feed(bytes(short))


def test_recursive_types_are_bounded():
    node = Struct("Node", [])
    node.define([Field("Name", STRING), Field("Next", node, pointer=True)])
    value: dict = {"Name": "leaf", "Next": None}
    for _ in range(150):
        value = {"Name": "n", "Next": value}
    data = Encoder().encode(node, value)
    with pytest.raises(GobError, match="nested"):
        Decoder(node).feed(data)
    shallow = {"Name": "a", "Next": {"Name": "b", "Next": None}}
    assert Decoder(node).feed(Encoder().encode(node, shallow)) == [shallow]


def test_duplicate_type_definitions_are_refused():
    data = Encoder().encode(Slice(INT, "[]int"), [1])
    definition = data[: 1 + data[0]]
    with pytest.raises(GobError, match="duplicate"):
        Decoder().feed(definition + definition)


def test_a_broken_decoder_stays_broken():
    decoder = Decoder()
    with pytest.raises(GobError):
        decoder.feed(b"\xf0")
    with pytest.raises(GobError):
        decoder.feed(Encoder().encode(INT, 1))


def test_recorded_streams_decode_whole():
    assert read_stream("imaginator-hello-3.s2c").startswith(b"HTTP/1.0 200")
