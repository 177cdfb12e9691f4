"""Honest codes and counts (`supertonic_grpc.rpc`), against a live server: every outcome is
counted once with the code the client got, slots are freed however a call ends, and one
client cannot hold what others need."""

from __future__ import annotations

import logging
import threading
import time
import urllib.request

import grpc
import pytest
from promtext import sample
from waiting import wait_until

from supertonic_client._proto.supertonic.v1 import tts_pb2, tts_pb2_grpc
from supertonic_grpc.scheduler import SchedulerStopped

pytestmark = pytest.mark.slow

LONG_TEXT = " ".join(f"Sentence number {i} is here to make the text long." for i in range(40))
SYNTHESIZE = "/supertonic.v1.TextToSpeech/Synthesize"
SYNTHESIZE_ONCE = "/supertonic.v1.TextToSpeech/SynthesizeOnce"
# A client that never reads: no BDP probing, so its receive window stays at 64 KiB.
STALLED_OPTIONS = [("grpc.http2.bdp_probe", 0)]


def stub_for(address: str, options=None) -> tts_pb2_grpc.TextToSpeechStub:
    return tts_pb2_grpc.TextToSpeechStub(grpc.insecure_channel(address, options=options))


def scrape(server) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as r:
        return r.read().decode()


def count(server, rpc: str, code: str) -> float:
    try:
        return sample(scrape(server), "supertonic_requests_total", rpc=rpc, code=code)
    except KeyError:
        return 0.0


def code_of(fn) -> grpc.StatusCode:
    """The status code `fn()` ends with (OK when it returns)."""
    try:
        fn()
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def pcm_f32(text: str, **kw) -> tts_pb2.SynthesizeRequest:
    kw.setdefault("steps", 1)
    return tts_pb2.SynthesizeRequest(
        text=text, audio_config=tts_pb2.AudioConfig(encoding=tts_pb2.PCM_F32), **kw
    )


def start_stream(server, rpc: str, text: str, audio_config, chunking, *, timeout: float):
    """A `Synthesize` or `StreamingSynthesize` call from a client that reads only on demand
    (no BDP probing: the server's writes soon wait for it)."""
    stub = stub_for(server.address, STALLED_OPTIONS)
    if rpc == "Synthesize":
        req = tts_pb2.SynthesizeRequest(
            text=text, steps=1, audio_config=audio_config, chunking=chunking
        )
        return stub.Synthesize(req, timeout=timeout)
    config = tts_pb2.StreamingSynthesizeConfig(
        steps=1, audio_config=audio_config, chunking=chunking
    )
    requests = [
        tts_pb2.StreamingSynthesizeRequest(config=config),
        tts_pb2.StreamingSynthesizeRequest(text=text),
    ]
    return stub.StreamingSynthesize(iter(requests), timeout=timeout)


def test_unexpected_error_in_a_stream_is_internal_and_counted_as_such(make_server) -> None:
    server = make_server()
    service = server.running.service

    async def broken(stream, context):
        raise ZeroDivisionError("a bug")
        yield  # pragma: no cover

    service._stream = broken
    with pytest.raises(grpc.RpcError) as exc:
        list(stub_for(server.address).Synthesize(pcm_f32("Hello there."), timeout=30))
    assert exc.value.code() == grpc.StatusCode.INTERNAL
    assert count(server, "Synthesize", "INTERNAL") == 1
    assert count(server, "Synthesize", "OK") == 0 and count(server, "Synthesize", "UNKNOWN") == 0
    assert service.active == 0


def test_a_stopped_scheduler_is_unavailable_for_both_rpcs(make_server) -> None:
    server = make_server()
    scheduler = server.running.scheduler

    def stopped(job, force=False):
        raise SchedulerStopped("stopped")

    scheduler.submit = stopped
    stub = stub_for(server.address)
    with pytest.raises(grpc.RpcError) as exc:
        list(stub.Synthesize(pcm_f32("Hello there."), timeout=30))
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as exc:
        stub.SynthesizeOnce(pcm_f32("Hello there."), timeout=30)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    assert count(server, "Synthesize", "UNAVAILABLE") == 1
    assert count(server, "SynthesizeOnce", "UNAVAILABLE") == 1


@pytest.mark.parametrize(
    "payload",
    [
        b"\x0a\x02\xff\xfe",  # text = invalid UTF-8
        b"\x0a\x20abc",  # text: length 32, 3 bytes follow (truncated)
        b"\x28\x80",  # steps: a varint that never ends
    ],
    ids=["invalid-utf8", "truncated", "bad-varint"],
)
def test_malformed_bytes_are_invalid_argument_with_one_log_line_and_counted(
    live_server, caplog, payload
) -> None:
    channel = grpc.insecure_channel(live_server.address)
    before = count(live_server, "SynthesizeOnce", "INVALID_ARGUMENT")
    with caplog.at_level(logging.INFO):
        with pytest.raises(grpc.RpcError) as exc:
            list(channel.unary_stream(SYNTHESIZE)(payload, timeout=30))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as exc:
            channel.unary_unary(SYNTHESIZE_ONCE)(payload, timeout=30)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not parse" in exc.value.details()
    assert count(live_server, "SynthesizeOnce", "INVALID_ARGUMENT") == before + 1
    mine = [r for r in caplog.records if "malformed request" in r.getMessage()]
    assert len(mine) == 2
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_cancel_while_paused_on_a_write_frees_the_slot_and_counts_cancelled(make_server) -> None:
    server = make_server(write_timeout_s=600)
    call = stub_for(server.address, STALLED_OPTIONS).Synthesize(pcm_f32(LONG_TEXT), timeout=120)
    # Nothing is read, so the server's writes back up and its handler waits on one.
    assert wait_until(lambda: server.running.service.active == 1)
    assert wait_until(lambda: server.running.scheduler.queued() == 0)  # lookahead computed
    call.cancel()
    assert wait_until(lambda: server.running.service.active == 0, timeout=10)
    assert wait_until(lambda: count(server, "Synthesize", "CANCELLED") == 1, timeout=10)
    assert count(server, "Synthesize", "OK") == 0
    assert wait_until(lambda: server.running.scheduler.queued() == 0, timeout=10)


def test_stalled_readers_lose_their_slots_after_the_write_timeout(make_server, caplog) -> None:
    timeout = 1.0
    server = make_server(write_timeout_s=timeout, max_streams=8)
    # A tiny first chunk, so each stream is soon blocked on its first (window-filling) write.
    quick = pcm_f32(LONG_TEXT, chunking=tts_pb2.ChunkingConfig(first_chunk_chars=10))
    quick.audio_config.sample_rate_hz = 48000
    stalled = [
        stub_for(server.address, STALLED_OPTIONS).Synthesize(quick, timeout=120) for _ in range(8)
    ]
    assert wait_until(lambda: server.running.service.active == 8)
    # A newcomer is served within the stall timeout plus 5 s, though every slot was taken.
    started = time.monotonic()
    stub = stub_for(server.address)
    while True:
        try:
            reply = list(stub.Synthesize(pcm_f32("I want my turn."), timeout=30))
            break
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() - started < timeout + 5
            time.sleep(0.2)
    assert reply[-1].HasField("summary")
    assert time.monotonic() - started < timeout + 5
    # Their status waits behind the audio they do not read; they never read again, but
    # cancel (the status is then never sent, quietly), and the count tells what it was.
    assert wait_until(lambda: sample(scrape(server), "supertonic_stalled_streams_total") == 8)
    for call in stalled:
        call.cancel()
    assert count(server, "Synthesize", "DEADLINE_EXCEEDED") == 8
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize(
    "rpc, read_before",
    [("Synthesize", 0), ("Synthesize", 1), ("StreamingSynthesize", 1)],
    ids=["first-write-stalls", "later-write-stalls", "streaming"],
)
def test_a_stalled_reader_that_reads_again_gets_the_stall_status_at_once(
    make_server, rpc, read_before
) -> None:
    server = make_server(write_timeout_s=1.0)
    # Chunks of ~2.5 s in 32-bit floats at 48 kHz, each far over the client's 64 KiB window.
    text = " ".join(f"Sentence {i} is forty characters long, or so." for i in range(5))
    audio_config = tts_pb2.AudioConfig(encoding=tts_pb2.PCM_F32, sample_rate_hz=48000)
    chunking = tts_pb2.ChunkingConfig(first_chunk_chars=45, max_chunk_chars=45)
    deadline_s = 60.0
    call = start_stream(server, rpc, text, audio_config, chunking, timeout=deadline_s)
    received = [next(call) for _ in range(read_before)]
    # The client stops reading until the server has given up on it and freed its slot.
    assert wait_until(lambda: sample(scrape(server), "supertonic_stalled_streams_total") == 1)
    assert wait_until(lambda: server.running.service.active == 0)
    assert sample(scrape(server), "supertonic_active_streams") == 0
    resumed = time.monotonic()
    with pytest.raises(grpc.RpcError) as exc:
        for reply in call:
            received.append(reply)
    # The status comes right after the audio the server had queued, not at the client's own
    # deadline, and it is the code the server counted.
    assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "write-stall timeout" in exc.value.details()
    assert time.monotonic() - resumed < deadline_s / 2
    assert received and all(r.HasField("chunk") for r in received)
    assert count(server, rpc, "DEADLINE_EXCEEDED") == 1
    assert count(server, rpc, "OK") == 0 and count(server, rpc, "CANCELLED") == 0


def test_unary_calls_are_not_streams_and_do_not_queue_all_their_chunks(make_server) -> None:
    server = make_server(lookahead_chunks=2)
    scheduler = server.running.scheduler
    gate = threading.Event()
    blocker = scheduler.call(lambda _engine: gate.wait(60))
    # The queue depth right after every submit: with the model blocked, a request that
    # ignored the lookahead would queue all thirty of its chunks at once.
    depths: list[int] = []
    submit = scheduler.submit

    def recording_submit(job, force=False):
        submit(job, force=force)
        depths.append(scheduler.queued())

    scheduler.submit = recording_submit
    text = "A short sentence. " * 30
    reply: dict[str, object] = {}

    def once() -> None:
        req = tts_pb2.SynthesizeRequest(
            text=text, steps=1, chunking=tts_pb2.ChunkingConfig(max_chunk_chars=20)
        )
        reply["r"] = stub_for(server.address).SynthesizeOnce(req, timeout=120)

    worker = threading.Thread(target=once)
    worker.start()
    try:
        assert wait_until(lambda: len(depths) >= 2)
        body = scrape(server)
        assert sample(body, "supertonic_active_streams") == 0
        assert sample(body, "supertonic_active_unary_requests", rpc="SynthesizeOnce") == 1
    finally:
        gate.set()
    blocker.result(30)
    worker.join(120)
    assert reply["r"].summary.chunks >= 20  # type: ignore[attr-defined]
    assert len(depths) == reply["r"].summary.chunks  # type: ignore[attr-defined]
    # Thirty chunks, yet never more than the lookahead queued (plus, for a moment, a chunk
    # whose result is out but which leaves the scheduler's books at its next tick).
    assert depths[:2] == [1, 2]
    assert max(depths) <= 2 + 1, depths
    assert sample(scrape(server), "supertonic_active_unary_requests", rpc="SynthesizeOnce") == 0


def test_a_unary_reply_that_cannot_fit_is_refused_before_any_compute(live_server) -> None:
    before = sample(scrape(live_server), "supertonic_chunks_total", priority="high")
    req = tts_pb2.SynthesizeRequest(
        text="Words upon words. " * 55,
        audio_config=tts_pb2.AudioConfig(encoding=tts_pb2.PCM_F32, sample_rate_hz=48000),
    )
    with pytest.raises(grpc.RpcError) as exc:
        stub_for(live_server.address).SynthesizeOnce(req, timeout=30)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "use Synthesize" in exc.value.details()
    assert sample(scrape(live_server), "supertonic_chunks_total", priority="high") == before


def test_per_peer_limit_refuses_a_second_stream_from_the_same_address(make_server) -> None:
    server = make_server(max_streams_per_peer=1, write_timeout_s=600)
    first = stub_for(server.address, STALLED_OPTIONS).Synthesize(pcm_f32(LONG_TEXT), timeout=120)
    assert wait_until(lambda: server.running.service.active == 1)
    with pytest.raises(grpc.RpcError) as exc:
        list(stub_for(server.address).Synthesize(pcm_f32("Me too."), timeout=30))
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "from this client" in exc.value.details()
    first.cancel()
    assert wait_until(lambda: server.running.service.active == 0)
    assert list(stub_for(server.address).Synthesize(pcm_f32("Now me."), timeout=30))


def test_list_voices_reports_the_configured_default_voice(make_server) -> None:
    server = make_server(default_voice="F2")
    reply = stub_for(server.address).ListVoices(tts_pb2.ListVoicesRequest(), timeout=30)
    assert reply.default_voice == "F2"


def test_a_handler_that_aborts_itself_is_counted_with_its_code(make_server) -> None:
    server = make_server()

    async def aborting(stream, context):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not today")
        yield  # pragma: no cover

    server.running.service._stream = aborting
    with pytest.raises(grpc.RpcError) as exc:
        list(stub_for(server.address).Synthesize(pcm_f32("Hello."), timeout=30))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert wait_until(lambda: count(server, "Synthesize", "FAILED_PRECONDITION") == 1)
    assert count(server, "Synthesize", "INTERNAL") == 0


@pytest.mark.parametrize("rpc", ["Synthesize", "StreamingSynthesize"])
def test_a_slow_reader_is_back_pressure_not_an_underrun(make_server, rpc) -> None:
    server = make_server(lookahead_chunks=2)
    # Chunks of ~2.5 s of audio in 32-bit floats at 48 kHz: each far over the 64 KiB window
    # of a client without BDP probing, so the server's writes wait for the reader.
    text = " ".join(f"Sentence {i} is forty characters long, or so." for i in range(5))
    audio_config = tts_pb2.AudioConfig(encoding=tts_pb2.PCM_F32, sample_rate_hz=48000)
    chunking = tts_pb2.ChunkingConfig(first_chunk_chars=45, max_chunk_chars=45)
    call = start_stream(server, rpc, text, audio_config, chunking, timeout=120)
    first = next(call)
    assert first.HasField("chunk")
    # The lookahead is computed and the handler waits on a write the client does not take.
    assert wait_until(lambda: server.running.scheduler.queued() == 0)
    # The reader pauses for longer than the audio it holds (the subject of the test, not
    # an ordering sleep): counted from its reads, the next chunks would look late.
    time.sleep(8)
    rest = list(call)
    assert rest[-1].HasField("summary") and rest[-1].summary.chunks == 5
    body = scrape(server)
    assert sample(body, "supertonic_underruns_total") == 0


def test_a_unary_reply_that_outgrows_its_estimate_is_stopped_and_counted(
    make_server, monkeypatch
) -> None:
    from supertonic_grpc import service as service_module

    class Underestimated(service_module.ChunkStream):
        """A text whose audio the plan underestimates (as one in a slow language may be)."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.estimates = [0.0 for _ in self.estimates]

    monkeypatch.setattr(service_module, "ChunkStream", Underestimated)
    server = make_server(max_reply_bytes=256 * 1024, lookahead_chunks=1)
    # Ten chunks of ~2.5 s in 32-bit floats at 48 kHz: the first one alone passes 256 KiB.
    text = " ".join(f"Sentence {i} is forty characters long, or so." for i in range(10))
    req = pcm_f32(text, chunking=tts_pb2.ChunkingConfig(first_chunk_chars=45, max_chunk_chars=45))
    req.audio_config.sample_rate_hz = 48000
    with pytest.raises(grpc.RpcError) as exc:
        stub_for(server.address).SynthesizeOnce(req, timeout=60)
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "use Synthesize" in exc.value.details()
    assert count(server, "SynthesizeOnce", "RESOURCE_EXHAUSTED") == 1
    # It stopped at once: the rest of its chunks never reached the model.
    assert wait_until(lambda: server.running.scheduler.queued() == 0)
    computed = sum(
        sample(scrape(server), "supertonic_chunks_total", priority=p) for p in ("high", "normal")
    )
    assert computed <= 2
