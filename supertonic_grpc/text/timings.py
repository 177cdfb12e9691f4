"""Estimated word timings: a chunk's audio duration spread over its characters.

Supertonic-2 has no aligner, so the times are estimates: each character gets a weight (a
letter 1, a space less, punctuation more, since the model pauses there) and a word's start
and end are where its characters fall on the chunk's timeline. Good for captions and for
cutting an agent's context at an interruption, not for phonetic alignment.

Guarantees (tested as properties): every word of the text is reported, in order; the times
are monotonic (each word's start <= end <= the next word's start) and lie inside the chunk.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from dataclasses import dataclass

_WORD_RE = re.compile(r"\S+")
_SPACE_WEIGHT = 0.6
_CLAUSE_WEIGHT = 2.5  # , ; : and dashes: a short pause
_SENTENCE_WEIGHT = 4.0  # . ! ? and the like: a longer one
_SYMBOL_WEIGHT = 0.3  # quotes, brackets: not spoken
_CLAUSE_MARKS = frozenset(",;:-–—、，；：")
_SENTENCE_MARKS = frozenset(".!?…。！？")


@dataclass(frozen=True)
class WordSpan:
    """One word: ``text[start:end]`` in the text's offsets, and its estimated time span."""

    word: str
    start: int
    end: int
    start_s: float
    end_s: float


def _weight(ch: str) -> float:
    if ch.isspace():
        return _SPACE_WEIGHT
    if ch in _SENTENCE_MARKS:
        return _SENTENCE_WEIGHT
    if ch in _CLAUSE_MARKS:
        return _CLAUSE_WEIGHT
    if ch.isalnum() or unicodedata.combining(ch):
        return 1.0
    return _SYMBOL_WEIGHT


def _core(token: str) -> tuple[int, int]:
    """The span of a token without its leading and trailing punctuation, if any is left."""
    lo, hi = 0, len(token)
    while lo < hi and not token[lo].isalnum():
        lo += 1
    while hi > lo and not (token[hi - 1].isalnum() or unicodedata.combining(token[hi - 1])):
        hi -= 1
    return (lo, hi) if lo < hi else (0, len(token))


def word_timings(
    text: str, duration_s: float, *, offset: int = 0, start_s: float = 0.0
) -> list[WordSpan]:
    """Every word of ``text`` (a chunk spoken in ``duration_s`` seconds from ``start_s``).

    Words are whitespace-separated tokens less their surrounding punctuation ("Hello," is
    "Hello"; a token of only punctuation is kept whole). ``offset`` is added to every
    character position, so spans can be reported in the request's (or stream's) offsets.
    """
    if not duration_s >= 0:
        raise ValueError(f"duration_s must be >= 0, got {duration_s!r}")
    cumulative = [0.0, *itertools.accumulate(_weight(ch) for ch in text)]
    total = cumulative[-1]
    scale = duration_s / total if total > 0 else 0.0
    end_s = start_s + duration_s
    words: list[WordSpan] = []
    for m in _WORD_RE.finditer(text):
        lo, hi = _core(m.group())
        a, b = m.start() + lo, m.start() + hi
        # min() guards against a float sum landing a hair past the chunk's end.
        t0 = min(end_s, start_s + cumulative[a] * scale)
        t1 = min(end_s, start_s + cumulative[b] * scale)
        words.append(WordSpan(text[a:b], a + offset, b + offset, t0, t1))
    return words
