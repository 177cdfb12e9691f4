"""Estimated word timings: properties over arbitrary text and durations."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supertonic_grpc.text.timings import word_timings

texts = st.text(
    alphabet=st.sampled_from(list("abcXYZ é,.;!?'\"-— \n0123")), min_size=0, max_size=80
)
# allow_subnormal=False: torch may set flush-to-zero for the whole process.
durations = st.floats(min_value=0.0, max_value=60.0, allow_nan=False, allow_subnormal=False)
starts = st.floats(min_value=0.0, max_value=1000.0, allow_nan=False, allow_subnormal=False)


@given(texts, durations, starts, st.integers(min_value=0, max_value=10_000))
def test_timings_are_monotonic_inside_the_chunk_and_cover_every_word(
    text: str, duration: float, start: float, offset: int
) -> None:
    words = word_timings(text, duration, offset=offset, start_s=start)
    assert len(words) == len(text.split())  # one per whitespace-separated token
    prev_end = start
    for w, token in zip(words, text.split(), strict=True):
        assert start <= w.start_s <= w.end_s <= start + duration
        assert w.start_s >= prev_end
        prev_end = w.end_s
        assert text[w.start - offset : w.end - offset] == w.word
        assert w.word in token


@given(texts, durations)
def test_word_offsets_are_in_order_and_disjoint(text: str, duration: float) -> None:
    words = word_timings(text, duration)
    for a, b in itertools.pairwise(words):
        assert a.end <= b.start


def test_punctuation_is_stripped_from_words_and_takes_time() -> None:
    words = word_timings("Hello, world.", 2.0, offset=10, start_s=5.0)
    assert [(w.word, w.start, w.end) for w in words] == [("Hello", 10, 15), ("world", 17, 22)]
    # The comma and space between the words is a pause: a gap between their spans.
    assert words[1].start_s - words[0].end_s > 0.1
    assert words[0].start_s == 5.0


def test_longer_words_take_longer() -> None:
    short, long = word_timings("a extraordinarily", 3.0)
    assert long.end_s - long.start_s > 5 * (short.end_s - short.start_s)


def test_a_token_of_only_punctuation_is_kept_whole() -> None:
    (word,) = word_timings("...", 1.0)
    assert word.word == "..."


def test_empty_text_and_zero_duration() -> None:
    assert word_timings("", 1.0) == []
    assert all(w.start_s == w.end_s == 0.0 for w in word_timings("two words", 0.0))


def test_negative_duration_is_refused() -> None:
    with pytest.raises(ValueError, match="duration_s"):
        word_timings("x", -1.0)


def test_words_match_the_whitespace_tokens() -> None:
    text = "Le café, c'est « bon » !"
    assert len(word_timings(text, 1.0)) == len(re.findall(r"\S+", text))
