"""LogPump: a build log delivered at the reader's pace, slow readers dropped."""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer

from imaginator.runtime.buildlog import BuildLog
from imaginator.runtime.follower import WRITE_PIECE, LogPump, too_slow_note


class Transport:
    """A consumer that records writes and lets the test push back."""

    def __init__(self) -> None:
        self.producer: IPushProducer | None = None
        self.written: list[bytes] = []
        self.registrations = 0

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        assert streaming and self.producer is None
        self.producer = producer
        self.registrations += 1

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)

    @property
    def data(self) -> bytes:
        return b"".join(self.written)


def pump_for(log: BuildLog, limit: int = 100, **kwargs: object) -> tuple[LogPump, Transport]:
    transport = Transport()
    pump = LogPump(log, transport, transport.write, limit=limit, **kwargs)  # type: ignore[arg-type]
    return pump, transport


def test_snapshot_then_live_chunks_while_the_reader_keeps_up() -> None:
    log = BuildLog()
    log.line("before")
    pump, transport = pump_for(log)
    pump.start()
    assert transport.producer is pump
    log.line("after")
    assert transport.written == [b"before\n", b"after\n"]
    assert pump.buffered == 0


def test_paused_reader_gets_the_queue_on_resume() -> None:
    log = BuildLog()
    pump, transport = pump_for(log)
    pump.start()
    pump.pauseProducing()
    log.line("one")
    log.line("two")
    assert transport.written == []
    assert pump.buffered == 8
    pump.resumeProducing()
    assert transport.data == b"one\ntwo\n"
    assert pump.buffered == 0


def test_reader_too_far_behind_is_dropped_with_a_note() -> None:
    log = BuildLog()
    dropped: list[bool] = []
    pump, transport = pump_for(log, limit=100, on_dropped=lambda: dropped.append(True))
    pump.start()
    pump.pauseProducing()
    for _ in range(10):
        log.write(b"x" * 9 + b"\n")
    assert pump.buffered == 100 and not dropped
    log.write(b"one byte too many\n")
    assert dropped == [True]
    assert transport.written == [too_slow_note(118)]
    assert too_slow_note(118) == b"[log follower too slow: 118 bytes dropped; reload]\n"
    assert transport.producer is None
    assert log._subscribers == []
    # The build goes on; nothing more reaches the reader.
    log.line("later")
    pump.resumeProducing()
    assert transport.written == [too_slow_note(118)]


def test_snapshot_does_not_count_against_the_limit_and_goes_in_pieces() -> None:
    log = BuildLog()
    log.write(b"s" * (3 * WRITE_PIECE + 5))
    pump, transport = pump_for(log, limit=10)

    def write(data: bytes) -> None:
        transport.written.append(data)
        pump.pauseProducing()  # the transport is full after every piece

    pump._send = write
    pump.start()
    assert [len(w) for w in transport.written] == [WRITE_PIECE]
    assert pump.buffered == 2 * WRITE_PIECE + 5
    log.line("live")
    assert not pump.dropped
    for _ in range(3):
        pump.resumeProducing()
    assert transport.data == b"s" * (3 * WRITE_PIECE + 5)
    pump.resumeProducing()
    assert transport.data.endswith(b"live\n")


def test_finish_hands_over_the_queue_without_waiting() -> None:
    log = BuildLog()
    pump, transport = pump_for(log, limit=100)
    pump.start()
    pump.pauseProducing()
    log.line("queued")
    pump.finish()
    assert transport.data == b"queued\n"
    assert transport.producer is None and not pump.active


def test_finish_drops_a_reader_that_has_not_taken_a_large_snapshot() -> None:
    log = BuildLog()
    log.write(b"s" * (2 * WRITE_PIECE))
    pump, transport = pump_for(log, limit=100)

    def write(data: bytes) -> None:
        transport.written.append(data)
        pump.pauseProducing()

    pump._send = write
    pump.start()
    pump.finish()
    assert transport.written == [b"s" * WRITE_PIECE, too_slow_note(WRITE_PIECE)]
    assert transport.producer is None and pump.dropped


def test_stop_producing_means_the_reader_is_gone() -> None:
    log = BuildLog()
    pump, transport = pump_for(log)
    pump.start()
    pump.pauseProducing()
    log.line("x")
    pump.stopProducing()
    assert not pump.active and pump.buffered == 0
    assert log._subscribers == []
    assert transport.producer is None


def test_without_a_consumer_chunks_are_sent_as_they_come() -> None:
    log = BuildLog()
    sent: list[bytes] = []
    pump = LogPump(log, None, sent.append, snapshot=False)
    log.line("not sent: before start")
    pump.start()
    log.line("sent")
    pump.finish()
    assert sent == [b"sent\n"]
