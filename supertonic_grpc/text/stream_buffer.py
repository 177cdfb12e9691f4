"""Turn text that arrives in fragments (an LLM's tokens) into segments to speak.

A segment is released as soon as it ends in a complete sentence; for the first audio of a
turn, optionally as soon as its first clause is complete. Text that stalls (no new fragment
for `max_delay_s`) is released anyway, and so is text that has grown past `max_pending_chars`
without a sentence end (at its last clause or word break), so a reply without punctuation
is neither held forever nor buffered without bound. Offsets are code points into the
concatenation of every fragment, so audio can be matched to what the client sent.

Pure Python with an injectable clock: the RPC passes `time.monotonic()`, tests a fake.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from .chunker import final_break

# An early first clause shorter than this is not worth a chunk of its own ("So,").
MIN_CLAUSE_CHARS = 12
_WORD_BREAK_RE = re.compile(r"\s+")


class Trigger(enum.Enum):
    """Why a segment was released."""

    SENTENCE = "sentence"  # it ends a sentence
    CLAUSE = "clause"  # the first clause of a turn, spoken early
    STALL = "stall"  # no new text for max_delay_s
    OVERFLOW = "overflow"  # max_pending_chars without a sentence end
    FLUSH = "flush"  # the client asked
    END = "end"  # the client half-closed


@dataclass(frozen=True)
class Segment:
    """Text to speak: ``text == all_text[start:end]``, stripped of surrounding whitespace.

    ``completed_at`` is when the fragment (or flush, or stall) that released it arrived.
    """

    text: str
    start: int
    end: int
    trigger: Trigger
    completed_at: float


class StreamBuffer:
    """The pending text of one stream. Not thread-safe: one owner, the RPC's task."""

    def __init__(
        self,
        *,
        max_delay_s: float,
        early_first_clause: bool = False,
        max_pending_chars: int = 300,
    ) -> None:
        if not max_delay_s > 0:
            raise ValueError(f"max_delay_s must be > 0, got {max_delay_s!r}")
        if max_pending_chars < 1:
            raise ValueError(f"max_pending_chars must be >= 1, got {max_pending_chars!r}")
        self.max_delay_s = max_delay_s
        self.early_first_clause = early_first_clause
        self.max_pending_chars = max_pending_chars
        self.total_chars = 0  # every fragment so far, spoken or not
        self.released = 0  # segments released so far
        self._pending = ""  # text not yet released; starts at offset _start
        self._start = 0
        self._last_input: float | None = None

    @property
    def pending(self) -> str:
        """Text received but not released yet."""
        return self._pending

    def has_speech(self) -> bool:
        """Whether any pending text is more than whitespace."""
        return bool(self._pending.strip())

    def push(self, fragment: str, now: float) -> list[Segment]:
        """Append a fragment; returns the segments it completes (often none)."""
        self._pending += fragment
        self.total_chars += len(fragment)
        self._last_input = now
        out: list[Segment] = []
        cut = final_break(self._pending)
        if cut is not None:
            out += self._release(cut, Trigger.SENTENCE, now)
        elif self.early_first_clause and self.released == 0:
            cut = final_break(self._pending, clause=True)
            if cut is not None and len(self._pending[: cut[0]].strip()) >= MIN_CLAUSE_CHARS:
                out += self._release(cut, Trigger.CLAUSE, now)
        if len(self._pending) >= self.max_pending_chars:
            out += self._release(self._overflow_cut(), Trigger.OVERFLOW, now)
        return out

    def flush(self, now: float, trigger: Trigger = Trigger.FLUSH) -> list[Segment]:
        """Release everything pending (a flush, or the end of the input)."""
        return self._release((len(self._pending), len(self._pending)), trigger, now)

    def deadline(self) -> float | None:
        """When pending text counts as stalled; None when nothing is pending."""
        if self._last_input is None or not self.has_speech():
            return None
        return self._last_input + self.max_delay_s

    def poll(self, now: float) -> list[Segment]:
        """Release pending text that has stalled by ``now``."""
        due = self.deadline()
        if due is None or now < due:
            return []
        return self.flush(now, Trigger.STALL)

    def _overflow_cut(self) -> tuple[int, int]:
        cut = final_break(self._pending, clause=True)
        if cut is not None:
            return cut
        words = list(_WORD_BREAK_RE.finditer(self._pending.rstrip()))
        if words:
            return words[-1].start(), words[-1].end()
        return len(self._pending), len(self._pending)  # one long word: cut it all

    def _release(self, cut: tuple[int, int], trigger: Trigger, now: float) -> list[Segment]:
        head_end, rest_start = cut
        head = self._pending[:head_end]
        lead = len(head) - len(head.lstrip())
        text = head.strip()
        out = []
        if text:
            start = self._start + lead
            out.append(Segment(text, start, start + len(text), trigger, now))
            self.released += 1
        self._pending = self._pending[rest_start:]
        self._start += rest_start
        return out
