"""The capped transport's count: where a stream's events end however the reads split them,
and where an error body is cut."""

from __future__ import annotations

import pytest
from httpx2 import Response

from llm_service.errors import UpstreamError
from llm_service.upstream.bounded import ERROR_BODY_BYTES
from llm_service.upstream.capped_transport import _Meter

EVENTS = {"content-type": "text/event-stream"}


def fed(limit: int, *pieces: bytes) -> _Meter:
    meter = _Meter(Response(200, headers=EVENTS), 1 << 20, limit)
    for piece in pieces:
        assert meter.take(piece) == piece
    return meter


@pytest.mark.parametrize("end", [b"\n\n", b"\r\r", b"\r\n\r\n"])
def test_an_event_end_split_across_every_pair_of_reads_resets_the_count(end: bytes) -> None:
    stream = b"data: 1" + end + b"data: 22"
    for cut in range(1, len(stream)):
        for second in range(cut + 1, len(stream) + 1):
            meter = fed(64, stream[:cut], stream[cut:second], stream[second:])
            assert meter.run == len(b"data: 22"), (cut, second)


def test_lines_without_a_blank_line_count_as_one_event() -> None:
    meter = fed(64, b"data: 1\n", b"data: 2\n", b"data: 3\n")
    assert meter.run == 24
    with pytest.raises(UpstreamError, match="stream event longer than 64 bytes"):
        fed(64, *[b"data: 1\n"] * 9)


def test_an_error_body_is_cut_at_its_cap() -> None:
    meter = _Meter(Response(500), 1 << 20, 1 << 20)
    piece = b"e" * (ERROR_BODY_BYTES // 2 + 1)
    assert meter.take(piece) == piece and not meter.done
    assert len(meter.take(piece)) == ERROR_BODY_BYTES - len(piece) and meter.done


def test_a_whole_reply_past_its_cap_fails_and_a_declared_one_before_reading() -> None:
    meter = _Meter(Response(200), 10, 1 << 20)
    meter.take(b"x" * 10)
    with pytest.raises(UpstreamError, match="exceeds 10 bytes"):
        meter.take(b"x")
    assert meter.failed
    with pytest.raises(UpstreamError, match="exceeds 10 bytes"):
        _Meter(Response(200, headers={"content-length": "11"}), 10, 1 << 20)
