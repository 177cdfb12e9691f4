"""Chunker invariants over random texts, plus the awkward cases by name."""

from __future__ import annotations

import itertools
import random
import re

import pytest

from supertonic_grpc.text import TextChunk, split_text
from supertonic_grpc.text.chunker import stretch_limit

WORDS = [
    "the", "a", "sound", "of", "rain", "Mr.", "Dr.", "e.g.", "i.e.", "3.14", "1,000", "U.S.",
    "well-known", "café", "cafe\u0301", "niño", "L'été", "안녕하세요", "반갑습니다", "\"quoted\"",
    "(aside)", "etc.", "don't", "x", "supercalifragilistic",
]  # fmt: skip
ENDINGS = ["", "", "", "", ",", ";", ":", ".", "!", "?", "...", "…", '."', "?)"]
SPACES = [" ", " ", " ", " ", "  ", "\n", "\n\n", "\t", "\u00a0"]


def random_text(rng: random.Random) -> str:
    parts: list[str] = [rng.choice(["", " ", "\n  "])]
    for _ in range(rng.randint(0, 120)):
        if rng.random() < 0.02:
            word = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(30, 400)))
        elif rng.random() < 0.05:
            word = rng.choice(["-", "—", "–"])
        else:
            word = rng.choice(WORDS)
        parts += [word + rng.choice(ENDINGS), rng.choice(SPACES)]
    if rng.random() < 0.5:
        parts.pop()
    return "".join(parts)


def limits(
    chunks: list[TextChunk], max_chars: int, first_max_chars: int, growth: float = 2.0
) -> list[int]:
    """Each chunk's limit: the first limit, then about growth x the previous chunk's size."""
    first = min(first_max_chars, max_chars)
    out = [first]
    for prev in chunks[:-1]:
        out.append(min(max_chars, max(first, int(len(prev.text) * growth) + first // 2)))
    return out


def ends_a_clause(text: str, chunk: TextChunk) -> bool:
    """Whether the chunk ends where a sentence or clause does: at the end of the text, a
    paragraph break, before a dash, or after a terminator (closing quotes aside)."""
    after = text[chunk.end :]
    gap = after[: len(after) - len(after.lstrip())]
    if not after.strip() or "\n\n" in gap or after.lstrip()[:1] in "–—":
        return True
    return bool(gap) and chunk.text.rstrip("\"')]}»›”’")[-1:] in ".!?…,;:-–—"


def assert_invariants(text: str, chunks: list[TextChunk], max_chars: int, first: int) -> None:
    if not text.strip():
        assert chunks == []
        return
    assert chunks, "non-blank text must give at least one chunk"
    assert text[: chunks[0].start].strip() == ""
    assert text[chunks[-1].end :].strip() == ""
    for i, (chunk, limit) in enumerate(zip(chunks, limits(chunks, max_chars, first), strict=True)):
        assert chunk.text == text[chunk.start : chunk.end]
        assert chunk.text and chunk.text == chunk.text.strip()
        # A later chunk may stretch a little to keep a sentence or clause whole.
        assert len(chunk.text) <= (stretch_limit(limit, max_chars) if i else limit)
        if len(chunk.text) > limit:
            assert ends_a_clause(text, chunk), f"a stretched chunk cut a clause: {chunk.text!r}"
    for prev, nxt in itertools.pairwise(chunks):
        gap = text[prev.end : nxt.start]
        assert prev.end <= nxt.start and gap.strip() == "", f"lost text {gap!r}"
    rebuilt = text[: chunks[0].start]
    for prev, nxt in zip(chunks, [*chunks[1:], None], strict=True):
        rebuilt += prev.text + text[prev.end : nxt.start if nxt else len(text)]
    assert rebuilt == text


def assert_words_kept_whole(text: str, chunks: list[TextChunk], max_chars: int, first: int) -> None:
    """A split with no whitespace gap may only fall inside a word longer than the limit."""
    words = [m.span() for m in re.finditer(r"\S+", text)]
    bounds = limits(chunks, max_chars, first)
    for i, (prev, nxt) in enumerate(itertools.pairwise(chunks)):
        if prev.end != nxt.start:
            continue
        start, end = next((s, e) for s, e in words if s < prev.end < e)
        assert end - start > bounds[i], f"split inside {text[start:end]!r}"


@pytest.mark.parametrize("seed", range(300))
def test_random_texts_keep_every_invariant(seed: int) -> None:
    rng = random.Random(seed)
    text = random_text(rng)
    max_chars = rng.choice([1, 5, 20, 50, 100, 300, rng.randint(1, 400)])
    first = rng.choice([1, 10, 40, 100, 1000, rng.randint(1, 400)])
    chunks = split_text(text, max_chars=max_chars, first_max_chars=first)
    assert_invariants(text, chunks, max_chars, first)
    assert_words_kept_whole(text, chunks, max_chars, first)


@pytest.mark.parametrize("seed", range(50))
def test_short_sentences_are_packed_greedily(seed: int) -> None:
    rng = random.Random(1000 + seed)
    sentences = [
        " ".join(
            rng.choice(["alpha", "beta", "gamma", "delta", "x"]) for _ in range(rng.randint(1, 8))
        )
        + "."
        for _ in range(rng.randint(2, 60))
    ]
    text = " ".join(sentences)
    max_chars = rng.randint(100, 300)
    chunks = split_text(text, max_chars=max_chars, first_max_chars=50)
    assert_invariants(text, chunks, max_chars, 50)
    assert all(c.text.endswith(".") for c in chunks), "chunks end at sentence boundaries"
    # Adding the next chunk's first sentence to any chunk would overflow that chunk's limit.
    bounds = limits(chunks, max_chars, 50)
    for i, (prev, nxt) in enumerate(itertools.pairwise(chunks)):
        first_sentence_end = nxt.start + nxt.text.index(".") + 1
        assert first_sentence_end - prev.start > bounds[i]


def test_short_text_is_one_chunk() -> None:
    assert split_text("  Hello. World!  ") == [TextChunk("Hello. World!", 2, 15)]


def test_blank_text_gives_no_chunks() -> None:
    assert split_text("") == []
    assert split_text(" \n\t ") == []


def test_first_chunk_packs_whole_sentences_up_to_its_limit() -> None:
    text = "Hello there. " + "This is a longer sentence that keeps going for a while. " * 5
    chunks = split_text(text, max_chars=300, first_max_chars=100)
    assert chunks[0].text == "Hello there. This is a longer sentence that keeps going for a while."
    assert len(chunks[1].text) <= 200


def test_chunks_grow_geometrically_so_each_is_ready_before_the_previous_ends() -> None:
    text = "Hi. " + " ".join(f"Sentence {i} keeps the story going." for i in range(60))
    chunks = split_text(text, max_chars=300, first_max_chars=100)
    sizes = [len(c.text) for c in chunks]
    assert sizes[0] <= 100
    for size, limit in zip(sizes, limits(chunks, 300, 100), strict=True):
        assert size <= limit
    assert max(sizes) > 200  # it does reach the full size for long texts
    assert split_text(text, 300, 100, growth=1.0) != chunks
    with pytest.raises(ValueError, match="growth"):
        split_text(text, 300, 100, growth=0.5)


def test_first_chunk_falls_back_to_clause_then_words() -> None:
    clause = "When the long winter finally ended, " + "the town came back to life " * 6 + "slowly."
    assert split_text(clause, 300, 60)[0].text == "When the long winter finally ended,"
    plain = "word " * 100
    first = split_text(plain, 300, 42)[0]
    assert first.text == " ".join(["word"] * 8) and len(first.text) == 39


def test_first_chunk_is_smaller_than_the_rest() -> None:
    text = " ".join(f"Sentence number {i} is here." for i in range(40))
    chunks = split_text(text, max_chars=200, first_max_chars=40)
    assert len(chunks[0].text) <= 40
    assert all(len(c.text) <= 200 for c in chunks)
    assert max(len(c.text) for c in chunks[1:]) > 150


def test_first_max_chars_is_clamped_to_max_chars() -> None:
    text = "one two three four five six seven eight nine ten"
    assert split_text(text, max_chars=10, first_max_chars=500)[0].text == "one two"


def test_abbreviations_do_not_end_sentences() -> None:
    text = "Mr. Smith met Dr. Jones, e.g. at home. J. K. Rowling wrote it. Then they left."
    chunks = split_text(text, max_chars=40, first_max_chars=40)
    assert [c.text for c in chunks] == [
        "Mr. Smith met Dr. Jones, e.g. at home.",
        "J. K. Rowling wrote it. Then they left.",
    ]


def test_decimal_numbers_and_thousands_stay_whole() -> None:
    text = "Pi is about 3.14159 and e is 2.71828. Some 1,000,000 people agreed."
    chunks = split_text(text, max_chars=40, first_max_chars=40)
    assert [c.text for c in chunks] == [
        "Pi is about 3.14159 and e is 2.71828.",
        "Some 1,000,000 people agreed.",
    ]


def test_etc_ends_a_sentence_only_before_a_capital() -> None:
    text = "Bring apples, pears etc. and more fruit. We had fun etc. Then we left home."
    chunks = split_text(text, max_chars=20, first_max_chars=20)
    assert [c.text for c in chunks] == [
        "Bring apples,",
        "pears etc. and",  # not "pears etc.": a lower-case word follows
        "more fruit.",  # cut into about equal parts, not "pears etc. and more" + "fruit."
        "We had fun etc.",
        "Then we left home.",
    ]


def test_long_sentence_splits_at_clauses() -> None:
    text = "First part of it, second part of it; third part: and a final part - done."
    chunks = split_text(text, max_chars=40, first_max_chars=40)
    assert [c.text for c in chunks] == [
        "First part of it, second part of it;",
        "third part: and a final part - done.",
    ]


def test_a_2000_char_word_is_hard_cut() -> None:
    word = "".join(chr(ord("a") + i % 26) for i in range(2000))
    text = f"Start here. {word} end."
    chunks = split_text(text, max_chars=300, first_max_chars=100)
    assert_invariants(text, chunks, 300, 100)
    assert chunks[0].text == "Start here."
    word_end = text.index(" end.")
    bounds = limits(chunks, 300, 100)
    cut = [(c, b) for c, b in zip(chunks[1:], bounds[1:], strict=True) if c.end <= word_end]
    assert cut and all(len(c.text) == b for c, b in cut)  # hard cuts fill their limit
    assert chunks[-1].text.endswith("end.")


def test_hard_cut_keeps_combining_marks_with_their_letter() -> None:
    word = "e\u0301" * 50  # 100 code points
    chunks = split_text(word, max_chars=9, first_max_chars=9)
    assert_invariants(word, chunks, 9, 9)
    assert all(not c.text.startswith("\u0301") for c in chunks)


def test_korean_text() -> None:
    sentence = "오늘은 날씨가 정말 좋네요. "
    text = sentence * 20
    chunks = split_text(text, max_chars=60, first_max_chars=20)
    assert_invariants(text, chunks, 60, 20)
    assert chunks[0].text == sentence.strip()
    assert all(c.text.endswith("요.") for c in chunks)


def test_cjk_terminators_break_without_spaces() -> None:
    text = "今日は晴れです。明日は雨でしょう！本当ですか？" * 3
    chunks = split_text(text, max_chars=20, first_max_chars=10)
    assert_invariants(text, chunks, 20, 10)
    assert chunks[0].text == "今日は晴れです。"
    assert all(c.text[-1] in "。！？" for c in chunks)


def test_paragraph_break_is_a_sentence_boundary() -> None:
    text = "Chapter One\n\nIt was a dark night and the wind was cold"
    chunks = split_text(text, max_chars=100, first_max_chars=30)
    assert chunks[0] == TextChunk("Chapter One", 0, 11)


def test_offsets_map_back_to_original() -> None:
    text = "\n  “Quoted,” she said.  Then — after a pause — she left!\t More text follows here. "
    chunks = split_text(text, max_chars=30, first_max_chars=15)
    assert_invariants(text, chunks, 30, 15)
    for chunk in chunks:
        assert text[chunk.start : chunk.end] == chunk.text
    assert chunks[0].start == 3


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_chars": 0}, ValueError),
        ({"first_max_chars": 0}, ValueError),
        ({"max_chars": -5}, ValueError),
        ({"max_chars": 2.5}, ValueError),
        ({"max_chars": True}, ValueError),
    ],
)
def test_argument_validation(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        split_text("hello", **kwargs)  # type: ignore[arg-type]


def test_non_string_text_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        split_text(b"bytes")  # type: ignore[arg-type]


def test_a_235k_character_text_keeps_every_invariant() -> None:
    text = "A reasonably ordinary sentence, with a clause. " * 5000  # ~235k chars
    chunks = split_text(text)
    assert_invariants(text, chunks, 300, 100)


def test_a_sentence_cut_between_words_is_cut_into_about_equal_parts() -> None:
    # Greedy packing would leave "three." alone after a 60-character first chunk.
    text = "Your appointment with the dentist is confirmed for Thursday at three. See you."
    chunks = split_text(text, max_chars=300, first_max_chars=60)
    assert [c.text for c in chunks] == [
        "Your appointment with the dentist",
        "is confirmed for Thursday at three. See you.",
    ]


def test_the_second_chunk_never_stretches_past_its_limit() -> None:
    # It must be ready while "Good morning!" (about a second) plays: the 63-character
    # sentence is cut into about equal parts, not into "... from the" and "west."
    text = (
        "Good morning! It is twelve degrees outside with a light breeze from the west. "
        "Expect scattered showers after lunch."
    )
    chunks = split_text(text, max_chars=300, first_max_chars=60)
    assert [c.text for c in chunks] == [
        "Good morning!",
        "It is twelve degrees outside with",
        "a light breeze from the west. Expect scattered showers after lunch.",
    ]


def test_a_third_chunk_stretches_to_keep_a_sentence_whole() -> None:
    second = "The second sentence is here, and it is of a middling size."  # 58 characters
    third = "The third one goes on " + "and on " * 16 + "until it ends."  # 148 characters
    text = f"Hello there, my good friend. {second} {third} Bye."
    chunks = split_text(text, max_chars=300, first_max_chars=60)
    assert limits(chunks, 300, 60)[2] == 2 * len(second) + 30 == 146
    assert [c.text for c in chunks] == ["Hello there, my good friend.", second, third, "Bye."]
    # Never past max_chars: there the sentence is cut, into about equal parts.
    capped = split_text(text, max_chars=146, first_max_chars=60)
    assert len(capped[2].text) == 74  # half of 148
    assert capped[3].text.endswith("until it ends. Bye.")
