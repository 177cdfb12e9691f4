"""Tests for supertonic_grpc.playback.PlaybackClock: the listener model behind underruns."""

from __future__ import annotations

import pytest

from supertonic_grpc.playback import PlaybackClock


def test_first_chunk_is_never_an_underrun() -> None:
    clock = PlaybackClock(start_time=0.0)
    assert clock.on_chunk_sent(5.0, 1.0) == 0.0  # even if it took 5 s to arrive
    assert clock.underruns == 0
    assert clock.deadline(5.0) == 6.0


def test_chunks_sent_early_leave_no_gap_and_queue_up() -> None:
    clock = PlaybackClock()
    gaps = [clock.on_chunk_sent(t, 1.0) for t in (10.0, 10.1, 10.2, 10.3)]
    assert gaps == [0.0, 0.0, 0.0, 0.0]
    # Each chunk plays after the previous one: 4 s of audio from 10.0.
    assert clock.deadline(10.3) == pytest.approx(14.0)
    assert clock.buffered_seconds(10.3) == pytest.approx(3.7)
    assert clock.buffered_seconds(20.0) == 0.0
    assert clock.underruns == 0 and clock.underrun_seconds == 0.0
    assert clock.chunks == 4 and clock.audio_seconds == pytest.approx(4.0)


def test_chunk_sent_exactly_at_the_end_has_no_gap() -> None:
    clock = PlaybackClock()
    clock.on_chunk_sent(0.0, 0.5)
    assert clock.on_chunk_sent(0.5, 0.5) == 0.0
    assert clock.deadline(0.5) == 1.0


def test_late_chunks_give_exact_gaps_and_restart_playback() -> None:
    clock = PlaybackClock(start_time=0.0)
    assert clock.on_chunk_sent(1.0, 2.0) == 0.0  # plays 1.0 .. 3.0
    assert clock.on_chunk_sent(3.5, 1.0) == pytest.approx(0.5)  # plays 3.5 .. 4.5
    assert clock.deadline(3.5) == pytest.approx(4.5)
    assert clock.on_chunk_sent(4.0, 1.0) == 0.0  # early: plays 4.5 .. 5.5
    assert clock.on_chunk_sent(7.75, 0.25) == pytest.approx(2.25)  # plays 7.75 .. 8.0
    assert clock.underruns == 2
    assert clock.underrun_seconds == pytest.approx(2.75)
    assert clock.deadline(7.75) == pytest.approx(8.0)


def test_deadline_before_the_first_chunk() -> None:
    # The listener is already waiting: the first chunk is due at once.
    assert PlaybackClock(start_time=2.0).deadline(3.0) == 2.0
    assert PlaybackClock().deadline(3.0) == 3.0
    assert PlaybackClock(start_time=2.0).buffered_seconds(3.0) == 0.0
    assert not PlaybackClock().started


def test_zero_length_chunk_and_invalid_input() -> None:
    clock = PlaybackClock()
    assert clock.on_chunk_sent(1.0, 0.0) == 0.0
    assert clock.started and clock.deadline(1.0) == 1.0
    with pytest.raises(ValueError, match="duration_s"):
        clock.on_chunk_sent(2.0, -1.0)
    with pytest.raises(ValueError, match="duration_s"):
        clock.on_chunk_sent(2.0, float("nan"))
    with pytest.raises(ValueError, match="now"):
        clock.on_chunk_sent(float("inf"), 1.0)
    assert clock.chunks == 1  # rejected calls change nothing
