"""BuildLog: bounded memory, redaction of whole writes and of streams, followers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from imaginator.runtime.buildlog import BuildLog, dropped_marker
from imaginator.runtime.redact import REDACTED


@pytest.fixture
def events() -> Iterator[list[LogEvent]]:
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def test_small_log_is_kept_whole() -> None:
    log = BuildLog(head_limit=100, tail_limit=100)
    for i in range(10):
        log.line(f"line {i}")
    assert log.getvalue() == b"".join(f"line {i}\n".encode() for i in range(10))
    assert log.dropped == 0
    assert len(log) == log.written


def test_long_log_keeps_head_and_tail_and_says_what_was_dropped() -> None:
    log = BuildLog(head_limit=1000, tail_limit=4000)
    lines = [f"line {i:05d}\n".encode() for i in range(10_000)]
    for line in lines:
        log.write(line)
    value = log.getvalue()
    total = sum(map(len, lines))
    assert log.written == total
    head, marker, tail = value.partition(dropped_marker(log.dropped))
    assert marker, "no dropped-bytes line"
    assert head == b"".join(lines[: len(head) // 11]) and 1000 - 11 < len(head) <= 1000
    # The tail starts at a line and ends with the last line written.
    assert tail.endswith(lines[-1]) and tail.startswith(b"line ")
    assert 4000 - 11 <= len(tail) <= 4000
    assert log.dropped == total - len(head) - len(tail)
    assert marker == f"[… {log.dropped} bytes dropped …]\n".encode()


def test_memory_stays_bounded_however_much_is_written() -> None:
    log = BuildLog(head_limit=1 << 10, tail_limit=4 << 10)
    chunk = b"y" * 999 + b"\n"
    for _ in range(10_000):
        log.write(chunk)
    assert sum(map(len, log._head)) + sum(map(len, log._tail)) <= 5 << 10
    assert len(log.getvalue()) <= (5 << 10) + len(dropped_marker(log.dropped)) + 1


def test_tail_cut_never_splits_a_character() -> None:
    log = BuildLog(head_limit=0, tail_limit=10)
    log.write("ééééééééé")  # 18 bytes, no newline
    value = log.getvalue()
    text = value.decode("utf-8")  # would raise on a split sequence
    assert text.endswith("é" * 5)


def test_marker_on_its_own_line_after_a_partial_head() -> None:
    log = BuildLog(head_limit=5, tail_limit=5)
    log.write("abc")
    log.write("0123456789\n")
    assert log.getvalue().startswith(b"abc\n[\xe2\x80\xa6 ")


def test_followers_see_every_chunk_even_when_the_log_drops_them() -> None:
    log = BuildLog(head_limit=10, tail_limit=10)
    seen: list[bytes] = []
    log.subscribe(seen.append)
    for i in range(100):
        log.line(f"{i}")
    assert b"".join(seen) == b"".join(f"{i}\n".encode() for i in range(100))


def test_failing_subscriber_is_dropped_and_logged_once(events: list[LogEvent]) -> None:
    log = BuildLog()
    calls: list[bytes] = []

    def broken(chunk: bytes) -> None:
        calls.append(chunk)
        raise ConnectionError("client went away")

    log.subscribe(broken)
    log.line("one")
    log.line("two")
    assert calls == [b"one\n"]
    messages = [formatEvent(event) for event in events]
    dropped = [m for m in messages if "follower dropped" in m]
    assert dropped == ["Build log follower dropped: ConnectionError: client went away"]


def test_writes_are_redacted_with_the_secrets_in_force() -> None:
    secrets = {"A": "hunter2"}
    log = BuildLog(lambda: secrets)
    log.line("password hunter2")
    secrets = {"A": "swordfish"}
    log.line("hunter2 swordfish")
    assert log.getvalue() == f"password {REDACTED}\nhunter2 {REDACTED}\n".encode()


def test_stream_redacts_a_secret_split_between_writes() -> None:
    secret = "pässwörd-42"
    log = BuildLog(lambda: {"S": secret})
    data = f"one {secret} two {secret}".encode()
    for cut in range(len(data) + 1):
        log = BuildLog(lambda: {"S": secret})
        stream = log.stream()
        stream.write(data[:cut])
        stream.write(data[cut:])
        stream.close()
        assert log.getvalue() == f"one {REDACTED} two {REDACTED}".encode(), cut


def test_stream_passes_complete_lines_at_once() -> None:
    log = BuildLog(lambda: {"S": "a-long-secret"})
    chunks: list[bytes] = []
    log.subscribe(chunks.append)
    stream = log.stream()
    stream.write(b"a line\n")
    assert chunks == [b"a line\n"]
    stream.write(b"no newline yet")
    assert b"".join(chunks) == b"a line\n" + b"no newline yet"[: -len("a-long-secret") + 1]
    stream.close()
    assert b"".join(chunks) == b"a line\nno newline yet"
