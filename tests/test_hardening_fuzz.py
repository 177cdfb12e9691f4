"""Fuzzing a live server: typed requests (hypothesis) and raw bytes. Every outcome is OK or a
documented code: never UNKNOWN, and typed requests never INTERNAL; each call is counted
exactly once and nothing logs a traceback."""

from __future__ import annotations

import logging
import random
from collections import Counter

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from test_hardening_rpc import code_of, scrape, wait_until

from supertonic_client._proto.supertonic.v1 import tts_pb2, tts_pb2_grpc
from supertonic_grpc.text import LANGUAGES

pytestmark = pytest.mark.slow

TTS_RPCS = ("Synthesize", "SynthesizeOnce", "ListVoices")
# What a client may see from a bad, heavy or unlucky request (README "Errors").
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNAVAILABLE,
}
CALL_TIMEOUT_S = 5.0


@pytest.fixture(scope="module")
def fuzz_server(shared_bundle):
    from conftest import LiveServer, ServerThread, test_settings

    st_ = ServerThread(test_settings(max_text_chars=300, max_streams=16), shared_bundle)
    try:
        yield LiveServer(st_.running, st_.loop)
    finally:
        st_.close()


def total_counted(server) -> float:
    """Finished TextToSpeech calls, summed over every code."""
    return sum(
        s.value
        for family in text_string_to_metric_families(scrape(server))
        for s in family.samples
        if s.name == "supertonic_requests_total" and s.labels.get("rpc") in TTS_RPCS
    )


words = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=120
)
# Within every documented limit, edges included: these must succeed or be refused politely.
plausible = st.builds(
    tts_pb2.SynthesizeRequest,
    text=st.one_of(
        st.text(
            alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)),
            min_size=1,
            max_size=80,
        ),
        st.text(alphabet="abcdefghij klmnop,.?!'", min_size=1, max_size=200),
    ),
    voice=st.sampled_from(["", "M1", "M5", "F1", "F5"]),
    language=st.sampled_from(["", *LANGUAGES]),
    speed=st.one_of(st.just(0.0), st.floats(0.5, 2.0, width=32, allow_subnormal=False)),
    steps=st.one_of(st.just(0), st.integers(1, 2), st.just(50)),
    audio_config=st.builds(
        tts_pb2.AudioConfig,
        encoding=st.integers(0, 4),
        sample_rate_hz=st.one_of(st.just(0), st.integers(8000, 48000)),
    ),
    chunking=st.builds(
        tts_pb2.ChunkingConfig,
        max_chunk_chars=st.one_of(st.just(0), st.integers(20, 1000)),
        first_chunk_chars=st.one_of(st.just(0), st.integers(10, 1000)),
    ),
    seed=st.integers(0, 2**64 - 1),
    enable_word_timings=st.booleans(),
)
# Anything the types allow.
wild = st.builds(
    tts_pb2.SynthesizeRequest,
    text=st.one_of(words, st.sampled_from(["Hello there.", "¿Qué tal? Bien.", "안녕하세요."])),
    voice=st.one_of(st.sampled_from(["", "M1", "F3"]), st.text(max_size=8)),
    language=st.one_of(st.sampled_from(["", *LANGUAGES]), st.text(max_size=5)),
    speed=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False, width=32),
        st.just(0.0),
    ),
    steps=st.integers(-3, 60),
    audio_config=st.builds(
        tts_pb2.AudioConfig,
        encoding=st.integers(0, 8),
        sample_rate_hz=st.one_of(st.just(0), st.integers(-10, 200_000)),
    ),
    chunking=st.builds(
        tts_pb2.ChunkingConfig,
        max_chunk_chars=st.integers(-5, 1200),
        first_chunk_chars=st.integers(-5, 1200),
    ),
    enable_word_timings=st.booleans(),
)


def test_typed_fuzz_never_answers_unknown_or_internal(fuzz_server, caplog) -> None:
    stub = tts_pb2_grpc.TextToSpeechStub(grpc.insecure_channel(fuzz_server.address))
    seen: Counter[grpc.StatusCode] = Counter()
    before = total_counted(fuzz_server)

    @settings(
        max_examples=50,
        deadline=None,
        derandomize=True,  # the same examples on every run: CI is not a lottery
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(req=st.one_of(plausible, plausible, wild), unary=st.booleans())
    def one(req: tts_pb2.SynthesizeRequest, unary: bool) -> None:
        if unary:
            code = code_of(lambda: stub.SynthesizeOnce(req, timeout=CALL_TIMEOUT_S))
        else:
            code = code_of(lambda: list(stub.Synthesize(req, timeout=CALL_TIMEOUT_S)))
        seen[code] += 1
        assert code in DOCUMENTED, f"{code} for {req}"
        assert code is not grpc.StatusCode.INTERNAL

    with caplog.at_level(logging.WARNING):
        one()
    calls = sum(seen.values())
    assert seen[grpc.StatusCode.OK] > 0 and seen[grpc.StatusCode.INVALID_ARGUMENT] > 0
    assert wait_until(lambda: total_counted(fuzz_server) == before + calls, timeout=60)
    assert wait_until(lambda: fuzz_server.running.service.active == 0, timeout=60)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def mutations(rng: random.Random, n: int) -> list[bytes]:
    """Random bytes, and valid requests with bytes flipped, cut or spliced."""
    seed = tts_pb2.SynthesizeRequest(
        text="Mutate me, please.",
        voice="F1",
        steps=2,
        audio_config=tts_pb2.AudioConfig(encoding=tts_pb2.MULAW, sample_rate_hz=16000),
        chunking=tts_pb2.ChunkingConfig(max_chunk_chars=40),
    ).SerializeToString()
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            out.append(rng.randbytes(rng.randint(1, 64)))
        elif kind == 1:
            out.append(seed[: rng.randint(1, len(seed) - 1)])
        else:
            data = bytearray(seed)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            out.append(bytes(data) if kind == 2 else bytes(data) + rng.randbytes(8))
    return out


def test_raw_malformed_bytes_never_answer_unknown(fuzz_server, caplog) -> None:
    channel = grpc.insecure_channel(fuzz_server.address)
    methods = {
        "Synthesize": lambda data: list(
            channel.unary_stream("/supertonic.v1.TextToSpeech/Synthesize")(
                data, timeout=CALL_TIMEOUT_S
            )
        ),
        "SynthesizeOnce": lambda data: channel.unary_unary(
            "/supertonic.v1.TextToSpeech/SynthesizeOnce"
        )(data, timeout=CALL_TIMEOUT_S),
        "ListVoices": lambda data: channel.unary_unary("/supertonic.v1.TextToSpeech/ListVoices")(
            data, timeout=CALL_TIMEOUT_S
        ),
    }
    rng = random.Random(10)
    seen: Counter[grpc.StatusCode] = Counter()
    before = total_counted(fuzz_server)
    with caplog.at_level(logging.INFO):
        for i, data in enumerate(mutations(rng, 150)):
            name = TTS_RPCS[i % 3]
            seen[code_of(lambda d=data, n=name: methods[n](d))] += 1
    assert seen[grpc.StatusCode.UNKNOWN] == 0, seen
    assert seen[grpc.StatusCode.INVALID_ARGUMENT] > 0
    assert set(seen) <= DOCUMENTED, seen
    assert wait_until(lambda: total_counted(fuzz_server) == before + sum(seen.values()), 60)
    check = channel.unary_unary("/grpc.health.v1.Health/Check")
    health = Counter(
        code_of(lambda d=d: check(d, timeout=CALL_TIMEOUT_S)) for d in mutations(rng, 40)
    )
    assert health[grpc.StatusCode.UNKNOWN] == 0 and set(health) <= DOCUMENTED | {
        grpc.StatusCode.NOT_FOUND  # an unknown service name
    }, health
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
