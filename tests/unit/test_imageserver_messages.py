"""The imageserver messages against the Go programs' recorded calls."""

from __future__ import annotations

import hashlib

import pytest

from imaginator.goformats.gob import Decoder, Encoder, TypeIds
from imaginator.store import imageserver_messages as m
from tests.support.gobstreams import recorded_calls

REQUESTS = {
    "ImageServer.AddImage": m.AddImageRequest,
    "ImageServer.ChangeImageExpiration": m.ChangeImageExpirationRequest,
    "ImageServer.CheckImage": m.CheckImageRequest,
    "ImageServer.DeleteImage": m.DeleteImageRequest,
    "ImageServer.FindLatestImage": m.FindLatestImageRequest,
    "ImageServer.GetImage": m.GetImageRequest,
    "ImageServer.GetImageExpiration": m.GetImageExpirationRequest,
    "ImageServer.MakeDirectory": m.MakeDirectoryRequest,
    "ObjectServer.AddObjects": m.AddObjectRequest,
    "ObjectServer.GetObjects": m.GetObjectsRequest,
}
RESPONSES = {
    "ImageServer.AddImage": m.AddImageResponse,
    "ImageServer.ChangeImageExpiration": m.ChangeImageExpirationResponse,
    "ImageServer.CheckImage": m.CheckImageResponse,
    "ImageServer.DeleteImage": m.DeleteImageResponse,
    "ImageServer.FindLatestImage": m.FindLatestImageResponse,
    "ImageServer.GetImage": m.GetImageResponse,
    "ImageServer.GetImageExpiration": m.GetImageExpirationResponse,
    "ImageServer.ListDirectories": m.Directory,
    "ImageServer.MakeDirectory": m.MakeDirectoryResponse,
    "ObjectServer.AddObjects": m.AddObjectResponse,
    "ObjectServer.GetObjects": m.GetObjectsResponse,
}


def _typed(label, method, side="responses", index=0):
    call = [c for c in recorded_calls(label) if c.method == method][index]
    kind = (RESPONSES if side == "responses" else REQUESTS)[method]
    decoder = Decoder(kind.SCHEMA)
    values = [decoder.feed(message.data)[0] for message in getattr(call, side)]
    return call, [kind.from_gob(value) for value in values]


def test_directories():
    _, made = _typed("mkdir-nested-1", "ImageServer.MakeDirectory", "requests")
    assert made == [m.MakeDirectoryRequest("tools/nested", make_all=False)]
    _, listed = _typed("imaginator-start-6", "ImageServer.ListDirectories")
    assert {d.name for d in listed} == {".", "tools", "tools/nested", ""}
    assert listed[-1] == m.Directory()


def test_find_latest_check_and_expiration():
    _, (request,) = _typed("find-latest-image-1", "ImageServer.FindLatestImage", "requests")
    assert request == m.FindLatestImageRequest("tools")
    _, (found,) = _typed("find-latest-image-1", "ImageServer.FindLatestImage")
    assert found == m.FindLatestImageResponse(image_name="tools/expiring")
    _, (exists,) = _typed("check-1", "ImageServer.CheckImage")
    _, (missing,) = _typed("check-missing-1", "ImageServer.CheckImage")
    assert exists.image_exists and not missing.image_exists
    _, (expiry,) = _typed("get-image-expiration-1", "ImageServer.GetImageExpiration")
    _, (change,) = _typed(
        "change-image-expiration-1", "ImageServer.ChangeImageExpiration", "requests"
    )
    assert expiry.error == "" and change.image_name == "tools/expiring"
    # -expiresIn=2h at add time, then 5h: the new expiry is about 3 hours later.
    assert 2.9 * 3600 < (change.expires_at - expiry.expires_at) / 1e9 < 3.1 * 3600


def test_objects_up_and_down():
    call, requests = _typed("add-1", "ObjectServer.AddObjects", "requests", index=1)
    _, responses = _typed("add-1", "ObjectServer.AddObjects", index=1)
    assert requests[-1] == m.AddObjectRequest(0)
    for request, raw, response in zip(requests, call.raw_sent, responses, strict=False):
        assert request.length == len(raw)
        assert request.expected_hash == hashlib.sha512(raw).digest() == response.hash
        assert response.added and response.error_string == ""
    _, again = _typed("add-expiring-1", "ObjectServer.AddObjects")
    assert not any(r.added for r in again)  # already stored
    get, (asked,) = _typed("get-1", "ObjectServer.GetObjects", "requests")
    _, (answer,) = _typed("get-1", "ObjectServer.GetObjects")
    assert answer.response_string == "" and len(answer.object_sizes) == len(asked.hashes)
    assert sum(answer.object_sizes) == len(get.raw_received)
    offset = 0
    for wanted, size in zip(asked.hashes, answer.object_sizes, strict=True):
        assert hashlib.sha512(get.raw_received[offset : offset + size]).digest() == wanted
        offset += size


@pytest.mark.parametrize(
    "label",
    [
        "mkdir-1",
        "check-1",
        "get-1",
        "find-latest-image-1",
        "get-image-expiration-1",
        "change-image-expiration-1",
        "delete-1",
        "show-1",
    ],
)
def test_our_requests_are_gos_bytes(label):
    """A fresh imagetool numbers its types from 64: ours do the same."""
    ids = TypeIds()
    for call in recorded_calls(label):
        kind = REQUESTS[call.method]
        decoder, encoder = Decoder(kind.SCHEMA), Encoder(ids)
        for message in call.requests:
            (value,) = decoder.feed(message.data)
            assert encoder.encode(kind.SCHEMA, kind.from_gob(value).to_gob()) == message.data


def test_every_recorded_response_fits_our_schemas():
    count = 0
    for label in ("get-1", "add-1", "imaginator-bb-3", "imaginator-hello-3", "listdirs-1"):
        for call in recorded_calls(label):
            kind = RESPONSES[call.method]
            decoder = Decoder(kind.SCHEMA)
            for message in call.responses:
                (value,) = decoder.feed(message.data)
                assert isinstance(kind.from_gob(value), kind)
                count += 1
    assert count > 20


def test_check_objects_round_trip():
    request = m.CheckObjectsRequest([bytes(range(64)), bytes(64)])
    data = Encoder().encode(request.SCHEMA, request.to_gob())
    assert m.CheckObjectsRequest.from_gob(Decoder(request.SCHEMA).feed(data)[0]) == request
    reply = m.CheckObjectsResponse([12, 0])
    data = Encoder().encode(reply.SCHEMA, reply.to_gob())
    assert m.CheckObjectsResponse.from_gob(Decoder(reply.SCHEMA).feed(data)[0]) == reply
