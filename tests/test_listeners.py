"""The listener model of the load tester: playback against synthetic arrivals with known
gaps, the pass rule, the capacity search, and listener/burst loops against a fake server."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from loadtest.cli import parse_args
from loadtest.corpus import TextPicker, load_texts
from loadtest.listeners import burst_start, find_capacity, judge, listener, listening_ends
from loadtest.runner import RunConfig, run_level
from loadtest.stats import StreamRecord, summarize_streams
from supertonic_client._proto.supertonic.v1 import tts_pb2, tts_pb2_grpc


def _record(start: float, arrivals: list[float], durations: list[float]) -> StreamRecord:
    rec = StreamRecord(user=0, text_id="x", language="en", start=start)
    rec.arrivals, rec.durations = arrivals, durations
    rec.first_audio = arrivals[0] if arrivals else None
    rec.end = arrivals[-1] if arrivals else start
    return rec


def test_a_listener_hears_the_known_gaps_and_listens_to_the_end() -> None:
    # Piece 0 plays 10.0-10.7; piece 1 arrives on time (10.5); chunk 1 arrives at 12.0,
    # 0.3 s after the audio ran out at 11.7: one gap of 0.3 s; playback ends at 13.0.
    rec = _record(9.8, [10.0, 10.5, 12.0], [0.7, 1.0, 1.0])
    pb = rec.playback()
    assert pb.gaps == pytest.approx([0.0, 0.0, 0.3])
    assert listening_ends(rec) == pytest.approx(13.0)
    figures = summarize_streams([rec], 5.0, 0.02)
    assert figures["gapless_share"] == 0.0
    assert figures["underruns"]["max_gap_s"] == pytest.approx(0.3)
    assert rec.ttfa == pytest.approx(0.2)


def test_gapless_pieces_pass_and_a_slow_p95_or_a_gap_fails() -> None:
    smooth = [_record(0.0, [0.2, 0.6, 1.5], [0.7, 1.0, 2.0]) for _ in range(4)]
    figures = summarize_streams(smooth, 5.0, 0.02)
    assert judge(figures, t1_s=0.15) == {"p95_over_t1": pytest.approx(0.2 / 0.15), "passes": True}
    assert not judge(figures, t1_s=0.05)["passes"]  # p95 4x T1
    gappy = [*smooth[:3], _record(0.0, [0.2, 1.5], [0.7, 1.0])]
    assert not judge(summarize_streams(gappy, 5.0, 0.02), t1_s=0.15)["passes"]


def test_capacity_search_finds_the_highest_passing_level() -> None:
    for capacity in (0, 1, 5, 6, 7, 64):
        tried: list[int] = []

        async def run(n: int, capacity: int = capacity, tried: list[int] = tried) -> bool:
            tried.append(n)
            return n <= capacity

        assert asyncio.run(find_capacity(run, 1, 64)) == capacity
        assert len(tried) == len(set(tried)) <= 13  # doubling then bisection


class _FakeTTS(tts_pb2_grpc.TextToSpeechServicer):
    """Two 0.1 s pieces per stream; counts calls in flight. A call answers once `together`
    calls are in flight (or after 10 s): streams that really run at once all get through at
    once, while streams one after another could never overlap, however fast they start."""

    def __init__(self, together: int = 1) -> None:
        self.in_flight = self.most = 0
        self.together = together
        self.all_in = asyncio.Event()

    async def Synthesize(
        self, request: tts_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        if self.in_flight >= self.together:
            self.all_in.set()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_in.wait(), 10.0)
            for piece in (0, 1):
                chunk = tts_pb2.AudioChunk(
                    index=0, duration_seconds=0.1, piece=piece, last_piece=piece == 1
                )
                yield tts_pb2.SynthesizeResponse(chunk=chunk)
            yield tts_pb2.SynthesizeResponse(summary=tts_pb2.SynthesizeSummary(chunks=1))
        finally:
            self.in_flight -= 1


async def _level(loop_for, users: int, **cfg_kw) -> tuple[list[StreamRecord], _FakeTTS]:  # type: ignore[no-untyped-def]
    fake = _FakeTTS(together=users)
    server = grpc.aio.server()
    tts_pb2_grpc.add_TextToSpeechServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    cfg = RunConfig(address=f"127.0.0.1:{port}", **cfg_kw)
    picker = TextPicker(load_texts(("en",), max_sentences=1), seed=1)
    try:
        async with grpc.aio.insecure_channel(cfg.address) as channel:
            stub = tts_pb2_grpc.TextToSpeechStub(channel)
            result = await run_level(cfg, [stub], picker, users, loop_for(users))
    finally:
        await server.stop(None)
    return result.records, fake


def test_a_listener_asks_again_only_after_its_playback_ended() -> None:
    records, _ = asyncio.run(
        _level(lambda n: listener, 1, duration_s=5.0, requests=3, think_s=0.0, stagger_s=0.0)
    )
    assert [r.code for r in records] == ["OK"] * 3
    for before, after in itertools.pairwise(records):
        assert after.start >= listening_ends(before)


def test_a_burst_starts_every_stream_at_once() -> None:
    records, fake = asyncio.run(_level(burst_start, 6, duration_s=5.0))
    assert len(records) == 6 and all(r.ok for r in records)
    assert fake.most == 6  # all six were in flight together


def test_listener_flags_become_levels_and_are_checked(tmp_path: Path) -> None:
    args = parse_args(["--listeners", "1,2,4", "--find-capacity", "--out-dir", str(tmp_path)])
    assert (args.mode, args.users, args.find_capacity) == ("listen", [1, 2, 4], True)
    assert parse_args(["--burst", "8"]).mode == "burst"
    with pytest.raises(SystemExit):
        parse_args(["--find-capacity"])
    with pytest.raises(SystemExit):
        parse_args(["--listeners", "2", "--burst", "2"])
