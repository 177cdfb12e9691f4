"""A server-side model of one listener's playback, for underrun accounting and deadlines.

Pure Python on purpose: the scheduler uses it for deadlines and the service for metrics, and
neither should need the other's dependencies. Times are seconds on any one monotonic clock.
"""

from __future__ import annotations

import math


class PlaybackClock:
    """Where a listener who plays every chunk as soon as it arrives is in the stream.

    Playback starts when the first chunk is sent. Each chunk then plays for its duration from
    the later of its send time and the end of the previous chunk; if it was sent after the
    previous audio ran out, the listener heard silence for the difference (an underrun).
    """

    def __init__(self, start_time: float | None = None) -> None:
        """``start_time``: when the request arrived; until the first chunk the listener has
        been waiting since then, so that is the deadline for the first chunk."""
        self.start_time = start_time
        self.end_time: float | None = None  # when the audio sent so far runs out
        self.chunks = 0
        self.audio_seconds = 0.0
        self.underruns = 0
        self.underrun_seconds = 0.0

    def on_chunk_sent(self, now: float, duration_s: float) -> float:
        """Record a chunk of ``duration_s`` seconds sent at ``now``; returns the gap before it.

        The gap is 0.0 for the first chunk and for any chunk sent before the previous audio
        ran out.
        """
        if not math.isfinite(duration_s) or duration_s < 0:
            raise ValueError(f"duration_s must be a finite number >= 0, got {duration_s!r}")
        if not math.isfinite(now):
            raise ValueError(f"now must be a finite time, got {now!r}")
        gap = 0.0 if self.end_time is None else max(0.0, now - self.end_time)
        start = now if self.end_time is None else max(now, self.end_time)
        self.end_time = start + duration_s
        self.chunks += 1
        self.audio_seconds += duration_s
        if gap > 0.0:
            self.underruns += 1
            self.underrun_seconds += gap
        return gap

    def on_chunk_written(self, ready: float, written: float, duration_s: float) -> float:
        """Record a chunk that was ready at ``ready`` and that the client took at ``written``;
        returns the gap the server caused. A slow reader is back-pressure, not a gap: the gap
        is counted from when the audio was ready, and since the listener cannot play audio
        before taking it, its playback runs on from ``written``."""
        gap = self.on_chunk_sent(ready, duration_s)
        assert self.end_time is not None
        self.end_time = max(self.end_time, written + duration_s)
        return gap

    def idle_until(self, now: float) -> None:
        """The stream had nothing more to say until ``now`` (streamed text whose next
        sentence came after the audio ran out): that silence is not an underrun, and the
        next chunk is due from ``now``."""
        if self.end_time is not None and self.end_time < now:
            self.end_time = now

    def deadline(self, now: float) -> float:
        """When the listener runs out of audio: the time the next chunk is due.

        Before the first chunk the listener is already waiting, so the deadline is the
        request's start time (or ``now`` when it was not given).
        """
        if self.end_time is not None:
            return self.end_time
        return now if self.start_time is None else min(self.start_time, now)

    def buffered_seconds(self, now: float) -> float:
        """Audio sent but not yet played at ``now`` (0.0 before the first chunk)."""
        return 0.0 if self.end_time is None else max(0.0, self.end_time - now)

    @property
    def started(self) -> bool:
        """Whether the first chunk has been sent."""
        return self.end_time is not None

    def __repr__(self) -> str:
        return (
            f"PlaybackClock(chunks={self.chunks}, audio_seconds={self.audio_seconds:.3f}, "
            f"end_time={self.end_time}, underruns={self.underruns})"
        )
