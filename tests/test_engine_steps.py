"""The engine's step API: flights that join and leave between steps, pieces of audio.

Full-size model on demo weights: a chunk's audio for a given seed must equal the
whole-chunk path within the batch-invariance bound, whatever company it had at each step
and however its audio was cut into pieces.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from supertonic_grpc.bundle import ModelBundle, demo_bundle
from supertonic_grpc.engine import DEMO_CHARS_PER_SECOND, Engine, EngineError, Flight, Utterance
from supertonic_grpc.scheduler import Job, JobResult, Priority, Scheduler, Ticket
from supertonic_grpc.text import preprocess

BATCH_TOLERANCE = 2e-3


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return demo_bundle()


@pytest.fixture(scope="module")
def engine(bundle: ModelBundle) -> Engine:
    return Engine(bundle.model, device="cpu", demo_pacing=DEMO_CHARS_PER_SECOND)


def _utt(bundle: ModelBundle, text: str, voice: str, steps: int, seed: int) -> Utterance:
    ids = bundle.tokenizer.encode(preprocess(text, "en"))
    return Utterance(ids, bundle.voices.get(voice), steps=steps, seed=seed)


def _vocode_in_pieces(engine: Engine, flight: Flight, sizes: list[int]) -> np.ndarray:
    out, k = [], 0
    while not flight.finished:
        (piece,) = engine.vocode([(flight, sizes[min(k, len(sizes) - 1)])])
        out.append(piece)
        k += 1
    return np.concatenate(out)


@pytest.mark.slow
def test_staggered_company_and_pieces_equal_the_whole_chunk_path(
    engine: Engine, bundle: ModelBundle
) -> None:
    target = _utt(bundle, "The newcomer's chunk sounds the same in any company.", "F2", 3, 7)
    long_one = _utt(
        bundle, "A long later chunk that was already mid flight when it came, and more.", "M1", 5, 1
    )
    late = _utt(bundle, "Joins later.", "M4", 2, 9)
    (alone,) = engine.synthesize([target])

    (first,) = engine.admit([long_one])
    engine.step([first])
    engine.step([first])
    (flight, joiner) = engine.admit([target, late])  # admitted together, stepped apart
    engine.step([first, flight])  # flight at step 0, first at step 2
    engine.step([flight, joiner, first])
    engine.step([joiner, flight])
    assert flight.denoised and joiner.denoised and not first.denoised
    # The first piece is short (fast first audio); the rest come in other sizes.
    pieced = _vocode_in_pieces(engine, flight, [3, 7, 100])
    assert pieced.shape == alone.audio.shape
    assert np.abs(pieced - alone.audio).max() <= BATCH_TOLERANCE


@pytest.mark.slow
def test_a_batchs_text_side_is_reused_only_while_the_very_same_batch_steps(
    engine: Engine, bundle: ModelBundle
) -> None:
    a = _utt(bundle, "The same company steps twice in a row here.", "F1", 4, 3)
    b = _utt(bundle, "And this one keeps it company, then leaves.", "M2", 4, 5)
    (alone_a,), (alone_b,) = engine.synthesize([a]), engine.synthesize([b])
    fa, fb = engine.admit([a, b])
    engine.step([fa, fb])
    conditions = engine._step_conditions([fa, fb], 2)
    engine.step([fa, fb])  # the same flights in the same rows: the same tensors
    assert engine._step_conditions([fa, fb], 2)[0] is conditions[0]
    engine.step([fb, fa])  # rows swapped: built anew, so nobody reads another's text
    assert engine._step_conditions([fb, fa], 2)[0] is not conditions[0]
    engine.step([fa])
    engine.step([fb])
    for flight, alone in ((fa, alone_a), (fb, alone_b)):
        (audio,) = engine.vocode([(flight, flight.frames)])
        assert np.abs(audio - alone.audio).max() <= BATCH_TOLERANCE


@pytest.mark.slow
def test_a_piece_equals_the_same_samples_of_the_whole_decode(
    engine: Engine, bundle: ModelBundle
) -> None:
    utt = _utt(bundle, "Causal decoding: a prefix decodes to the prefix.", "M2", 1, 3)
    (a,) = engine.admit([utt])
    (b,) = engine.admit([utt])
    engine.step([a])
    engine.step([b])
    (whole,) = engine.vocode([(a, a.frames)])
    first = engine.vocode([(b, 5)])[0]
    rest = engine.vocode([(b, b.frames)])[0]
    assert len(first) == 5 * engine.frame_samples
    np.testing.assert_allclose(np.concatenate([first, rest]), whole, atol=1e-5)


def test_on_cpu_a_flight_carries_its_decoder_state_so_no_frame_is_decoded_twice(
    engine: Engine, bundle: ModelBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert engine.vocoder_context == 0  # the scheduler's cost of a piece: its frames alone
    utt = _utt(bundle, "Streamed.", "F1", 1, 2)
    (a,) = engine.admit([utt])
    engine.step([a])
    engine.vocode([(a, 2)])
    state = a.vocoder_state
    assert state is not None
    # A call that fails part-way leaves the flight as it was: the same state and frames.
    (b,) = engine.admit([utt])
    engine.step([b])
    decoder = engine._streaming
    assert decoder is not None
    calls: list[int] = []

    def fails_second(z: torch.Tensor, st: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("a kernel failed")
        return real(z, st)

    real = decoder.stream
    monkeypatch.setattr(decoder, "stream", fails_second)
    with pytest.raises(EngineError):
        engine.vocode([(a, 2), (b, 2)])
    monkeypatch.undo()
    assert len(calls) == 2 and a.vocoder_state is state and a.vocoded_frames == 2
    engine.vocode([(a, a.frames)])
    assert a.finished and a.vocoder_state is None  # freed with the last piece


def test_pieces_of_one_length_decode_in_one_call_and_equal_each_decoded_alone(
    engine: Engine, bundle: ModelBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    utts = [
        _utt(bundle, "Two newcomers finish together.", "F1", 1, 4),
        _utt(bundle, "And both of them want their first audio now.", "M3", 1, 6),
    ]
    alone = []
    for u in utts:
        (f,) = engine.admit([u])
        engine.step([f])
        alone.append(_vocode_in_pieces(engine, f, [10, 10, 1000]))
    flights = [engine.admit([u])[0] for u in utts]
    for f in flights:
        engine.step([f])
    decoder = engine._streaming
    assert decoder is not None
    calls: list[int] = []
    real = decoder.stream

    def counted(z: torch.Tensor, st: object) -> object:
        calls.append(z.shape[0])
        return real(z, st)

    monkeypatch.setattr(decoder, "stream", counted)
    fa, fb = flights
    firsts = engine.vocode([(fa, 10), (fb, 10)])  # both start their chunk: one call
    seconds = engine.vocode([(fa, 10), (fb, 10)])  # both carry a state: one call
    rests = engine.vocode([(fa, fa.frames), (fb, fb.frames)])  # two lengths: two calls
    assert fa.frames != fb.frames and calls == [2, 2, 1, 1]
    for i, f in enumerate(flights):
        assert f.finished and f.vocoder_state is None
        pieced = np.concatenate([firsts[i], seconds[i], rests[i]])
        np.testing.assert_allclose(pieced, alone[i], rtol=0, atol=1e-6)


def test_padding_rows_are_masked_not_read(bundle: ModelBundle) -> None:
    """Row buckets pad a step to a fixed batch size; the padded rows change nothing."""
    exact = Engine(bundle.model, device="cpu", demo_pacing=DEMO_CHARS_PER_SECOND)
    padded = Engine(bundle.model, device="cpu", demo_pacing=DEMO_CHARS_PER_SECOND, row_buckets=(4,))
    assert padded._rows(1) == 4 and padded._rows(5) == 5 and exact._rows(3) == 3
    utt = _utt(bundle, "Hi.", "F1", 1, 5)
    (a,) = exact.admit([utt])
    (b,) = padded.admit([utt])
    exact.step([a])
    padded.step([b])
    assert np.isfinite(b.latent.numpy()).all()
    np.testing.assert_allclose(a.latent.numpy(), b.latent.numpy(), atol=1e-4)


@pytest.mark.slow
def test_through_the_scheduler_a_chunk_equals_the_whole_chunk_path(
    engine: Engine, bundle: ModelBundle
) -> None:
    """Chunks join at different ticks with different step counts; each one's pieces,
    joined, equal its whole-chunk synthesis alone."""
    texts = [
        ("A later chunk, long and already running when the others come along.", "M1", 4),
        ("A newcomer's first chunk.", "F2", 2),
        ("One more joins two ticks later.", "M4", 3),
    ]
    s = Scheduler(engine, max_batch=8, max_batch_tokens=10_000)
    s._running_flag = True  # driven tick by tick below
    out: dict[int, list[JobResult]] = {0: [], 1: [], 2: []}
    utts = [_utt(bundle, t, v, steps, seed=10 + i) for i, (t, v, steps) in enumerate(texts)]

    def submit(i: int, priority: Priority) -> None:
        s.submit(
            Job(utts[i], priority, 0.0, Ticket(i), out[i].append, pieces=True),
        )

    submit(0, Priority.NORMAL)
    s.step(block=False)
    submit(1, Priority.HIGH)
    s.step(block=False)
    s.step(block=False)
    submit(2, Priority.NORMAL)
    while s.step(block=False) is not None:
        pass
    for i, utt in enumerate(utts):
        (alone,) = engine.synthesize([utt])
        assert out[i][-1].last_piece and len(out[i]) >= 2 - (i != 1)
        joined = np.concatenate([r.synthesized.audio for r in out[i]])
        assert joined.shape == alone.audio.shape
        assert np.abs(joined - alone.audio).max() <= BATCH_TOLERANCE
