"""The GOB coder of the SRPC client: whole GOB messages off the connection's
buffer, raw bytes after them left alone, values that span messages."""

from __future__ import annotations

import pytest

from imaginator.goformats.gob import GobError
from imaginator.srpc.coder import INCOMPLETE
from imaginator.srpc.framing import INSECURE_GOB_PATH, TLS_GOB_PATH, MessageTooLarge
from imaginator.srpc.gobcoder import GobCoder, message_frame_end
from imaginator.store import imageserver_messages as m
from tests.support.gobstreams import recorded_calls


def test_message_frames():
    assert message_frame_end(bytearray(), 100) is None
    assert message_frame_end(bytearray(b"\x03ab"), 100) is None
    assert message_frame_end(bytearray(b"\x03abcXYZ"), 100) == 4
    long = bytearray(b"\xfe\x01\x00" + b"x" * 256)
    assert message_frame_end(long, 1000) == 259
    assert message_frame_end(long[:100], 1000) is None
    assert message_frame_end(bytearray(b"\xfe\x01"), 1000) is None  # the length is incomplete
    with pytest.raises(MessageTooLarge):
        message_frame_end(long[:10], 255)
    with pytest.raises(GobError, match="empty message"):
        message_frame_end(bytearray(b"\x00"), 100)
    with pytest.raises(GobError, match="invalid message length"):
        message_frame_end(bytearray(b"\xf0"), 100)


def test_paths_and_fresh_encoders_per_call():
    coder = GobCoder()
    assert (coder.name, coder.tls_path, coder.insecure_path) == (
        "GOB",
        TLS_GOB_PATH,
        INSECURE_GOB_PATH,
    )
    request = m.CheckObjectsRequest([bytes(64)])
    first_call = coder.new_encoder()
    once, twice = first_call.encode(request), first_call.encode(request)
    assert len(twice) < len(once)  # the type definitions went with the first message only
    assert coder.new_encoder().encode(request) == once  # a new call sends them again
    with pytest.raises(TypeError, match="not a GOB message"):
        first_call.encode({"Hashes": []})


def test_a_message_then_raw_bytes_stay_apart():
    coder = GobCoder()
    reply = m.GetObjectsResponse("", [3, 2])
    buffer = bytearray(coder.new_encoder().encode(reply) + b"abcde")
    decoder = coder.new_decoder(1 << 20)
    assert decoder.decode(buffer, m.GetObjectsResponse) == reply
    assert buffer == b"abcde"
    assert decoder.finish(buffer) is True and buffer == b"abcde"


def test_a_value_across_messages_arrives_byte_by_byte():
    (call,) = recorded_calls("show-1")
    data = call.responses[0].data  # Go's GetImageResponse: several messages
    decoder = GobCoder().new_decoder(1 << 24)
    buffer = bytearray()
    results = []
    for byte in data:
        buffer.append(byte)
        results.append(decoder.decode(buffer, m.GetImageResponse))
    assert all(result is INCOMPLETE for result in results[:-1])
    assert isinstance(results[-1], m.GetImageResponse)
    assert results[-1].image.file_system is not None
    assert buffer == b""


def test_generic_values_without_a_kind_and_limits():
    coder = GobCoder()
    data = coder.new_encoder().encode(m.FindLatestImageResponse("a/b/c", ""))
    assert coder.new_decoder(1 << 20).decode(bytearray(data), None) == {"ImageName": "a/b/c"}
    with pytest.raises(MessageTooLarge):
        coder.new_decoder(4).decode(bytearray(data), None)
    with pytest.raises(GobError):
        coder.new_decoder(1 << 20).decode(bytearray(b"\x03\xff\xff\xff"), m.CheckImageResponse)
