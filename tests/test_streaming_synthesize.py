"""StreamingSynthesize against a real server (full-size model, demo weights, CPU): text in
fragment by fragment, audio out per sentence, status codes, stalls, half-close, barge-in."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from engine_hooks import CancelWatch, EngineCalls, gone, no_work_from
from promtext import sample
from waiting import wait_until

from supertonic_client._proto.supertonic.v1 import tts_pb2, tts_pb2_grpc

pytestmark = pytest.mark.slow

REPLY = (
    "Sure, I can help with that. The weather today is sunny, with a light breeze. "
    "Tomorrow it may rain."
)
_CLOSE = object()


def stub_for(address: str) -> tts_pb2_grpc.TextToSpeechStub:
    return tts_pb2_grpc.TextToSpeechStub(grpc.insecure_channel(address))


def config(**kw) -> tts_pb2.StreamingSynthesizeRequest:
    kw.setdefault("steps", 2)
    return tts_pb2.StreamingSynthesizeRequest(config=tts_pb2.StreamingSynthesizeConfig(**kw))


def text(t: str) -> tts_pb2.StreamingSynthesizeRequest:
    return tts_pb2.StreamingSynthesizeRequest(text=t)


def flush() -> tts_pb2.StreamingSynthesizeRequest:
    return tts_pb2.StreamingSynthesizeRequest(flush=tts_pb2.Flush())


def tokens(t: str, size: int = 4) -> list[tts_pb2.StreamingSynthesizeRequest]:
    return [text(t[i : i + size]) for i in range(0, len(t), size)]


def released(server, trigger: str) -> float:
    """Segments the server has spoken for `trigger` so far (the shared server's total)."""
    body = server.running.metrics.render().decode()
    try:
        return sample(body, "supertonic_sentence_to_audio_seconds_count", trigger=trigger)
    except KeyError:
        return 0.0


class Session:
    """One call whose request stream the test feeds by hand; `_CLOSE` half-closes it."""

    def __init__(self, stub: tts_pb2_grpc.TextToSpeechStub, timeout: float = 120) -> None:
        self.q: queue.Queue[object] = queue.Queue()
        self.call = stub.StreamingSynthesize(self._requests(), timeout=timeout)

    def _requests(self) -> Iterator[tts_pb2.StreamingSynthesizeRequest]:
        while (item := self.q.get()) is not _CLOSE:
            yield item  # type: ignore[misc]

    def send(self, *items: object) -> None:
        for item in items:
            self.q.put(item)

    def close(self) -> None:
        self.q.put(_CLOSE)

    def next_chunk(self) -> tts_pb2.AudioChunk:
        msg = next(self.call)
        assert msg.HasField("chunk"), msg
        return msg.chunk

    def rest(self) -> tuple[list[tts_pb2.AudioChunk], tts_pb2.SynthesizeSummary | None]:
        chunks, summary = [], None
        for msg in self.call:
            if msg.HasField("chunk"):
                chunks.append(msg.chunk)
            else:
                summary = msg.summary
        return chunks, summary


def test_token_stream_gives_ordered_chunks_with_offsets_into_the_whole_text(live_server) -> None:
    before = released(live_server, "sentence")
    s = Session(stub_for(live_server.address))
    s.send(config(voice="F1", seed=7, enable_word_timings=True), *tokens(REPLY), _CLOSE)
    chunks, summary = s.rest()
    assert summary is not None and summary.chunks == len(chunks) >= 3
    offset = 0.0
    for i, c in enumerate(chunks):
        assert c.index == i
        assert REPLY[c.text_start : c.text_end] == c.text
        assert abs(c.audio_offset_seconds - offset) < 1e-6
        offset += c.duration_seconds
        # Word timings: every word of the chunk, monotonic, inside the chunk's audio.
        assert [w.word for w in c.words] == [w.strip(",.") for w in c.text.split()]
        prev = c.audio_offset_seconds
        for w in c.words:
            assert REPLY[w.text_start : w.text_end] == w.word
            assert prev <= w.start_seconds <= w.end_seconds
            assert w.end_seconds <= c.audio_offset_seconds + c.duration_seconds + 1e-9
            prev = w.end_seconds
    assert abs(summary.audio_seconds - offset) < 1e-6
    assert "".join(c.text for c in chunks).replace(" ", "") == REPLY.replace(" ", "")
    assert released(live_server, "sentence") - before == 2  # the third ends at the close


def test_a_complete_sentence_is_spoken_before_more_text_or_a_close(live_server) -> None:
    s = Session(stub_for(live_server.address))
    s.send(config(buffering=tts_pb2.TextBufferingConfig(max_buffer_delay_ms=10_000)))
    s.send(*tokens("The first sentence is complete. The sec"))
    first = s.next_chunk()  # arrives although the call is still open and mid-sentence
    assert first.text == "The first sentence is complete."
    s.send(text("ond one ends here."), _CLOSE)
    chunks, summary = s.rest()
    assert [c.text for c in chunks] == ["The second one ends here."]
    assert chunks[0].text_start == len("The first sentence is complete. ")
    assert summary is not None and summary.chunks == 2


def test_early_first_clause_speaks_before_the_sentence_ends(live_server) -> None:
    s = Session(stub_for(live_server.address))
    buffering = tts_pb2.TextBufferingConfig(max_buffer_delay_ms=10_000, early_first_clause=True)
    s.send(config(buffering=buffering), *tokens("Well, to be quite honest, I think"))
    assert s.next_chunk().text == "Well, to be quite honest,"
    s.close()
    chunks, _ = s.rest()
    assert [c.text for c in chunks] == ["I think"]


def test_stalled_text_is_spoken_after_the_buffer_delay(live_server) -> None:
    s = Session(stub_for(live_server.address))
    s.send(config(buffering=tts_pb2.TextBufferingConfig(max_buffer_delay_ms=200)))
    before = released(live_server, "stall")
    s.send(*tokens("Let me check that for you"))
    assert s.next_chunk().text == "Let me check that for you"  # no sentence end, no close
    assert released(live_server, "stall") - before == 1
    s.close()
    chunks, summary = s.rest()
    assert chunks == [] and summary is not None and summary.chunks == 1


def test_flush_speaks_mid_sentence(live_server) -> None:
    s = Session(stub_for(live_server.address))
    s.send(config(buffering=tts_pb2.TextBufferingConfig(max_buffer_delay_ms=10_000)))
    s.send(text("Half of a sent"), flush())
    assert s.next_chunk().text == "Half of a sent"
    s.send(text("ence."), _CLOSE)
    chunks, _ = s.rest()
    assert [(c.text, c.text_start) for c in chunks] == [("ence.", 14)]


def test_half_close_speaks_what_is_buffered_and_finishes(live_server) -> None:
    s = Session(stub_for(live_server.address))
    s.send(config(buffering=tts_pb2.TextBufferingConfig(max_buffer_delay_ms=10_000)))
    s.send(*tokens("No sentence end here, just a close"), _CLOSE)
    chunks, summary = s.rest()
    assert " ".join(c.text for c in chunks) == "No sentence end here, just a close"
    assert summary is not None and summary.audio_seconds > 0


def test_half_close_right_after_the_config_ends_with_an_empty_summary(live_server) -> None:
    s = Session(stub_for(live_server.address))
    s.send(config(), _CLOSE)
    chunks, summary = s.rest()
    assert chunks == [] and summary is not None and summary.chunks == 0


BAD_STREAMS = [
    ([], "config"),
    ([text("Hello there.")], "config"),
    ([config(), config()], "config"),
    ([config(voice="Z9")], "config.voice"),
    ([config(language="de")], "config.language"),
    ([config(speed=3.0)], "config.speed"),
    ([config(steps=99)], "config.steps"),
    ([config(audio_config=tts_pb2.AudioConfig(encoding=tts_pb2.WAV))], "config.audio_config"),
    (
        [config(buffering=tts_pb2.TextBufferingConfig(max_buffer_delay_ms=-5))],
        "config.buffering.max_buffer_delay_ms",
    ),
    ([config(), tts_pb2.StreamingSynthesizeRequest()], "request"),
    ([config(), text("x" * 3000), text("y" * 2001)], "text"),
]


@pytest.mark.parametrize(("messages", "field_name"), BAD_STREAMS)
def test_bad_streams_get_invalid_argument_naming_the_field(
    live_server, messages, field_name
) -> None:
    s = Session(stub_for(live_server.address))
    s.send(*messages, _CLOSE)
    with pytest.raises(grpc.RpcError) as info:
        s.rest()
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(field_name), info.value.details()


def test_an_idle_stream_ends_with_deadline_exceeded(make_server) -> None:
    server = make_server(stream_idle_s=0.3)
    for messages in ([], [config()], [config(), text("Hello there.")]):
        s = Session(stub_for(server.address))
        s.send(*messages)  # and then nothing, without closing
        with pytest.raises(grpc.RpcError) as info:
            s.rest()
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "idle" in info.value.details()
        s.close()
    assert wait_until(lambda: server.running.service.active == 0)


def _request_id(server, before: int) -> int:
    ids = {r for d in list(server.running.scheduler.history)[before:] for r in d.request_ids}
    assert len(ids) == 1, ids
    return ids.pop()


def _assert_barge_in(server, cancels: CancelWatch, rid: int) -> None:
    """The call was cancelled, its slot freed, and no tick but the one in flight when the
    server saw the cancel did model work for it."""
    scheduler = server.running.scheduler
    assert wait_until(lambda: server.running.service.active == 0)
    assert rid in cancels.last_tick, "the call's ticket was never cancelled"
    assert wait_until(lambda: gone(scheduler, cancels.tickets[rid]))
    assert no_work_from(scheduler, cancels.first_tick_after(rid), rid)
    text = server.running.metrics.render().decode()
    assert sample(text, "supertonic_active_streams") == 0
    assert sample(text, "supertonic_requests_total", rpc="StreamingSynthesize", code="CANCELLED")
    assert sample(text, "supertonic_barge_in_total") >= 1


def test_barge_in_mid_sentence_is_seen_during_the_model_step_and_drops_queued_work(
    make_server,
) -> None:
    server = make_server(lookahead_chunks=3)
    scheduler = server.running.scheduler
    cancels = CancelWatch(scheduler)
    held, release = threading.Event(), threading.Event()
    state: dict[str, Any] = {}

    def hold_a_step_after_the_first_audio() -> None:
        # Called before every step; holds the first one after chunk 0's first piece is out.
        if held.is_set() or not any(v[1:] == (0, 0) for d in scheduler.history for v in d.vocoded):
            return
        state["rid"] = rid = scheduler.stages.running[0].ticket.request_id
        state["pending"] = sum(1 for r in scheduler.stages.running if r.ticket.request_id == rid)
        held.set()
        release.wait(60)

    engine = EngineCalls(scheduler.engine)
    engine.before["step"] = hold_a_step_after_the_first_audio
    try:
        s = Session(stub_for(server.address))
        cfg = config(chunking=tts_pb2.ChunkingConfig(max_chunk_chars=40, first_chunk_chars=20))
        long = " ".join(f"Sentence {i} is here, with a clause, to make it long." for i in range(8))
        s.send(cfg, *tokens(long, 40))  # no close: the agent is still talking
        assert s.next_chunk().index == 0
        assert held.wait(60)  # the model is now in a step with work of this call
        s.call.cancel()
        # The call's end is watched directly (its done callback, with the loop kept awake):
        # the cancel is seen while the step still runs, however long the step takes.
        assert wait_until(lambda: state["rid"] in cancels.last_tick)
    finally:
        release.set()
        engine.restore()
    assert state["pending"] >= 1  # it had work in the model to drop
    _assert_barge_in(server, cancels, state["rid"])


def test_barge_in_between_sentences(make_server) -> None:
    server = make_server()
    scheduler = server.running.scheduler
    cancels = CancelWatch(scheduler)
    before = len(scheduler.history)
    s = Session(stub_for(server.address))
    s.send(config(buffering=tts_pb2.TextBufferingConfig(max_buffer_delay_ms=10_000)))
    s.send(text("One short sentence. "))
    assert s.next_chunk().text == "One short sentence."
    rid = _request_id(server, before)
    assert wait_until(lambda: scheduler.queued() == 0)
    s.call.cancel()  # nothing queued: the agent was waiting for its LLM
    _assert_barge_in(server, cancels, rid)


def test_first_chunk_is_high_priority_and_later_sentences_have_deadlines(make_server) -> None:
    server = make_server()
    before = len(server.running.scheduler.history)
    s = Session(stub_for(server.address))
    s.send(config(), *tokens(REPLY), _CLOSE)
    chunks, _ = s.rest()
    mine = [d for d in list(server.running.scheduler.history)[before:] if d.admitted]
    priorities = [p.name for d in mine for p in d.admitted_priorities]
    assert priorities[0] == "HIGH"
    assert priorities.count("HIGH") == 1 and len(priorities) == len(chunks)


def test_streams_run_beside_synthesize_and_keep_their_own_audio(live_server) -> None:
    stub = stub_for(live_server.address)
    results: dict[str, object] = {}

    def unary() -> None:
        req = tts_pb2.SynthesizeRequest(text="A plain request, at the same time.", steps=2)
        results["unary"] = [m for m in stub.Synthesize(req, timeout=120) if m.HasField("chunk")]

    t = threading.Thread(target=unary)
    t.start()
    s = Session(stub)
    s.send(config(seed=1), *tokens("A streamed reply. It has two sentences."), _CLOSE)
    chunks, summary = s.rest()
    t.join(120)
    assert len(results["unary"]) >= 1  # type: ignore[arg-type]
    assert summary is not None and summary.seed == 1 and len(chunks) == 2


def test_synthesize_and_synthesize_once_attach_word_timings_when_asked(live_server) -> None:
    stub = stub_for(live_server.address)
    text = "Word timings, on Synthesize too. They are estimates."
    kw = dict(text=text, steps=2, chunking=tts_pb2.ChunkingConfig(max_chunk_chars=40))
    streamed = [
        m.chunk
        for m in stub.Synthesize(tts_pb2.SynthesizeRequest(**kw, enable_word_timings=True))
        if m.HasField("chunk")
    ]
    once = stub.SynthesizeOnce(tts_pb2.SynthesizeRequest(**kw, enable_word_timings=True))
    plain = stub.SynthesizeOnce(tts_pb2.SynthesizeRequest(**kw))
    for chunks in (streamed, list(once.chunks)):
        words = [w for c in chunks for w in c.words]
        assert [w.word for w in words] == [w.strip(",.") for w in text.split()]
        assert all(text[w.text_start : w.text_end] == w.word for w in words)
        # Words come on a chunk's first piece and span all of that chunk's pieces.
        for c in chunks:
            pieces = [p for p in chunks if p.index == c.index]
            end = max(p.audio_offset_seconds + p.duration_seconds for p in pieces) + 1e-9
            assert all(
                c.audio_offset_seconds <= w.start_seconds <= w.end_seconds <= end for w in c.words
            )
            assert c.piece == 0 or not c.words
    assert all(not c.words for c in plain.chunks)


def test_a_flood_of_empty_messages_is_refused(make_server) -> None:
    server = make_server(max_text_chars=20)  # at most 2 * 20 + 64 messages per call
    s = Session(stub_for(server.address))
    s.send(config(), *[flush() for _ in range(60)], *[text("") for _ in range(60)], _CLOSE)
    with pytest.raises(grpc.RpcError) as info:
        s.rest()
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("request: more than 104 messages")


def test_server_side_errors_are_not_counted_as_barge_in(make_server) -> None:
    server = make_server(stream_idle_s=0.3)
    for messages in ([config(), config()], [config(), text("Hello.")]):  # bad, then idle
        s = Session(stub_for(server.address))
        s.send(*messages)
        with pytest.raises(grpc.RpcError):
            s.rest()
        s.close()
    assert wait_until(lambda: server.running.service.active == 0)
    text_ = server.running.metrics.render().decode()
    assert sample(text_, "supertonic_barge_in_total") == 0
