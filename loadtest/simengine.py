"""A cost-model engine, a simulated clock and one server's request handling on them, for
`loadtest.simulate`: the real `Scheduler` and policy run unchanged; only the engine's time
is simulated (see `QUIET_2CORE`)."""

from __future__ import annotations

import heapq
import itertools
import math
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from loadtest.corpus import Text
from supertonic_grpc.engine import DEFAULT_SPEED, Flight, Utterance
from supertonic_grpc.playback import PlaybackClock
from supertonic_grpc.scheduler import Job, JobResult, Limits, Priority, Scheduler, Ticket
from supertonic_grpc.settings import Settings
from supertonic_grpc.text.chunker import split_text
from supertonic_grpc.validation import default_first_chunk_chars, fitting_chunk_chars
from supertonic_grpc.voices import demo_voice

SAMPLE_RATE, FRAME_SAMPLES = 44100, 3072
CHARS_PER_SECOND = 15.0  # demo pacing
LOOP_HOP_S = 0.005  # scheduler thread -> event loop -> the client's first message
_EMPTY = torch.zeros(1)


@dataclass(frozen=True)
class Costs:
    """Seconds per engine call: a fixed part plus a part per padded frame (or token)."""

    admit_s: float
    admit_per_token_s: float
    step_s: float
    step_per_frame_s: float
    vocode_s: float
    vocode_per_frame_s: float


# Fitted to the quiet 2-core Xeon, fp32, 5 steps: T1 0.171 s (34 characters, first piece
# only), batch 1 of ~100 characters 0.33 s, batch 8 1.72 s (RTF 20 and 31). A vocoded piece
# costs ~7.5 ms whatever its length (the vocoder's ~100 MB of weights read once a call),
# then ~1 ms a frame: 19 ms for 10 frames, 130 ms for 120.
QUIET_2CORE = Costs(0.012, 5e-5, 0.022, 1.64e-4, 0.0075, 1.02e-3)
# The same Xeon kind on a busier day (docs/BENCHMARKS.md, session 21's cost table).
XEON_2CORE = Costs(0.012, 5e-5, 0.022, 2.7e-4, 0.012, 1.2e-3)
# A 2-core AMD EPYC (avx512_bf16, no AMX; session 22): compute-bound, so a second row costs
# more (+70% at 32 frames against +30%) and a vocoded frame 1.56 ms against 1.2.
EPYC_2CORE = Costs(0.0054, 9.8e-5, 0.0113, 3.95e-4, 0.011, 1.56e-3)
COSTS = {"quiet": QUIET_2CORE, "xeon": XEON_2CORE, "epyc": EPYC_2CORE}


class CostEngine:
    """The engine's step API, at the cost of `costs` on `clock`; audio is silence."""

    # As the CPU engine does, pieces are decoded from a carried state: no left context.
    sample_rate, frame_samples, vocoder_context = SAMPLE_RATE, FRAME_SAMPLES, 0

    def __init__(self, clock: SimClock, costs: Costs) -> None:
        self.clock, self.costs = clock, costs

    def admit(self, items: Sequence[Utterance]) -> list[Flight]:
        c = self.costs
        self.clock.advance(c.admit_s + c.admit_per_token_s * sum(len(u.token_ids) for u in items))
        out = []
        for u in items:
            seconds = max(0.3, (len(u.token_ids) - 2) / CHARS_PER_SECOND) / u.speed
            frames = math.ceil(seconds * SAMPLE_RATE / FRAME_SAMPLES)
            out.append(Flight(u, frames, int(seconds * SAMPLE_RATE), _EMPTY, _EMPTY, _EMPTY))
            out[-1].lead_samples = round(u.lead_silence_s * SAMPLE_RATE)
        return out

    def step(self, flights: Sequence[Flight]) -> None:
        c = self.costs
        self.clock.advance(
            c.step_s + c.step_per_frame_s * len(flights) * max(f.frames for f in flights)
        )
        for f in flights:
            f.step += 1

    def vocode(self, pieces: Sequence[tuple[Flight, int]]) -> list[np.ndarray]:
        out = []
        c = self.costs
        spans = [(f, f.vocoded_frames, min(f.frames, f.vocoded_frames + n)) for f, n in pieces]
        # As on CPU: pieces of one length that all start their chunk, or all continue one,
        # decode in one call (one fixed cost), the others alone.
        calls = {(end - start, start == 0) for _, start, end in spans}
        frames = sum(end - start for _, start, end in spans)
        self.clock.advance(c.vocode_s * len(calls) + c.vocode_per_frame_s * frames)
        for f, start, end in spans:
            stop = min(f.samples, end * FRAME_SAMPLES)
            samples = max(0, stop - start * FRAME_SAMPLES)
            if start == 0:
                samples += f.lead_samples
            out.append(np.zeros(samples, np.float32))
            f.vocoded_frames = end
        return out


class SimClock:
    """Simulated seconds; arrivals due by the time an engine call ends are delivered then,
    so a newcomer can arrive in the middle of a tick, as on a real server."""

    def __init__(self) -> None:
        self.now = 0.0
        self._events: list[tuple[float, int, Callable[[float], None]]] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.now

    def at(self, when: float, fn: Callable[[float], None]) -> None:
        """Call ``fn(when)`` once the clock has passed ``when``."""
        heapq.heappush(self._events, (when, next(self._seq), fn))

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.fire()

    def fire(self) -> None:
        while self._events and self._events[0][0] <= self.now:
            when, _, fn = heapq.heappop(self._events)
            fn(when)

    def next_event(self) -> float | None:
        return self._events[0][0] if self._events else None


@dataclass
class SimStream:
    """One simulated Synthesize call: its chunks, pieces received, and playback."""

    text: Text
    start: float
    chunks: list[str]
    first_audio: float | None = None
    gaps: list[float] = field(default_factory=list)
    playback: PlaybackClock = field(default_factory=PlaybackClock)
    done: float | None = None

    @property
    def ttfa(self) -> float | None:
        return None if self.first_audio is None else self.first_audio - self.start + LOOP_HOP_S


class Simulation:
    """Listeners against one scheduler on a simulated clock (see the module docstring)."""

    def __init__(
        self,
        costs: Costs = QUIET_2CORE,
        settings: Settings | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.clock = SimClock()
        self.engine = CostEngine(self.clock, costs)
        max_batch = self.settings.resolved_max_batch("cpu")
        self.scheduler = Scheduler(
            self.engine,
            max_batch=max_batch,
            max_wait_s=0.0,
            max_batch_tokens=self.settings.resolved_max_batch_tokens("cpu"),
            clock=self.clock,
            history=100_000,
            limits=limits,
        )
        self.scheduler._running_flag = True  # driven tick by tick, no thread
        self.voice = demo_voice("M1")
        self._ids = itertools.count(1)

    def request(
        self,
        text: Text,
        on_end: Callable[[SimStream], None] | None = None,
        at: float | None = None,
        *,
        steps: int = 5,
        speed: float = DEFAULT_SPEED,
    ) -> SimStream:
        """Start one streaming request, as `service.Synthesize` would; it arrived `at`
        (default now: an arrival is seen at the end of the engine call it came during)."""
        s = self.settings
        longest = min(s.max_chunk_chars, fitting_chunk_chars(text.language, speed))
        first_chars = min(longest, default_first_chunk_chars(text.language, s))
        chunks = [c.text for c in split_text(text.text, longest, first_chars)]
        arrived = self.clock.now if at is None else at
        stream = SimStream(text, arrived, chunks)
        ticket = Ticket(next(self._ids))
        estimates = [max(0.3, len(c) / CHARS_PER_SECOND / speed) for c in chunks]
        state = {"submitted": 0, "sent": 0}

        def submit() -> None:
            k = state["submitted"]
            if k >= len(chunks):
                return
            now = self.clock.now
            clock = stream.playback
            if clock.started:
                deadline = clock.deadline(now) + sum(estimates[state["sent"] : k])
            else:
                first = self.scheduler.expected_first_audio_s()
                deadline = now + first + sum(estimates[:k])
            utt = Utterance(
                # The tokenizer's units: decomposed code points (a Hangul syllable is 2-3).
                token_ids=[1] * (len(unicodedata.normalize("NFKD", chunks[k])) + 2),
                voice=self.voice,
                speed=speed,
                steps=steps,
                seed=k,
                lead_silence_s=0.3 / speed if k else 0.0,
            )
            job = Job(utt, Priority.HIGH if k == 0 else Priority.NORMAL, deadline, ticket,
                      on_done, index=k, pieces=True)  # fmt: skip
            state["submitted"] += 1
            self.scheduler.submit(job, force=k > 0)
            if k == 0:
                job.submitted = arrived  # the queue wait counts from the true arrival

        def on_done(outcome: JobResult | BaseException) -> None:
            if isinstance(outcome, BaseException):
                raise outcome
            now = self.clock.now
            if stream.first_audio is None:
                stream.first_audio = now
            gap = stream.playback.on_chunk_sent(now, outcome.synthesized.duration_s)
            if gap > 0.020:
                stream.gaps.append(gap)
            if outcome.last_piece:
                state["sent"] += 1
                if state["sent"] == len(chunks):
                    stream.done = now
                    if on_end is not None:
                        on_end(stream)
                else:
                    submit()

        for _ in range(self.settings.lookahead_chunks):
            submit()
        return stream

    def run_until_idle(self) -> None:
        s = self.scheduler
        while True:
            self.clock.fire()
            if s.step(block=False) is None:
                nxt = self.clock.next_event()
                if nxt is None:
                    return
                self.clock.now = max(self.clock.now, nxt)
