"""Split request text into chunks the model can synthesize one at a time.

Chunks are spans of the ORIGINAL text (offsets in code points) so progress can be reported
against what the client sent. Breaks are ranked: sentence > clause > word > hard cut; a
lower rank is used only inside a piece that does not fit at the higher one.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

_SENTENCE, _CLAUSE, _WORD = 3, 2, 1

_CLOSERS = "\"')]}»›”’」』】〉》"
_OPENERS = "\"'([{«‹“‘¿¡"
_CJK_TERMINATORS = "。！？｡"
_SENTENCE_TERMINATORS = "!?…‼⁇⁈⁉" + _CJK_TERMINATORS
_CLAUSE_TERMINATORS = ",;:-–—、，；："

# A "." after these never ends a sentence ("Mr. Smith", "e.g. Paris").
_NEVER_FINAL = frozenset(
    {
        *("mr", "mrs", "ms", "mx", "dr", "prof", "st", "mt", "sgt", "capt", "col", "gen", "lt"),
        *("rev", "hon", "fig", "figs", "vs", "cf", "viz", "approx", "e.g", "i.e", "eq", "ref"),
        *("vol", "pp", "incl", "esp", "dept", "sra", "srta", "dra", "sres", "mme", "mlle", "av"),
        *("pág", "núm"),
    }
)
# A "." after these ends a sentence only when the next word does not start in lower case
# ("at 7 a.m. The bus" vs "apples, pears etc. and more").
_MAYBE_FINAL = frozenset(
    {"etc", "inc", "ltd", "co", "corp", "jr", "sr", "bros", "llc", "al", "a.m", "p.m", "u.s", "u.k"}
)

_TOKEN_RE = re.compile(r"\S+")
# CJK scripts do not put spaces after a sentence, so their terminators break without one.
_CJK_BREAK_RE = re.compile(f"[{_CJK_TERMINATORS}]+[{re.escape(_CLOSERS)}]*(?=\\S)")


@dataclass(frozen=True)
class TextChunk:
    """One chunk: ``text == original[start:end]``, offsets in code points of the original."""

    text: str
    start: int
    end: int


def _is_sentence_end(word: str, next_word: str) -> bool:
    """Whether ``word`` (closing quotes/brackets already removed) ends a sentence."""
    last = word[-1]
    if last in _SENTENCE_TERMINATORS:
        return True
    if last != ".":
        return False
    if word.endswith(".."):  # an ellipsis
        return True
    stem = word[:-1].lstrip(_OPENERS)
    if not stem:
        return True
    low = stem.lower()
    following = next_word.lstrip(_OPENERS)[:1] or next_word[:1]
    if low in _NEVER_FINAL:
        return False
    if low == "no" and following.isdigit():  # "No. 5"
        return False
    if len(stem) == 1 and stem.isalpha() and stem.isupper():  # an initial: "J. K. Rowling"
        return False
    dotted = "." in stem and all(part.isalpha() for part in stem.split("."))
    if low in _MAYBE_FINAL or dotted:
        return not following.islower()
    return True


def _closer(size: int, grown: int, target: float, limit: int) -> bool:
    """Whether a part of ``size`` should take the next piece (``grown`` with it): while it
    fits ``limit`` and ends nearer ``target`` with it than without."""
    return grown <= limit and (grown <= target or grown - target < target - size)


def _gap_level(prev: str, gap: str, nxt: str) -> int:
    if gap.count("\n") >= 2 or "\u2029" in gap:  # blank line: a paragraph ends
        return _SENTENCE
    core = prev.rstrip(_CLOSERS)
    if core and _is_sentence_end(core, nxt):
        return _SENTENCE
    if (core and core[-1] in _CLAUSE_TERMINATORS) or (len(nxt) > 1 and nxt[0] in "–—"):
        return _CLAUSE
    return _WORD


class _Segmenter:
    """Ranked break points of one text and the span arithmetic over them."""

    def __init__(self, text: str) -> None:
        self.text = text
        tokens = [m.span() for m in _TOKEN_RE.finditer(text)]
        self.bounds = (tokens[0][0], tokens[-1][1]) if tokens else (0, 0)
        # A break is (gap_start, gap_end, level): a chunk may end at gap_start and the next
        # one then starts at gap_end; the gap is whitespace, or empty after a CJK terminator.
        breaks = [
            (
                a_end,
                b_start,
                _gap_level(text[a_start:a_end], text[a_end:b_start], text[b_start:b_end]),
            )
            for (a_start, a_end), (b_start, b_end) in itertools.pairwise(tokens)
        ]
        breaks += [(m.end(), m.end(), _SENTENCE) for m in _CJK_BREAK_RE.finditer(text)]
        breaks.sort()
        self.breaks = breaks
        self.starts = [b[0] for b in breaks]

    def pieces(self, start: int, end: int, level: int) -> Iterator[tuple[int, int]]:
        """Sub-spans of ``[start, end)`` separated by breaks of at least ``level``."""
        lo = bisect.bisect_right(self.starts, start)
        hi = bisect.bisect_left(self.starts, end)
        piece_start = start
        for gap_start, gap_end, gap_level in self.breaks[lo:hi]:
            if gap_level >= level and gap_end < end:
                yield piece_start, gap_start
                piece_start = gap_end
        yield piece_start, end

    def window_end(self, start: int, limit: int, end: int) -> int:
        """The first sentence break at or after ``start + limit`` (else ``end``): the first
        chunk packed from ``start`` never depends on text beyond it, so splitting only up
        to there keeps chunk-by-chunk splitting linear in the text length."""
        i = bisect.bisect_left(self.starts, start + limit)
        for gap_start, _, gap_level in self.breaks[i:]:
            if gap_level >= _SENTENCE:
                return min(gap_start, end)
        return end

    def hard_cut(self, start: int, end: int, limit: int) -> list[tuple[int, int]]:
        spans = []
        while end - start > limit:
            cut = start + limit
            # Keep a combining accent with its base letter when the cut can move back.
            while cut > start + 1 and unicodedata.combining(self.text[cut]):
                cut -= 1
            spans.append((start, cut))
            start = cut
        spans.append((start, end))
        return spans

    def split(self, start: int, end: int, limit: int, level: int) -> list[tuple[int, int]]:
        """Packing of the pieces at ``level`` (greedy for sentences and clauses, about equal
        parts for words); pieces too long go one level down."""
        if level == 0:
            return self.hard_cut(start, end, limit)
        # Words are cut into about equal parts, never greedily: a greedy cut can leave one
        # or two words ("... from the | west.") to be spoken alone with a sentence's tone.
        target = limit if level > _WORD else (end - start) / math.ceil((end - start) / limit)
        out: list[tuple[int, int]] = []
        current: tuple[int, int] | None = None
        for piece_start, piece_end in self.pieces(start, end, level):
            if piece_end - piece_start > limit:
                if current:
                    out.append(current)
                    current = None
                out.extend(self.split(piece_start, piece_end, limit, level - 1))
            elif current and _closer(
                current[1] - current[0], piece_end - current[0], target, limit
            ):
                current = (current[0], piece_end)
            else:
                if current:
                    out.append(current)
                current = (piece_start, piece_end)
        if current:
            out.append(current)
        return out

    def packed(self, start: int, end: int, limit: int) -> tuple[int, int]:
        """The chunk packed from ``start``: whole sentences when they fill it reasonably; a
        short sentence followed by a long one is packed with the long one's first clauses
        instead, because a tiny chunk plays too briefly to hide the next chunk's synthesis.
        (Not words: a cut mid-clause would end in a falling, sentence-final tone.)"""
        for level in (_SENTENCE, _CLAUSE):
            span = self.split(start, end, limit, level)[0]
            if (span[1] - span[0]) * 3 >= limit:
                break
        return span

    def whole(self, start: int, end: int, limit: int, stretch: int) -> tuple[int, int] | None:
        """The first sentence from ``start``, else its first clause, when it is longer than
        ``limit`` but not than ``stretch``: a chunk that may overrun its limit a little then
        keeps it whole rather than cut it between words. None when it fits the limit (it
        packs as usual) or is too long."""
        for level in (_SENTENCE, _CLAUSE):
            piece = next(self.pieces(start, end, level))
            size = piece[1] - piece[0]
            if size <= limit:
                return None
            if size <= stretch:
                return piece
        return None


def stretch_limit(limit: int, max_chars: int) -> int:
    """How long a later chunk of ``limit`` may grow to keep a sentence or clause whole."""
    return min(max_chars, limit + limit // 4)


def split_text(
    text: str, max_chars: int = 300, first_max_chars: int = 100, growth: float = 2.0
) -> list[TextChunk]:
    """Split ``text`` into chunks of at most ``max_chars`` code points, in order.

    The first chunk is at most ``first_max_chars`` (clamped to ``max_chars``) so audio can
    start quickly. Each later chunk's limit is about ``growth`` times the previous chunk's
    length, up to ``max_chars``: a chunk is synthesized while the previous one plays, so a
    long chunk right after a short one would leave the listener in silence; from the third
    chunk on, one may run a quarter over that limit (never over ``max_chars``) to keep a
    sentence, else a clause, whole. Chunks pack whole sentences greedily, break long
    sentences at clauses, then words (into about equal parts), are stripped, never empty,
    and only split a word when that word alone exceeds the limit. Whitespace-only text
    gives ``[]``.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, not {type(text).__name__}")
    for name, value in (("max_chars", max_chars), ("first_max_chars", first_max_chars)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not growth >= 1.0:
        raise ValueError(f"growth must be >= 1.0, got {growth!r}")
    first_limit = min(first_max_chars, max_chars)

    seg = _Segmenter(text)
    start, end = seg.bounds
    if start == end:
        return []
    spans: list[tuple[int, int]] = []
    rest, limit = start, first_limit
    while rest < end:
        window = seg.window_end(rest, limit, end)
        # From the third chunk on, the limit only paces synthesis behind a long chunk that
        # plays meanwhile, so it may stretch by a quarter to keep a sentence or clause whole.
        # Not the first chunk's (the time to first audio), nor the second's: it must be ready
        # while a first chunk of maybe one second plays.
        stretch = stretch_limit(limit, max_chars)
        whole = seg.whole(rest, window, limit, stretch) if len(spans) >= 2 else None
        span = whole or seg.packed(rest, window, limit)
        spans.append(span)
        # The next chunk is synthesized while this one plays: its size follows this one's.
        size = span[1] - span[0]
        limit = min(max_chars, max(first_limit, int(size * growth) + first_limit // 2))
        rest = span[1]
        while rest < end and text[rest].isspace():
            rest += 1
    return [TextChunk(text[s:e], s, e) for s, e in spans]


def final_break(text: str, *, clause: bool = False) -> tuple[int, int] | None:
    """The last sentence break in ``text`` that no text appended later can undo, as
    ``(end of the text before it, start of the text after it)``; None when there is none.
    With ``clause``, clause breaks count too.

    For text that arrives in pieces (an LLM's tokens): a break between two words is settled
    once the next word has begun; one after the last word and trailing whitespace only when
    that word ends a sentence whatever follows ("etc." does not: "etc. and more").
    """
    level = _CLAUSE if clause else _SENTENCE
    best: tuple[int, int] | None = None
    for gap_start, gap_end, gap_level in _Segmenter(text).breaks:
        if gap_level >= level:
            best = (gap_start, gap_end)
    stripped = text.rstrip()
    tail = text[len(stripped) :]
    if not stripped or not tail:
        return best
    core = stripped.rsplit(None, 1)[-1].rstrip(_CLOSERS)
    ends = tail.count("\n") >= 2 or (
        bool(core) and all(_is_sentence_end(core, nxt) for nxt in ("a", "A", "1"))
    )
    if ends or (clause and core and core[-1] in _CLAUSE_TERMINATORS):
        best = (len(stripped), len(text))
    return best
