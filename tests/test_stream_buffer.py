"""The StreamingSynthesize text buffer, driven token by token with a fake clock."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supertonic_grpc.text import final_break
from supertonic_grpc.text.stream_buffer import StreamBuffer, Trigger


def feed(buf: StreamBuffer, text: str, step: int = 3, t0: float = 0.0) -> list:
    """Push `text` in fragments of `step` characters, 0.03 s apart; return all segments."""
    out = []
    for i in range(0, len(text), step):
        out += buf.push(text[i : i + step], t0 + 0.03 * i / step)
    return out


def test_a_sentence_is_released_once_the_next_word_begins() -> None:
    buf = StreamBuffer(max_delay_s=1.0)
    assert buf.push("Hello there", 0.0) == []
    assert buf.push(".", 0.1) == []  # "3." may still become "3.5"
    (seg,) = buf.push(" Ho", 0.2)
    assert (seg.text, seg.start, seg.end, seg.trigger) == ("Hello there.", 0, 12, Trigger.SENTENCE)
    assert seg.completed_at == 0.2
    assert buf.pending == "Ho"


def test_trailing_space_after_a_certain_sentence_end_releases_it() -> None:
    buf = StreamBuffer(max_delay_s=1.0)
    (seg,) = buf.push("Is it? ", 0.0)
    assert seg.text == "Is it?"


def test_abbreviations_do_not_end_a_sentence() -> None:
    buf = StreamBuffer(max_delay_s=1.0)
    assert feed(buf, "Dr. Smith met Mrs. Jones at 7 a.m. ") == []
    (seg,) = buf.push("Then", 1.0)
    assert seg.text == "Dr. Smith met Mrs. Jones at 7 a.m."


def test_offsets_index_the_concatenated_input() -> None:
    text = "  First one.  Second, longer one! Third"
    buf = StreamBuffer(max_delay_s=1.0)
    segs = feed(buf, text, step=1) + buf.flush(9.0, Trigger.END)
    assert [s.text for s in segs] == ["First one.", "Second, longer one!", "Third"]
    assert all(text[s.start : s.end] == s.text for s in segs)
    assert segs[-1].trigger is Trigger.END
    assert buf.total_chars == len(text)


def test_early_first_clause_only_for_the_first_segment() -> None:
    buf = StreamBuffer(max_delay_s=1.0, early_first_clause=True)
    (first,) = buf.push("Well, to be honest, I", 0.0)
    assert (first.text, first.trigger) == ("Well, to be honest,", Trigger.CLAUSE)
    assert buf.push(" think so, yes", 0.1) == []  # later clauses wait for the sentence
    (second,) = buf.push(". Ok", 0.2)
    assert (second.text, second.trigger) == ("I think so, yes.", Trigger.SENTENCE)


def test_a_short_first_clause_waits() -> None:
    buf = StreamBuffer(max_delay_s=1.0, early_first_clause=True)
    assert buf.push("So, I", 0.0) == []


def test_without_early_first_clause_clauses_wait() -> None:
    buf = StreamBuffer(max_delay_s=1.0)
    assert buf.push("Well, to be honest, I", 0.0) == []


def test_stalled_text_is_released_after_the_delay_since_the_last_fragment() -> None:
    buf = StreamBuffer(max_delay_s=0.5)
    buf.push("Let me think", 10.0)
    assert buf.deadline() == 10.5
    assert buf.poll(10.49) == []
    buf.push(" about", 10.4)  # new text restarts the wait
    assert buf.poll(10.6) == []
    (seg,) = buf.poll(10.9)
    assert (seg.text, seg.trigger, seg.completed_at) == ("Let me think about", Trigger.STALL, 10.9)
    assert buf.deadline() is None and buf.poll(99.0) == []


def test_whitespace_is_never_a_segment_nor_a_stall() -> None:
    buf = StreamBuffer(max_delay_s=0.5)
    assert buf.push("   \n ", 0.0) == []
    assert buf.deadline() is None
    assert buf.flush(1.0) == []


def test_flush_releases_mid_sentence() -> None:
    buf = StreamBuffer(max_delay_s=5.0)
    buf.push("Half a sent", 0.0)
    (seg,) = buf.flush(0.1)
    assert (seg.text, seg.trigger) == ("Half a sent", Trigger.FLUSH)
    assert buf.pending == ""
    (nxt,) = buf.push("ence. Next", 0.2)
    assert (nxt.text, nxt.start) == ("ence.", 11)


def test_long_text_without_sentence_end_is_released_at_a_word_break() -> None:
    buf = StreamBuffer(max_delay_s=5.0, max_pending_chars=40)
    segs = feed(buf, "word " * 30)
    assert segs and all(s.trigger is Trigger.OVERFLOW for s in segs)
    assert all(len(s.text) <= 40 and not s.text.endswith("wor") for s in segs)
    assert len(buf.pending) < 40


def test_one_huge_word_is_cut_rather_than_held() -> None:
    buf = StreamBuffer(max_delay_s=5.0, max_pending_chars=10)
    (seg,) = buf.push("x" * 25, 0.0)
    assert seg.text == "x" * 25 and buf.pending == ""


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_delay_s"):
        StreamBuffer(max_delay_s=0)
    with pytest.raises(ValueError, match="max_pending_chars"):
        StreamBuffer(max_delay_s=1, max_pending_chars=0)


@given(
    st.lists(st.text(alphabet=list("ab .,!?\n'"), max_size=8), max_size=40),
    st.booleans(),
)
def test_every_character_is_released_once_in_order(fragments: list[str], early: bool) -> None:
    whole = "".join(fragments)
    buf = StreamBuffer(max_delay_s=1.0, early_first_clause=early, max_pending_chars=30)
    segs = []
    for i, f in enumerate(fragments):
        segs += buf.push(f, float(i))
    segs += buf.flush(99.0, Trigger.END)
    assert all(whole[s.start : s.end] == s.text and s.text == s.text.strip() for s in segs)
    assert all(a.end <= b.start for a, b in itertools.pairwise(segs))
    # Together the segments hold every non-space character exactly once.
    assert "".join(s.text for s in segs).replace(" ", "").replace("\n", "") == whole.replace(
        " ", ""
    ).replace("\n", "")


def test_final_break_ignores_breaks_that_later_text_can_undo() -> None:
    assert final_break("Hello world.") is None
    assert final_break("Hello world. T") == (12, 13)
    assert final_break("Apples etc. ") is None
    assert final_break("Well, ", clause=True) == (5, 6)
