"""What the scheduler thread does next: pure decisions over the queue and the running set.

One tick of the scheduler is admission (text encoder + duration for new chunks), one flow
step over a chosen set of running chunks (each at its own step index), and vocoding of the
next piece of chunks whose flow is done. This module chooses those sets; `core` runs them.

Rules, in order:
- First chunks (HIGH) come first: they are admitted at the next tick and step without
  company on CPU, so a newcomer's first audio waits at most for the tick in flight, whatever
  else is queued; among them the least remaining work (steps x frames) goes first, so an
  expensive first chunk (50 steps, slow speech) cannot hold a cheap one behind it. On a GPU
  (`mix`) later chunks share the step: extra rows are nearly free.
- A HIGH burst has a bound (`high_burst_s` of engine time) while later chunks are urgent or
  late, so a flood of newcomers cannot starve running streams either.
- Later chunks (NORMAL) are ordered by class: *urgent* (can still make its deadline, little
  slack) by deadline, then *hopeless* (cannot make it even alone) least-served first, then
  *feasible* by deadline. A hopeless stream never goes ahead of one that can still be saved,
  and takes the engine from newcomers only within the burst bound above. On CPU a tick with
  urgent or hopeless later chunks steps only those: a feasible one waits for a tick without
  them, since a row costs nearly what a call does there.
- A request's chunks are admitted in order: a later chunk never overtakes an earlier one.
  One with slack is admitted while first chunks are in flight only when they are all
  costly (50 steps against 5): such a first chunk takes seconds, and holding every
  listener's next chunk until due behind it underran them.
- Fair share: the first pass takes one chunk per request, the second fills what is left.
- Every step is bounded by `max_batch` rows and `max_step_frames` padded frames (rows x
  longest latent), so one tick, and therefore any newcomer's wait, stays short.
- Newcomers do not wait for what can wait (CPU): an urgent later chunk whose slack covers
  the first chunks' remaining steps waits for them, and so does one of a stream whose
  audio costs over `expensive_ratio` times the newcomers' (its steps against theirs); a
  first chunk of over `expensive_ratio` times a newcomer's work and a longer latent does not
  pad its step until first chunks have had `high_burst_s`, and one of a costly stream (50
  steps against 5) not at all, but for one step each `high_burst_s` of engine time it waited;
  while first chunks are queued or in flight, later pieces are decoded only when due, and
  short (unless the running set is full with work queued: then they are decoded whole, so
  their slots free); the piece after a first piece is short only for a much cheaper newcomer, and
  waits a tick when other newcomers' first pieces are out before it is due; a piece planned
  before a newcomer arrived mid-tick yields it that tick when its slack allows, and a due
  piece whose slack covers the newcomers' remaining engine time waits for their first audio.
- A step's rows go to the engine in the cheapest calls by length (CPU: a padded frame costs
  what a real one does); a call of later chunks planned before a newcomer arrived mid-tick
  is left out of that tick when its chunks' slack allows.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from supertonic_grpc.engine import Flight
from supertonic_grpc.scheduler.cost import VOCODER_CONTEXT_FRAMES, CostModel
from supertonic_grpc.scheduler.jobs import Job, Priority, Ticket

_E = TypeVar("_E")

# Latent frames per text token before the duration is known (15 chars/s, 70 ms frames).
FRAMES_PER_TOKEN = 1.0
# What one more engine call in a tick costs beyond the cost model's fixed part: the text
# side of its batch computed again (the attention blocks keep one batch's).
SPLIT_S = 0.003


class Urgency(enum.IntEnum):
    """A later chunk's class, in the order they are served."""

    URGENT = 0  # can still make its deadline, with little slack
    HOPELESS = 1  # cannot make it even alone: least-served first, bounded against newcomers
    FEASIBLE = 2  # has slack


@dataclass(eq=False)
class Running:
    """A chunk admitted into the engine, until its last piece is delivered."""

    job: Job
    flight: Flight
    admitted: float
    pieces: int = 0  # pieces delivered
    first_piece_at: float | None = None
    batch_size: int = 1  # the largest step it shared
    held_s: float = 0.0  # engine time it has waited for its next flow step, while denoising
    parts: list[np.ndarray] = field(default_factory=list)  # for jobs without pieces

    @property
    def high(self) -> bool:
        """A first chunk whose first piece is not out yet: someone waits in silence."""
        return self.job.priority is Priority.HIGH and self.pieces == 0

    @property
    def ticket(self) -> Ticket:
        return self.job.ticket

    def seconds_left(self, sample_rate: int, frame_samples: int) -> float:
        """Predicted audio of this chunk not yet delivered."""
        done = min(self.flight.samples, self.flight.vocoded_frames * frame_samples)
        return (self.flight.samples - done) / sample_rate


@dataclass(frozen=True)
class Limits:
    max_batch: int = 8  # rows per flow step
    max_step_frames: int = 1200  # padded frames (rows x longest latent) per flow step
    max_running: int = 16  # chunks admitted at once
    mix: bool = False  # later chunks share steps with first chunks (GPU)
    first_piece_frames: int = 10  # ~0.7 s: the first audio of a request
    piece_frames: int = 120  # ~8.4 s: later pieces (fewer pieces: less vocoder context)
    # While a first chunk is in flight or queued (CPU): later pieces this long, so the
    # newcomer waits for a short decode, not an 8 s one (~2.8 s of audio; costs 20 frames
    # of vocoder context per extra piece, only under contention).
    contended_piece_frames: int = 40
    max_vocode_frames: int = 240  # vocoded per tick (beyond first pieces), so ticks stay short
    urgent_margin_s: float = 0.4  # covers the tick in flight (<= ~0.1 s) and jitter
    high_burst_s: float = 0.75
    expensive_ratio: float = 4.0  # a first chunk with this much more work waits (CPU)


class Policy:
    """Chooses each tick's admissions, step set and vocode set."""

    def __init__(
        self,
        limits: Limits,
        cost: CostModel,
        sample_rate: int,
        frame_samples: int,
        context_frames: int = VOCODER_CONTEXT_FRAMES,
    ):
        self.limits = limits
        self.cost = cost
        self.sample_rate = sample_rate
        self.frame_samples = frame_samples
        self.context_frames = context_frames  # left context each vocoded piece decodes

    # --- deadlines -----------------------------------------------------------------------

    def deadline(self, job: Job, running: Sequence[Running]) -> float:
        """When the job's listener needs its next audio. Once the request's playback has
        started, that is when the audio already sent runs out, plus what earlier chunks
        still owe (their predicted durations, known once admitted)."""
        playback = job.ticket.playback
        if not playback.started:
            return job.deadline
        owed = sum(
            r.seconds_left(self.sample_rate, self.frame_samples)
            for r in running
            if r.ticket is job.ticket and r.job.index < job.index
        )
        return playback.deadline(0.0) + owed

    def remaining_s(self, r: Running) -> float:
        """Engine time this chunk needs, alone, until its next piece."""
        # A whole piece even when less of the chunk is left: the overstatement is headroom
        # for the ticks it shares with newcomers, which an alone price leaves out. Priced
        # at its real length, more later chunks waited for newcomers and, in the simulator
        # (12 seeds), startup bursts at 8 listeners lost four streams' gaps against one.
        f = r.flight
        return f.steps_left * self.cost.step_s(1, f.frames) + self.cost.vocode_s(
            self._piece_frames(r) + self.context_frames
        )

    def urgency(self, slack: float, need: float) -> Urgency:
        if slack < need:
            return Urgency.HOPELESS
        if slack <= 2 * need + self.limits.urgent_margin_s:
            return Urgency.URGENT
        return Urgency.FEASIBLE

    def _classify(
        self, items: Iterable[Running], running: Sequence[Running], now: float
    ) -> list[tuple[tuple[Urgency, float, int], Running]]:
        out = []
        for r in items:
            d = self.deadline(r.job, running)
            u = self.urgency(d - now, self.remaining_s(r))
            # Hopeless streams: least-served first; the others: earliest deadline first.
            key = (u, r.ticket.work if u is Urgency.HOPELESS else d, r.job.seq)
            out.append((key, r))
        out.sort(key=lambda e: e[0])
        return out

    # --- admission -----------------------------------------------------------------------

    def admissions(
        self,
        high: Sequence[Job],
        normal: Sequence[Job],
        running: Sequence[Running],
        now: float,
        high_run_s: float = 0.0,
    ) -> list[Job]:
        """Queued jobs to admit this tick: first chunks (oldest first) while rows allow,
        then later chunks by deadline; a later chunk with slack waits while a first chunk
        is in flight on CPU, so it does not slow that first chunk's steps, unless that
        first chunk is over `expensive_ratio` times costlier per second of audio (its
        steps against the later chunk's)."""
        lim = self.limits
        chosen: list[Job] = []
        high_running = sum(1 for r in running if r.high)
        # Up to max_running first chunks in flight (the step takes the cheapest of them).
        for job in high:
            if high_running + len(chosen) >= lim.max_running:
                break
            chosen.append(job)
        # The first chunks a later chunk makes way for: not a costly one (50 steps against
        # 5), in flight for seconds, which would hold every listener's next chunk until due.
        newcomer_steps = [j.utterance.steps for j in chosen] + [
            r.flight.utterance.steps for r in running if r.high
        ]
        room = lim.max_running - len(running) - len(chosen)
        ranked = sorted((self._job_key(j, running, now), j) for j in _in_order(normal))
        busy = {id(r.ticket) for r in running}
        ranked = _fair_order(ranked, lambda e: e[1].ticket, busy)
        for (urgency, *_), job in ranked[: max(0, room)]:
            if len(chosen) >= lim.max_batch:
                break
            high_work = any(not self._costlier(n, job.utterance.steps) for n in newcomer_steps)
            if high_work and not lim.mix and not self._may_interrupt(urgency, high_run_s):
                continue
            chosen.append(job)
        return chosen

    def _may_interrupt(self, urgency: Urgency, high_run_s: float) -> bool:
        """Whether a later chunk may take engine time while first chunks are in flight."""
        if urgency is Urgency.URGENT:
            return True
        return urgency is Urgency.HOPELESS and high_run_s >= self.limits.high_burst_s

    def _job_key(
        self, job: Job, running: Sequence[Running], now: float
    ) -> tuple[Urgency, float, int]:
        """A queued later chunk's rank; its frames are estimated from its tokens."""
        frames = _estimated_frames(job)
        need = job.utterance.steps * self.cost.step_s(1, frames) + self.cost.vocode_s(
            min(frames, self.limits.piece_frames) + self.context_frames
        )
        d = self.deadline(job, running)
        u = self.urgency(d - now, need)
        return (u, job.ticket.work if u is Urgency.HOPELESS else d, job.seq)

    # --- the flow step -------------------------------------------------------------------

    def step_groups(
        self, running: Sequence[Running], now: float, high_run_s: float
    ) -> tuple[list[list[Running]], int]:
        """The chunks that take one flow step this tick, as groups of one engine call each,
        and how many of them are urgent. On CPU first chunks and the later chunks that cannot
        wait for them step in separate calls: padding a short first chunk to a long later
        chunk's length would cost both."""
        lim = self.limits
        denoising = [r for r in running if not r.flight.denoised]
        # Least remaining work first: a 50-step or long first chunk cannot hold a newcomer's
        # short one behind it, and the mean wait for first audio is the shortest.
        high = sorted(
            (r for r in denoising if r.high),
            key=lambda r: (r.flight.steps_left * r.flight.frames, r.job.seq),
        )
        normal = self._classify((r for r in denoising if not r.high), running, now)
        urgent = [r for key, r in normal if key[0] == Urgency.URGENT]
        if lim.mix:
            order = urgent + high + [r for key, r in normal if key[0] != Urgency.URGENT]
        elif high:
            cheap, due = self._cheap_first(high, high_run_s)
            first = self._fill(cheap + due)
            if high_run_s >= lim.high_burst_s and self._needy(normal, first):
                # The burst bound: this tick is the later chunks'.
                order = self._pressing(normal)
            else:
                return self._first_groups(first, due, urgent, running, now)
        else:
            order = self._pressing(normal)
        chosen = self._fill(order)
        groups = [chosen] if lim.mix else self.pad_groups(chosen)
        return groups, sum(1 for r in chosen if r in urgent)

    @staticmethod
    def _pressing(
        normal: Sequence[tuple[tuple[Urgency, float, int], Running]],
    ) -> list[Running]:
        """The later chunks a tick without first chunks steps (CPU): the urgent and hopeless
        ones alone while there are any, the feasible ones in ticks without them. A CPU is
        compute-bound at these sizes (a second row costs 30-80% of the first's step, by
        length, on both 2-core CPUs measured), so a feasible chunk beside an urgent one
        delays it by most of a step of its own for little throughput; it has the slack to
        wait, and turns urgent with twice its remaining work still as slack."""
        pressing = [r for key, r in normal if key[0] is not Urgency.FEASIBLE]
        return pressing or [r for _, r in normal]

    def _first_groups(
        self,
        first: list[Running],
        due: list[Running],
        urgent: list[Running],
        running: Sequence[Running],
        now: float,
    ) -> tuple[list[list[Running]], int]:
        """First chunks alone (`first`, and the costly ones `due` a step), and later chunks
        that cannot wait for them: an urgent chunk whose slack still covers the first
        chunks' remaining steps waits, and so does one of a costly stream."""
        ahead = self.high_left_s(first)
        # An urgent chunk of a costly stream (a 50-step one) about to run dry would add its
        # steps to every newcomer's, making each first audio wait several times as long: it
        # takes the engine between bursts of first chunks instead, as hopeless streams do.
        urgent = [
            r
            for r in urgent
            if not self._costly(r, first) and not self._can_wait(r, ahead, running, now)
        ]
        rest = self._fill(urgent)
        # A due one that does not fit the newcomers' step takes one of its own.
        due = self._fill([r for r in due if r not in first])
        groups = [g for part in (first, due, rest) for g in self.pad_groups(part)]
        return groups, len(rest)

    def _needy(
        self, normal: Sequence[tuple[tuple[Urgency, float, int], Running]], first: list[Running]
    ) -> bool:
        """Whether a later chunk needs the burst bound: one that steps beside the first
        chunks stepping (`first`) only between their bursts (hopeless, or urgent and of a
        costly stream). An urgent one that is not costly steps beside them as soon as its
        slack no longer covers their remaining work, so it need not take the whole engine
        from a newcomer."""
        return any(
            key[0] is Urgency.HOPELESS or (key[0] is Urgency.URGENT and self._costly(r, first))
            for key, r in normal
        )

    def pad_groups(self, rows: Sequence[Running]) -> list[list[Running]]:
        """`rows` as the engine calls that step them at the least cost (CPU): split by
        length where padding shorter latents to a longer one would cost more than another
        call (its fixed part, and its text side computed again: `SPLIT_S`). A call's rows
        pay for the longest one, and on a CPU a padded frame costs what a real one does.
        Several calls are also several points at which a newcomer who arrives mid-tick can
        go first (see `step_can_yield`). Calls in the order of `rows`' first members."""
        if len(rows) < 2 or self.cost.step.fixed_s <= 0.0:
            # Until the cost model has learned a fixed part, it cannot tell what a call costs.
            return [list(rows)] if rows else []
        by_len = sorted(rows, key=lambda r: r.flight.frames)
        n = len(by_len)
        # best[i]: the cheapest split of the i shortest rows, and where its last call starts.
        best = [(0.0, 0)] + [(float("inf"), 0)] * n
        for i in range(1, n + 1):
            longest = by_len[i - 1].flight.frames
            for j in range(i):
                c = best[j][0] + self.cost.step_s(i - j, longest) + SPLIT_S
                if c < best[i][0]:
                    best[i] = (c, j)
        groups: list[list[Running]] = []
        i = n
        while i > 0:
            j = best[i][1]
            groups.append(by_len[j:i])
            i = j
        place = {id(r): k for k, r in enumerate(rows)}
        for g in groups:
            g.sort(key=lambda r: place[id(r)])
        return sorted(groups, key=lambda g: place[id(g[0])])

    def step_can_yield(
        self, group: Sequence[Running], running: Sequence[Running], now: float, ahead_s: float
    ) -> bool:
        """Whether a call of later chunks planned before a newcomer arrived mid-tick can be
        left out of this tick: each one's slack covers the newcomers' `ahead_s` of engine
        time, its own remaining work and the margin. For one tick only: the next one plans
        with the newcomer in view."""
        return all(not r.high and self._can_wait(r, ahead_s, running, now) for r in group)

    def _cheap_first(
        self, high: Sequence[Running], high_run_s: float
    ) -> tuple[list[Running], list[Running]]:
        """First chunks that step together, by least remaining work, and the costly ones due
        a step. One with over `expensive_ratio` times the least one's work and a longer
        latent waits, so a short newcomer's step is not padded to a long or slow-speech
        first chunk's length, until first chunks have had the engine for `high_burst_s`
        (then all step together, so none waits without bound). A first chunk of a costly
        stream (`_costly`: a 50-step one) waits however long first chunks have had the
        engine, and is due one step each `high_burst_s` of engine time it waited (with the
        others if it fits, else in a call of its own): otherwise, while it is in flight,
        every newcomer would step padded to it."""
        if not high:
            return [], []

        def work(r: Running) -> float:  # engine time alone, fixed costs included
            return r.flight.steps_left * self.cost.step_s(1, r.flight.frames)

        lead = min(high, key=work)
        ratio, burst = self.limits.expensive_ratio, self.limits.high_burst_s

        def expensive(r: Running) -> bool:
            # Only a longer latent pads the lead's step; chunks of about its length share
            # it whatever their step index (a batch at mixed step indices is still a batch).
            return work(r) > ratio * work(lead) and r.flight.frames > 1.5 * lead.flight.frames

        costly = [r for r in high if self._costly(r, [lead])]
        cheap = [r for r in high if r not in costly and not (high_run_s < burst and expensive(r))]
        return cheap, [r for r in costly if r.held_s >= burst]

    def _costly(self, r: Running, others: Sequence[Running]) -> bool:
        """Whether `r`'s audio costs over `expensive_ratio` times the cheapest of `others`'
        per second: its flow steps against theirs (50 against 5)."""
        least = min((o.flight.utterance.steps for o in others), default=r.flight.utterance.steps)
        return self._costlier(r.flight.utterance.steps, least)

    def _costlier(self, steps: int, than: int) -> bool:
        """Whether audio of `steps` flow steps costs over `expensive_ratio` times audio of
        `than` per second."""
        return steps > self.limits.expensive_ratio * than

    def high_left_s(self, group: Sequence[Running]) -> float:
        """Engine time until a group of first chunks, stepping together, has its first
        pieces out."""
        if not group:
            return 0.0
        frames = max(r.flight.frames for r in group)
        steps = max(r.flight.steps_left for r in group)
        return self._first_pieces_s(len(group), frames, steps)

    def _first_pieces_s(self, rows: int, frames: int, steps: int) -> float:
        """`steps` flow steps of `rows` first chunks together (the longest `frames` long),
        then each one's first piece."""
        first = self.limits.first_piece_frames
        return steps * self.cost.step_s(rows, frames) + rows * self.cost.vocode_s(first)

    def _can_wait(self, r: Running, ahead_s: float, running: Sequence[Running], now: float) -> bool:
        """Whether a later chunk still makes its deadline, with the margin, after `ahead_s`
        of other work."""
        slack = self.deadline(r.job, running) - now
        return slack - ahead_s >= self.remaining_s(r) + self.limits.urgent_margin_s

    def _fill(self, order: Sequence[Running]) -> list[Running]:
        """Up to the row and frame budgets; first one chunk per request, then the rest.
        The first chunk in order always fits, however long."""
        lim = self.limits
        chosen: list[Running] = []
        longest = 0
        for fair_pass in (True, False):
            seen = {id(r.ticket) for r in chosen}
            for r in order:
                if r in chosen or (fair_pass and id(r.ticket) in seen):
                    continue
                frames = max(longest, r.flight.frames)
                if chosen and (
                    len(chosen) >= lim.max_batch or (len(chosen) + 1) * frames > lim.max_step_frames
                ):
                    continue
                chosen.append(r)
                seen.add(id(r.ticket))
                longest = frames
        # Keep the engine's batch in a stable order: by arrival.
        return sorted(chosen, key=lambda r: r.job.seq)

    # --- vocoding --------------------------------------------------------------------------

    def _piece_frames(self, r: Running) -> int:
        lim = self.limits
        # Only a first chunk's first piece is small: it is the request's first audio.
        return lim.first_piece_frames if r.high else lim.piece_frames

    def vocode_set(
        self,
        running: Sequence[Running],
        now: float,
        high_work: bool,
        stepped: bool = False,
        ahead_s: float | None = None,
    ) -> list[tuple[Running, int]]:
        """The next piece of each chunk whose flow is done: a first chunk's first piece
        always; others too when no first chunk is in flight or queued (`high_work`), else
        only when due soon, and then short ones; with `ahead_s` (the newcomers' remaining
        engine time, CPU) a due one whose slack covers it as well waits for their first
        pieces. A tick that also ran a flow step vocodes half as much, so ticks stay short."""
        out: list[tuple[Running, int]] = []
        budget = self.limits.max_vocode_frames // (2 if stepped else 1)
        contended = high_work and not self.limits.mix
        ready = [r for r in running if r.flight.denoised and not r.flight.finished]
        ready.sort(key=lambda r: (not r.high, self.deadline(r.job, running), r.job.seq))
        for r in ready:
            want = self._piece_frames(r)
            if contended and not r.high:
                want = min(want, self.limits.contended_piece_frames)
            frames = min(want, r.flight.frames_left)
            if (
                contended
                and not r.high
                and (
                    self.piece_can_wait(r, frames, running, now)
                    or (
                        ahead_s is not None
                        and self.piece_can_yield(r, frames, running, now, ahead_s)
                    )
                )
            ):
                continue
            if out and not r.high and budget < frames:
                continue
            budget -= frames
            out.append((r, frames))
        return out

    def piece_can_wait(
        self, r: Running, frames: int, running: Sequence[Running], now: float
    ) -> bool:
        """Whether a later piece can be left for after the newcomers: decoding a finished
        chunk early costs nothing overall, only a little of a newcomer's tick, so it is
        done well before its listener needs it."""
        slack = self.deadline(r.job, running) - now
        return (
            slack
            > 3 * self.cost.vocode_s(frames + self.context_frames) + 2 * self.limits.urgent_margin_s
        )

    def newcomers_left_s(self, running: Sequence[Running], queued: Sequence[Job]) -> float:
        """Engine time until every newcomer (first chunk in flight or queued without its
        first piece) has its first piece out, if they step together from here."""
        high = [r for r in running if r.high]
        if not high and not queued:
            return 0.0
        frames = [r.flight.frames for r in high] + [_estimated_frames(j) for j in queued]
        steps = [r.flight.steps_left for r in high] + [j.utterance.steps for j in queued]
        tokens = sum(len(j.utterance.token_ids) for j in queued)
        admission = tokens * self.cost.admit_s_per_token
        return self._first_pieces_s(len(frames), max(frames), max(steps)) + admission

    def follow_set(
        self,
        firsts: Sequence[Running],
        newcomers: Sequence[Job],
        running: Sequence[Running],
        now: float,
        ahead_s: float,
    ) -> list[tuple[Running, int]]:
        """The pieces decoded right after first pieces (which play ~0.7 s): each one's
        `follow_frames`, except that one whose slack covers the other newcomers' engine
        time until their first pieces (`ahead_s`), its own decode and the margin is left
        for the next tick. Two newcomers who finish together, or one who arrived during
        the tick, then wait for a first piece, not for the other's whole chunk. It waits one
        tick at most: then `vocode_set` finds it due, unless it has far more slack."""
        out = []
        for r in firsts:
            frames = self.follow_frames(r, newcomers)
            others = any(j is not r.job for j in newcomers)
            if (
                others
                and not self.limits.mix
                and self.piece_can_yield(r, frames, running, now, ahead_s)
            ):
                continue
            out.append((r, frames))
        return out

    def piece_can_yield(
        self,
        r: Running,
        frames: int,
        running: Sequence[Running],
        now: float,
        ahead_s: float = 0.0,
    ) -> bool:
        """Whether a piece about to be decoded can be left out of this tick for newcomers:
        its slack covers `ahead_s` of their engine time, its own decode and the margin
        (the next tick, jitter). For one tick only: in the next, `vocode_set` plans it."""
        slack = self.deadline(r.job, running) - now
        need = ahead_s + self.cost.vocode_s(frames + self.context_frames)
        return slack > need + self.limits.urgent_margin_s

    def follow_frames(self, r: Running, waiting: Sequence[Job]) -> int:
        """The piece decoded right after a first piece (which plays ~0.7 s): the usual
        long piece, or a short one when a newcomer (queued or stepping) has less than
        1/`expensive_ratio` of this chunk's work (a 50-step or slow-speech chunk yields
        to a short request; between comparable first chunks the extra piece's vocoder
        context would only cost throughput). At most the rest of the chunk: priced at a
        whole piece, a short chunk's rest did not yield to a newcomer it could wait for."""
        want = self.limits.piece_frames
        if not self.limits.mix and waiting:
            mine = r.job.utterance.steps * r.flight.frames
            least = min(j.utterance.steps * _estimated_frames(j) for j in waiting)
            if mine > self.limits.expensive_ratio * least:
                want = self.limits.contended_piece_frames
        return min(want, r.flight.frames_left)


def _estimated_frames(job: Job) -> int:
    """A queued chunk's latent frames, from its tokens (its duration is not known yet)."""
    return int(FRAMES_PER_TOKEN * len(job.utterance.token_ids))


def _fair_order(items: Sequence[_E], ticket_of: Callable[[_E], Ticket], busy: set[int]) -> list[_E]:
    """Rank order, except that a request's second item waits behind every other request's
    first (requests in `busy` already have one)."""
    seen = set(busy)
    first: list[_E] = []
    rest: list[_E] = []
    for item in items:
        key = id(ticket_of(item))
        (rest if key in seen else first).append(item)
        seen.add(key)
    return first + rest


def _in_order(jobs: Sequence[Job]) -> list[Job]:
    """Each request's earliest queued chunk only: a request's chunks are admitted in order."""
    first: dict[int, Job] = {}
    for job in jobs:
        key = id(job.ticket)
        if key not in first or job.index < first[key].index:
            first[key] = job
    return list(first.values())
