"""The scheduler thread's engine work: admission, one flow step, vocoded pieces, delivery.

`Stages` owns the running set (the chunks admitted into the engine) and runs each stage of a
tick on the engine. A failure or a short answer from the engine fails exactly the chunks of
that call, never more, and never leaves one waiting forever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from supertonic_grpc.engine import Flight, Synthesized
from supertonic_grpc.scheduler.cost import VOCODER_CONTEXT_FRAMES, CostModel
from supertonic_grpc.scheduler.jobs import EngineLike, Job, JobResult, MetricsLike, Priority
from supertonic_grpc.scheduler.policy import Running

log = logging.getLogger(__name__)


class Stages:
    """Runs the stages of a tick for the scheduler thread and delivers their results."""

    def __init__(
        self,
        engine: EngineLike,
        cost: CostModel,
        metrics: MetricsLike | None,
        clock: Callable[[], float],
        sample_rate: int,
        context_frames: int = VOCODER_CONTEXT_FRAMES,
    ) -> None:
        self.engine = engine
        self.cost = cost
        self.metrics = metrics
        self.clock = clock
        self.sample_rate = sample_rate
        self.context_frames = context_frames
        self.running: list[Running] = []  # the scheduler thread's own
        self.first_audio_ema_s = 0.0  # a first chunk's admission -> first piece
        self.chunk_ema_s = 0.0  # a chunk's admission -> last piece

    def admit(self, jobs: list[Job], start: float, errors: list[str]) -> list[Job]:
        if not jobs:
            return []
        t0 = self.clock()
        try:
            flights: Sequence[Flight] = self.engine.admit([j.utterance for j in jobs])
        except Exception as exc:  # confined to these jobs: they fail, the server goes on
            log.exception("admission of %d chunks failed", len(jobs))
            errors.append(f"admit: {exc}")
            self.fail(jobs, exc)
            return []
        self.cost.learn_admit(sum(len(j.utterance.token_ids) for j in jobs), self.clock() - t0)
        if len(flights) != len(jobs):
            errors.append(f"admit: engine returned {len(flights)} flights for {len(jobs)}")
            self.fail(jobs[len(flights) :], EngineShortfall(len(flights), len(jobs)))
        admitted = []
        for job, flight in zip(jobs, flights, strict=False):
            self.running.append(Running(job, flight, start))
            admitted.append(job)
            if self.metrics is not None:
                label = job.priority.name.lower()
                self.metrics.queue_wait_seconds.labels(label).observe(
                    max(0.0, start - job.submitted)
                )
        return admitted

    def step(self, chosen: list[Running], errors: list[str]) -> tuple[tuple[int, int, int], ...]:
        if not chosen:
            return ()
        before = [r.flight.step for r in chosen]
        t0 = self.clock()
        try:
            self.engine.step([r.flight for r in chosen])
        except Exception as exc:  # only this step's chunks fail
            log.exception("flow step over %d chunks failed", len(chosen))
            errors.append(f"step: {exc}")
            self.fail_running(chosen, exc)
            return ()
        longest = max(r.flight.frames for r in chosen)
        self.cost.learn_step(len(chosen), longest, self.clock() - t0)
        stuck = []
        for r, b in zip(chosen, before, strict=True):
            r.batch_size = max(r.batch_size, len(chosen))
            r.ticket.work += r.flight.frames
            if r.flight.step != b + 1:
                stuck.append(r)
        if stuck:
            # An engine that did not advance a chunk would otherwise be stepped forever.
            errors.append(f"step: engine did not advance {len(stuck)} chunk(s)")
            self.fail_running(stuck, EngineShortfall(len(chosen) - len(stuck), len(chosen)))
        return tuple(
            (r.ticket.request_id, r.job.index, b) for r, b in zip(chosen, before, strict=True)
        )

    def vocode(
        self, pieces: list[tuple[Running, int]], errors: list[str]
    ) -> tuple[tuple[int, int, int], ...]:
        if not pieces:
            return ()
        # Frames decoded, the left context of pieces after the first included.
        frames = sum(
            min(n, r.flight.frames_left) + min(self.context_frames, r.flight.vocoded_frames)
            for r, n in pieces
        )
        t0 = self.clock()
        try:
            wavs = self.engine.vocode([(r.flight, n) for r, n in pieces])
        except Exception as exc:
            log.exception("vocoding %d pieces failed", len(pieces))
            errors.append(f"vocode: {exc}")
            self.fail_running([r for r, _ in pieces], exc)
            return ()
        now = self.clock()
        self.cost.learn_vocode(len(pieces), frames, now - t0)
        if len(wavs) != len(pieces):
            errors.append(f"vocode: engine returned {len(wavs)} pieces for {len(pieces)}")
            self.fail_running(
                [r for r, _ in pieces[len(wavs) :]], EngineShortfall(len(wavs), len(pieces))
            )
        done = []
        for (r, n), wav in zip(pieces, wavs, strict=False):
            r.ticket.work += n
            done.append((r.ticket.request_id, r.job.index, r.pieces))
            self.deliver_piece(r, np.asarray(wav, dtype=np.float32), now)
        return tuple(done)

    def deliver_piece(self, r: Running, wav: np.ndarray, now: float) -> None:
        seconds = len(wav) / self.sample_rate
        last = r.flight.finished
        if r.pieces == 0:
            r.first_piece_at = now
            if r.job.priority is Priority.HIGH:
                sample = now - r.admitted
                ema = self.first_audio_ema_s
                self.first_audio_ema_s = sample if not ema else 0.8 * ema + 0.2 * sample
        r.ticket.playback.on_chunk_sent(now, seconds)
        m = self.metrics
        if m is not None:
            m.audio_seconds_total.inc(seconds)
        piece = r.pieces
        r.pieces += 1
        queue_s, compute_s = r.admitted - r.job.submitted, now - r.admitted
        chunk_s = r.flight.samples / self.sample_rate
        if r.job.pieces:
            result = JobResult(
                Synthesized(wav, seconds), queue_s, compute_s, r.batch_size, piece, last, now,
                chunk_s,
            )  # fmt: skip
            _deliver(r.job, result)
        else:
            r.parts.append(wav)
            if last:
                whole = np.concatenate(r.parts) if len(r.parts) > 1 else r.parts[0]
                r.parts = []
                result = JobResult(
                    Synthesized(whole, len(whole) / self.sample_rate), queue_s, compute_s,
                    r.batch_size, 0, True, now, chunk_s,
                )  # fmt: skip
                _deliver(r.job, result)
        if last:
            self.running.remove(r)
            ema = self.chunk_ema_s
            self.chunk_ema_s = compute_s if not ema else 0.8 * ema + 0.2 * compute_s
            if m is not None:
                label = r.job.priority.name.lower()
                m.compute_seconds.labels(label).observe(compute_s)
                m.chunks_total.labels(label).inc()

    def fail(self, jobs: Sequence[Job], exc: BaseException) -> None:
        for job in jobs:
            _deliver(job, exc)

    def fail_running(self, items: Sequence[Running], exc: BaseException) -> None:
        for r in items:
            if r in self.running:
                self.running.remove(r)
        self.fail([r.job for r in items], exc)


class EngineShortfall(RuntimeError):
    """The engine returned fewer results than it was given items (or left one unchanged)."""

    def __init__(self, got: int, expected: int) -> None:
        super().__init__(f"engine returned {got} results for {expected} items")


def _deliver(job: Job, outcome: JobResult | BaseException) -> None:
    try:
        job.on_done(outcome)
    except Exception:  # a broken callback must not take the scheduler down
        log.exception("job callback failed")
