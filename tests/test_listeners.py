"""The listener model of the load tester: playback against synthetic arrivals with known
gaps, the pass rule, the capacity search, and listener/burst loops against a fake server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from loadtest.cli import parse_args
from loadtest.corpus import TextPicker, load_texts
from loadtest.listeners import (
    T1_TEXT,
    bracket_t1,
    burst_start,
    drive_levels,
    find_capacity,
    judge,
    listener,
    listening_ends,
    markdown,
)
from loadtest.runner import RunConfig, run_level
from loadtest.stats import StreamRecord, percentile, ratio_interval, summarize_streams
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


def test_the_p95_over_t1_interval_holds_the_point_ratio_and_narrows_with_samples() -> None:
    # 40 first audios 0.20-0.39 s and T1 tries around 0.15 s: p95/T1 ~2.5.
    few = [0.20 + 0.005 * k for k in range(40)]
    t1 = [0.14, 0.15, 0.15, 0.16, 0.15]
    low, high = ratio_interval(few, t1) or (0.0, 0.0)
    assert low < (percentile(few, 95) or 0.0) / 0.15 < high
    assert high - low > 0.1  # 40 streams: the 95th percentile is the second slowest
    wide = high - low
    low, high = ratio_interval(few * 10, t1 * 10) or (0.0, 0.0)
    assert high - low < wide / 2
    assert ratio_interval(few, t1) == ratio_interval(few, t1)  # a fixed seed: reproducible
    assert ratio_interval([], t1) is None and ratio_interval(few, []) is None


def test_a_levels_t1_is_the_median_of_the_tries_before_and_after_it() -> None:
    before = {"text": "x", "t1_s": 0.10, "samples_s": [0.10, 0.10, 0.11]}
    after = {"text": "x", "t1_s": 0.20, "samples_s": [0.19, 0.20, 0.20]}
    t1 = bracket_t1(before, after)
    assert t1["t1_s"] == pytest.approx((0.11 + 0.19) / 2)
    assert (t1["before_s"], t1["after_s"], t1["repeats"]) == (0.10, 0.20, 6)


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


class _DriftingTTS(tts_pb2_grpc.TextToSpeechServicer):
    """A server that slows down: T1's short text answers in 0.05 s for its first five tries
    and 0.15 s after that; every other text in 0.16 s. One 0.1 s piece per stream."""

    def __init__(self) -> None:
        self.t1_tries = 0

    async def Synthesize(
        self, request: tts_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
        if request.text == T1_TEXT.text:
            self.t1_tries += 1
            await asyncio.sleep(0.05 if self.t1_tries <= 5 else 0.15)
        else:
            await asyncio.sleep(0.16)
        chunk = tts_pb2.AudioChunk(index=0, duration_seconds=0.1, piece=0, last_piece=True)
        yield tts_pb2.SynthesizeResponse(chunk=chunk)
        yield tts_pb2.SynthesizeResponse(summary=tts_pb2.SynthesizeSummary(chunks=1))


async def _drive(fake: _DriftingTTS) -> dict[str, Any]:
    server = grpc.aio.server()
    tts_pb2_grpc.add_TextToSpeechServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    cfg = RunConfig(
        address=f"127.0.0.1:{port}", mode="listen", users=[1], duration_s=1.0, requests=2,
        think_s=0.0, stagger_s=0.0,
    )  # fmt: skip
    args = argparse.Namespace(t1_repeats=5, find_capacity=False, capacity_max=4)
    picker = TextPicker(load_texts(("en",), max_sentences=1), seed=1)
    try:
        async with grpc.aio.insecure_channel(cfg.address) as channel:
            return await drive_levels(cfg, args, [tts_pb2_grpc.TextToSpeechStub(channel)], picker)
    finally:
        await server.stop(None)


def test_each_level_is_judged_against_the_t1_tries_around_it() -> None:
    run = asyncio.run(_drive(_DriftingTTS()))
    (level,) = run["levels"]
    fig = level.figures
    # Before the level T1 was 0.05 s: 0.16 s first audios would be 3.2x and fail. The tries
    # around the level (0.05 and 0.15 s) put T1 at ~0.10 s: 1.6x, a pass.
    assert run["t1"]["t1_s"] == pytest.approx(0.05, abs=0.02)
    assert fig["t1"]["after_s"] == pytest.approx(0.15, abs=0.02)
    assert fig["t1"]["t1_s"] == pytest.approx(0.10, abs=0.02)
    assert fig["passes"] and 1.3 < fig["p95_over_t1"] < 1.9
    low, high = fig["p95_over_t1_interval"]
    assert low <= fig["p95_over_t1"] <= high
    report = {
        "t1": run["t1"], "pass_rule": "p95 <= 2 x T1", "mode": "listen", "capacity": None,
        "settings": {"think_s": 0.0, "stagger_s": 0.0},
        "levels": [{"users": 1, **fig}],
    }  # fmt: skip
    row = next(line for line in markdown(report) if line.startswith("| 1 |"))
    assert f"| {fig['t1']['t1_s']:.3f} |" in row and f"{low:.2f}–{high:.2f}" in row
