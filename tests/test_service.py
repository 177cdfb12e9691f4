"""The real server (full-size model, demo weights, CPU) over gRPC: streaming, batching,
cancellation, status codes, limits and metrics."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from engine_hooks import CancelWatch, EngineCalls, gone, no_work_from
from grpc_health.v1 import health_pb2, health_pb2_grpc
from promtext import sample
from waiting import wait_until

from supertonic_client._proto.supertonic.v1 import tts_pb2, tts_pb2_grpc
from supertonic_grpc import audio
from supertonic_grpc.engine import EngineError

pytestmark = pytest.mark.slow

THREE_SENTENCES = (
    "The quick brown fox jumps over the lazy dog. A second sentence follows it, with a clause. "
    "And a third one closes the paragraph."
)


def stub_for(address: str) -> tts_pb2_grpc.TextToSpeechStub:
    return tts_pb2_grpc.TextToSpeechStub(grpc.insecure_channel(address))


def request(text: str = THREE_SENTENCES, **kw) -> tts_pb2.SynthesizeRequest:
    kw.setdefault("steps", 2)
    kw.setdefault("chunking", tts_pb2.ChunkingConfig(max_chunk_chars=50, first_chunk_chars=20))
    return tts_pb2.SynthesizeRequest(text=text, **kw)


def collect(stub, req, timeout: float = 120):
    chunks, arrivals, summary = [], [], None
    for msg in stub.Synthesize(req, timeout=timeout):
        if msg.HasField("chunk"):
            chunks.append(msg.chunk)
            arrivals.append(time.monotonic())
        else:
            summary = msg.summary
    return chunks, arrivals, summary


def test_stream_yields_ordered_chunks_whose_audio_adds_up_to_the_totals(live_server) -> None:
    chunks, _, summary = collect(stub_for(live_server.address), request())
    # A chunk may come as several pieces: in order, numbered, the last one marked.
    indices = sorted({c.index for c in chunks})
    assert len(indices) >= 3 and indices == list(range(len(indices)))
    assert [c.index for c in chunks] == sorted(c.index for c in chunks)
    for k in indices:
        mine = [c for c in chunks if c.index == k]
        assert [c.piece for c in mine] == list(range(len(mine)))
        assert [c.last_piece for c in mine] == [False] * (len(mine) - 1) + [True]
    assert len([c for c in chunks if c.index == 0]) >= 2  # the first audio comes early
    samples = [len(audio.decode(c.audio, audio.Encoding.LINEAR16)) for c in chunks]
    for c, n in zip(chunks, samples, strict=True):
        assert c.duration_seconds == pytest.approx(n / 44100, abs=1 / 44100)
        assert THREE_SENTENCES[c.text_start : c.text_end] == c.text
    offsets = np.cumsum([0.0] + [c.duration_seconds for c in chunks[:-1]])
    assert [c.audio_offset_seconds for c in chunks] == pytest.approx(list(offsets))
    assert summary is not None and summary.chunks == len(indices)
    assert summary.audio_seconds == pytest.approx(sum(samples) / 44100, abs=1e-3)
    assert summary.model_state == tts_pb2.DEMO
    assert 0 < summary.time_to_first_audio_seconds <= summary.total_seconds


def test_first_chunk_arrives_before_the_last_chunk_is_computed(live_server) -> None:
    chunks, _, _ = collect(stub_for(live_server.address), request())
    last = chunks[-1].index
    assert last >= 2  # beyond the lookahead: submitted only as earlier chunks are sent
    history = list(live_server.running.scheduler.history)
    rid = max(r for d in history for r, _ in d.admitted)  # the newest request: this one
    first_audio = min(d.tick for d in history if (rid, 0, 0) in d.vocoded)
    last_admitted = min(d.tick for d in history if (rid, last) in d.admitted)
    assert first_audio < last_admitted


def test_concurrent_requests_are_batched_and_keep_their_own_audio(make_server) -> None:
    server = make_server()
    scheduler = server.running.scheduler
    # The scheduler thread is held until all four first chunks are queued, so they are
    # admitted together however late each client thread starts.
    gate = threading.Event()
    blocker = scheduler.call(lambda _engine: gate.wait(60))
    stub = stub_for(server.address)
    voices = ["M1", "F2", "M1", "F3"]
    results: dict[int, bytes] = {}

    def one(i: int) -> None:
        req = request("Short and sweet.", voice=voices[i], seed=7)
        chunks, _, _ = collect(stub, req)
        results[i] = b"".join(c.audio for c in chunks)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(voices))]
    try:
        for t in threads:
            t.start()
        assert wait_until(lambda: scheduler.queued() == len(voices))
    finally:
        gate.set()
    blocker.result(30)
    for t in threads:
        t.join(120)
    assert max(d.request_ids.__len__() for d in server.running.scheduler.history) > 1
    text = server.running.metrics.render()
    assert (
        sample(text, "supertonic_batch_size_sum") / sample(text, "supertonic_batch_size_count") > 1
    )
    assert results[0] == results[2]  # same voice, same seed: identical audio
    assert results[0] != results[1] and results[1] != results[3]


def test_same_seed_reproduces_and_different_seeds_differ(live_server) -> None:
    stub = stub_for(live_server.address)
    a = collect(stub, request("Repeat after me.", seed=1))[0][0].audio
    b = collect(stub, request("Repeat after me.", seed=1))[0][0].audio
    c = collect(stub, request("Repeat after me.", seed=2))[0][0].audio
    da, db = (audio.decode(x, audio.Encoding.LINEAR16) for x in (a, b))
    assert np.abs(da - db).max() <= 2e-3 * 2  # identical up to batch-company rounding
    assert a != c


def count_of(server, code: str, rpc: str = "Synthesize") -> float:
    """How many `rpc` calls ended with `code` (0 before the first)."""
    body = server.running.metrics.render()
    try:
        return sample(body, "supertonic_requests_total", code=code, rpc=rpc)
    except KeyError:
        return 0.0


def dropped_request(server, cancels: CancelWatch, code: str) -> int:
    """Wait until the server counted the one request with `code`, the scheduler saw it
    cancelled, and its running chunks left at the next tick; returns its request id."""
    scheduler = server.running.scheduler
    assert wait_until(lambda: count_of(server, code) == 1)
    assert wait_until(lambda: len(cancels.last_tick) == 1)
    (rid,) = cancels.last_tick  # the server's one request, cancelled
    assert wait_until(lambda: gone(scheduler, cancels.tickets[rid]))
    return rid


def test_cancel_mid_stream_stops_that_streams_model_work_at_the_next_tick(make_server) -> None:
    server = make_server()
    scheduler = server.running.scheduler
    cancels = CancelWatch(scheduler)
    stub = stub_for(server.address)
    long_text = " ".join(f"Sentence number {i} is here to make the text long." for i in range(12))
    call = stub.Synthesize(request(long_text))
    got_first, cancelled = threading.Event(), threading.Event()
    held: dict[str, int] = {}

    def cancel_while_the_model_works() -> None:
        # The second vocode call decodes the rest of chunk 0, after its first piece was
        # handed over: the model is busy with this stream when the client leaves.
        assert got_first.wait(60)
        call.cancel()
        cancelled.set()

    def hold_until_the_server_sees_it() -> None:
        # gRPC may report a cancel only at the handler's next write, which needs the piece
        # just decoded; so the model is held at its next call instead, with the stream's
        # next chunk in it, until the server has seen the cancel (10 s at most: a server
        # that never sees it fails below).
        if cancelled.is_set() and not held:
            held["running"] = len(scheduler.stages.running)
            wait_until(lambda: cancels.last_tick, timeout=10)

    engine = EngineCalls(scheduler.engine)
    engine.hooks[("vocode", 1)] = cancel_while_the_model_works
    for stage in ("admit", "step", "vocode"):
        engine.before[stage] = hold_until_the_server_sees_it
    try:
        first = next(call)
        assert first.HasField("chunk") and first.chunk.index == 0
        got_first.set()
        with pytest.raises(grpc.RpcError) as exc:
            list(call)
        assert exc.value.code() == grpc.StatusCode.CANCELLED
        rid = dropped_request(server, cancels, "CANCELLED")
    finally:
        engine.restore()
    # Once the server saw the cancel, no tick but the one in flight did work for the stream,
    # though it had work in the model then.
    assert held["running"] >= 1
    assert no_work_from(scheduler, cancels.first_tick_after(rid), rid)
    # Of its dozen chunks only the lookahead (0, 1) and at most the one submitted as chunk 0's
    # last piece went out before gRPC reported the cancel ever reached the model.
    admitted = {k for d in scheduler.history for r, k in d.admitted if r == rid}
    assert admitted <= {0, 1, 2}
    assert scheduler.queued() == 0
    assert server.running.service.active == 0
    assert sample(server.running.metrics.render(), "supertonic_active_streams") == 0


BAD_REQUESTS = [
    (dict(text=""), "text"),
    (dict(text="   \n\t"), "text"),
    (dict(text="x" * 5001), "text"),
    (dict(text="🎉🎉🎉"), "text"),
    (dict(text="Hello.", voice="Z9"), "voice"),
    (dict(text="Hello.", language="de"), "language"),
    (dict(text="Hello.", speed=0.4), "speed"),
    (dict(text="Hello.", speed=2.5), "speed"),
    (dict(text="Hello.", speed=float("nan")), "speed"),
    (dict(text="Hello.", steps=51), "steps"),
    (dict(text="Hello.", steps=-1), "steps"),
    (
        dict(text="Hello.", audio_config=tts_pb2.AudioConfig(encoding=tts_pb2.WAV)),
        "audio_config.encoding",
    ),
    (dict(text="Hello.", audio_config=tts_pb2.AudioConfig(encoding=99)), "audio_config.encoding"),
    (
        dict(text="Hello.", audio_config=tts_pb2.AudioConfig(sample_rate_hz=1000)),
        "audio_config.sample_rate_hz",
    ),
    (
        dict(text="Hello.", chunking=tts_pb2.ChunkingConfig(max_chunk_chars=5)),
        "chunking.max_chunk_chars",
    ),
]


@pytest.mark.parametrize(("fields", "field_name"), BAD_REQUESTS)
def test_bad_input_gets_invalid_argument_naming_the_field(live_server, fields, field_name) -> None:
    stub = stub_for(live_server.address)
    with pytest.raises(grpc.RpcError) as exc:
        list(stub.Synthesize(tts_pb2.SynthesizeRequest(**fields), timeout=30))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert exc.value.details().startswith(field_name + ":")
    wav_is_fine_for_unary = fields.get("audio_config") == tts_pb2.AudioConfig(encoding=tts_pb2.WAV)
    if not wav_is_fine_for_unary:
        with pytest.raises(grpc.RpcError) as exc:
            stub.SynthesizeOnce(tts_pb2.SynthesizeRequest(**fields), timeout=30)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert exc.value.details().startswith(field_name + ":")


def test_server_still_serves_after_bad_requests(live_server) -> None:
    stub = stub_for(live_server.address)
    with pytest.raises(grpc.RpcError):
        list(stub.Synthesize(tts_pb2.SynthesizeRequest(text=""), timeout=30))
    chunks, _, summary = collect(stub, request("Still here."))
    assert chunks and summary.audio_seconds > 0


def test_unary_reply_is_a_wav_with_the_whole_clip(live_server) -> None:
    stub = stub_for(live_server.address)
    reply = stub.SynthesizeOnce(
        request(audio_config=tts_pb2.AudioConfig(encoding=tts_pb2.WAV, sample_rate_hz=16000)),
        timeout=120,
    )
    samples, rate = audio.read_wav(reply.audio)
    assert rate == 16000 and reply.sample_rate_hz == 16000
    assert len(samples) / rate == pytest.approx(reply.summary.audio_seconds, abs=0.01)
    assert len(reply.chunks) == reply.summary.chunks >= 3


def test_model_failure_is_internal_for_that_batch_and_the_server_goes_on(make_server) -> None:
    server = make_server()
    engine = server.running.scheduler.engine
    real = engine.step
    calls = {"n": 0}

    def flaky(flights):
        calls["n"] += 1
        if calls["n"] == 1:
            raise EngineError("injected failure")
        return real(flights)

    engine.step = flaky
    stub = stub_for(server.address)
    with pytest.raises(grpc.RpcError) as exc:
        collect(stub, request("This will fail."))
    assert exc.value.code() == grpc.StatusCode.INTERNAL
    assert "injected failure" in exc.value.details()
    chunks, _, summary = collect(stub, request("This will work."))
    assert chunks and summary.chunks == len({c.index for c in chunks})


def test_full_queue_is_resource_exhausted_with_a_retry_hint(make_server) -> None:
    server = make_server(max_queue=1)
    gate = threading.Event()
    blocker = server.running.scheduler.call(lambda _engine: gate.wait(60))
    stub = stub_for(server.address)
    call = stub.Synthesize(request("Waiting in line."))
    try:
        # The first request's chunk is queued behind the blocked thread: the queue is full.
        assert wait_until(lambda: server.running.scheduler.queued() == 1)
        with pytest.raises(grpc.RpcError) as exc:
            list(stub.Synthesize(request("No room for me."), timeout=30))
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailers = dict(exc.value.trailing_metadata() or ())
        assert int(trailers["retry-after-ms"]) > 0
    finally:
        gate.set()
    blocker.result(30)
    assert any(m.HasField("summary") for m in call)


def test_health_is_serving_and_metrics_expose_every_metric(live_server) -> None:
    channel = grpc.insecure_channel(live_server.address)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "supertonic.v1.TextToSpeech"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    def scrape() -> str:
        return urllib.request.urlopen(live_server.metrics_url, timeout=10).read().decode()

    def ttfa_count(body: str) -> float:
        try:
            return sample(body, "supertonic_time_to_first_audio_seconds_count", rpc="Synthesize")
        except KeyError:  # no Synthesize yet on this server
            return 0.0

    earlier = scrape()
    _, _, summary = collect(stub_for(live_server.address), request("Metrics, please."))
    body = scrape()
    for name in (
        "supertonic_requests_total",
        "supertonic_time_to_first_audio_seconds_bucket",
        "supertonic_queue_wait_seconds_bucket",
        "supertonic_compute_seconds_bucket",
        "supertonic_queue_depth",
        "supertonic_batch_size_bucket",
        "supertonic_audio_seconds_total",
        "supertonic_active_streams",
        "supertonic_underruns_total",
        "supertonic_model_info",
        "supertonic_model_warm 1.0",
    ):
        assert name in body, name
    assert 'state="demo"' in body
    assert 'supertonic_requests_total{code="OK",rpc="Synthesize"}' in body
    # This request's audio and first audio were counted (the server is shared: differences;
    # at least, as another test's leftover work may still be finishing).
    audio_s = sample(body, "supertonic_audio_seconds_total")
    assert (
        audio_s - sample(earlier, "supertonic_audio_seconds_total") >= summary.audio_seconds - 1e-3
    )
    assert ttfa_count(body) - ttfa_count(earlier) >= 1


def test_list_voices_reports_demo_state_and_ten_voices(live_server) -> None:
    reply = stub_for(live_server.address).ListVoices(tts_pb2.ListVoicesRequest(), timeout=10)
    assert reply.model_state == tts_pb2.DEMO
    assert sorted(v.name for v in reply.voices) == sorted(
        [f"M{i}" for i in range(1, 6)] + [f"F{i}" for i in range(1, 6)]
    )
    assert all(v.native_sample_rate_hz == 44100 and v.languages for v in reply.voices)


def test_deadline_exceeded_drops_the_work_and_is_counted(make_server) -> None:
    server = make_server()
    scheduler = server.running.scheduler
    cancels = CancelWatch(scheduler)
    stub = stub_for(server.address)
    long_text = " ".join(f"Sentence number {i} makes this text long enough." for i in range(12))
    # The model's first flow step is held until the client's deadline has passed, so no
    # audio can arrive in time on any machine, however fast.
    release = threading.Event()

    def hold() -> None:
        release.wait(60)

    engine = EngineCalls(scheduler.engine)
    engine.hooks[("step", 0)] = hold
    try:
        with pytest.raises(grpc.RpcError) as exc:
            collect(stub, request(long_text), timeout=1.0)
        assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        release.set()
    try:
        rid = dropped_request(server, cancels, "DEADLINE_EXCEEDED")
    finally:
        engine.restore()
    assert no_work_from(scheduler, cancels.first_tick_after(rid), rid)
    assert scheduler.queued() == 0 and server.running.service.active == 0


def test_http_probes_report_readiness_and_demo_state(live_server) -> None:
    base = live_server.metrics_url.removesuffix("/metrics")
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(base + path, timeout=10) as reply:
            assert reply.status == 200
            body = json.loads(reply.read())
        assert body["status"] == "SERVING"
        assert body["model_state"] == "demo"
        assert body["draining"] is False
