"""A live server whose engine misbehaves (raises, hangs, returns too few results), replies
that would not fit a client's 4 MiB limit, and a bounded soak: the outcome a client sees is
the one counted, slots come back, memory stays flat."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from promtext import sample
from test_hardening_rpc import code_of, count, pcm_f32, scrape, stub_for, wait_until

from supertonic_client._proto.supertonic.v1 import tts_pb2, tts_pb2_grpc
from supertonic_grpc.engine import EngineError

pytestmark = pytest.mark.slow

CLIENT_LIMIT = 4 * 1024 * 1024  # the default receive limit of gRPC clients


def patch_entry(engine, wrap) -> None:
    """Wrap the engine call every chunk goes through: `admit` with the step-level scheduler
    (issue 8), else `synthesize`."""
    stage = "admit" if hasattr(engine, "admit") else "synthesize"
    setattr(engine, stage, wrap(getattr(engine, stage)))


def test_an_engine_that_raises_is_internal_for_both_rpcs_and_counted(make_server) -> None:
    server = make_server()

    def broken(_real):
        def call(items):
            raise EngineError("injected")

        return call

    patch_entry(server.running.scheduler.engine, broken)
    stub = stub_for(server.address)
    assert code_of(lambda: list(stub.Synthesize(pcm_f32("One."), timeout=30))) is (
        grpc.StatusCode.INTERNAL
    )
    assert code_of(lambda: stub.SynthesizeOnce(pcm_f32("Two."), timeout=30)) is (
        grpc.StatusCode.INTERNAL
    )
    assert count(server, "Synthesize", "INTERNAL") == 1
    assert count(server, "SynthesizeOnce", "INTERNAL") == 1
    assert server.running.service.active == 0


def test_an_engine_that_hangs_costs_the_client_its_deadline_not_the_server_its_slot(
    make_server,
) -> None:
    server = make_server()
    gate = threading.Event()

    def hanging(real):
        def call(items):
            gate.wait(60)
            return real(items)

        return call

    patch_entry(server.running.scheduler.engine, hanging)
    stub = stub_for(server.address)
    try:
        code = code_of(lambda: list(stub.Synthesize(pcm_f32("Stuck."), timeout=2)))
        assert code is grpc.StatusCode.DEADLINE_EXCEEDED
        assert wait_until(lambda: server.running.service.active == 0, timeout=10)
        assert wait_until(lambda: count(server, "Synthesize", "DEADLINE_EXCEEDED") == 1)
    finally:
        gate.set()
    assert list(stub.Synthesize(pcm_f32("Unstuck."), timeout=60))[-1].HasField("summary")


def test_an_engine_that_returns_too_few_results_fails_the_request_promptly(make_server) -> None:
    server = make_server()
    patch_entry(server.running.scheduler.engine, lambda real: lambda items: real(items)[:-1])
    stub = stub_for(server.address)
    code = code_of(lambda: list(stub.Synthesize(pcm_f32("Lost."), timeout=10)))
    assert code is grpc.StatusCode.INTERNAL
    assert count(server, "Synthesize", "INTERNAL") == 1


def heavy_request() -> tts_pb2.SynthesizeRequest:
    # Slow speech in 32-bit floats at 48 kHz, in 900-character chunks: the largest messages.
    text = " ".join(["A long, slow sentence that keeps going and going."] * 17)
    return tts_pb2.SynthesizeRequest(
        text=text,
        speed=0.5,
        steps=1,
        audio_config=tts_pb2.AudioConfig(encoding=tts_pb2.PCM_F32, sample_rate_hz=48000),
        chunking=tts_pb2.ChunkingConfig(max_chunk_chars=900, first_chunk_chars=900),
    )


def test_no_stream_message_exceeds_a_client_limit_and_the_count_tells_the_truth(
    make_server,
) -> None:
    server = make_server()
    # A client that accepts anything, so a message over 4 MiB would be seen, not refused.
    channel = grpc.insecure_channel(
        server.address, options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)]
    )
    stub = tts_pb2_grpc.TextToSpeechStub(channel)
    sizes: list[int] = [0]

    def read() -> None:
        for msg in stub.Synthesize(heavy_request(), timeout=120):
            sizes.append(msg.ByteSize())

    code = code_of(read)
    assert all(size <= CLIENT_LIMIT for size in sizes), max(sizes)
    assert wait_until(lambda: count(server, "Synthesize", code.name) == 1)
    assert count(server, "Synthesize", "OK") == (1 if code is grpc.StatusCode.OK else 0)


def test_a_heavy_stream_succeeds_in_messages_of_at_most_one_mebibyte(make_server) -> None:
    server = make_server()
    sizes = [
        m.ByteSize() for m in stub_for(server.address).Synthesize(heavy_request(), timeout=120)
    ]
    assert max(sizes) <= 1024 * 1024


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_a_bounded_soak_keeps_memory_flat_and_gauges_return_to_zero(make_server) -> None:
    server = make_server(max_streams=16)
    text = "A sentence for the soak. And a second one, to make two chunks."
    stub = stub_for(server.address)

    def one(i: int) -> grpc.StatusCode:
        kind = i % 4
        if kind == 0:
            return code_of(lambda: stub.SynthesizeOnce(pcm_f32(text), timeout=60))
        if kind == 1:  # leave after the first chunk
            call = stub.Synthesize(pcm_f32(text), timeout=60)
            next(call)
            call.cancel()
            return grpc.StatusCode.CANCELLED
        if kind == 2:
            return code_of(lambda: list(stub.Synthesize(pcm_f32(""), timeout=60)))
        return code_of(lambda: list(stub.Synthesize(pcm_f32(text), timeout=60)))

    def run(n: int) -> list[grpc.StatusCode]:
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(one, range(n)))

    run(40)  # warm: allocator pools, grpc buffers, caches
    before = rss_bytes()
    started = time.monotonic()
    codes = run(120)
    assert set(codes) <= {
        grpc.StatusCode.OK,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INVALID_ARGUMENT,
    }
    growth = rss_bytes() - before
    # Python objects stay flat (tracemalloc: tens of kB); native pools drift ~6 MB per 100.
    assert growth < 40 * 1024 * 1024, f"RSS grew {growth / 1e6:.1f} MB over 120 requests"
    assert time.monotonic() - started < 300
    assert wait_until(lambda: server.running.service.active == 0, timeout=30)
    assert wait_until(lambda: server.running.scheduler.queued() == 0, timeout=30)
    body = scrape(server)
    assert sample(body, "supertonic_active_streams") == 0
    assert sample(body, "supertonic_active_unary_requests", rpc="SynthesizeOnce") == 0
    for priority in ("high", "normal"):
        assert sample(body, "supertonic_queue_depth", priority=priority) == 0


def test_a_unary_reply_is_resampled_off_the_event_loop(make_server, monkeypatch) -> None:
    from supertonic_grpc import audio

    server = make_server()
    loop_thread = server.call(_current_thread())
    threads: list[int] = []
    real = audio.resample

    def spy(*args, **kwargs):
        threads.append(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(audio, "resample", spy)
    req = pcm_f32("Resample me, please.")
    req.audio_config.sample_rate_hz = 16000
    assert stub_for(server.address).SynthesizeOnce(req, timeout=60).sample_rate_hz == 16000
    assert threads and loop_thread not in threads


async def _current_thread() -> int:
    return threading.get_ident()


def test_the_python_client_receives_replies_over_four_mebibytes(make_server) -> None:
    from supertonic_client.client import Encoding, SupertonicClient

    server = make_server(max_reply_bytes=32 * 1024 * 1024)
    text = " ".join(["A sentence long enough to need some seconds of audio."] * 10)
    with SupertonicClient(server.address, timeout=120) as tts:
        clip = tts.synthesize(text, steps=1, encoding=Encoding.PCM_F32, sample_rate_hz=48000)
    assert len(clip.data) > CLIENT_LIMIT


def test_a_heavy_streaming_synthesize_sends_no_message_over_one_mebibyte(make_server) -> None:
    # One long sentence, slow, in 32-bit floats at 48 kHz: a chunk of many seconds whose
    # audio in one message would pass the 4 MiB limit of every gRPC client.
    heavy = heavy_request()
    config = tts_pb2.StreamingSynthesizeConfig(
        speed=heavy.speed,
        steps=heavy.steps,
        audio_config=heavy.audio_config,
        chunking=heavy.chunking,
    )
    requests = [
        tts_pb2.StreamingSynthesizeRequest(config=config),
        tts_pb2.StreamingSynthesizeRequest(text=heavy.text[:880]),
    ]
    server = make_server()
    replies = list(stub_for(server.address).StreamingSynthesize(iter(requests), timeout=120))
    chunks = [r.chunk for r in replies if r.HasField("chunk")]
    assert replies[-1].HasField("summary")
    assert max(r.ByteSize() for r in replies) <= 1024 * 1024
    assert len(chunks) > len({c.index for c in chunks})  # a chunk was split over messages
    total = sum(c.duration_seconds for c in chunks)
    assert abs(total - replies[-1].summary.audio_seconds) < 1e-6
