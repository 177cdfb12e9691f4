"""Normalization follows the published Supertonic-2 preprocessing, step by step."""

from __future__ import annotations

import unicodedata

import pytest

from supertonic_grpc.text import (
    LANGUAGES,
    EmptyTextError,
    TextError,
    UnsupportedLanguageError,
    normalize_text,
    preprocess,
)

NORMALIZE_CASES = [
    # curly quotes become straight ones
    ("He said \u201chello\u201d.", 'He said "hello".'),
    ("It\u2019s \u2018fine\u2019.", "It's'fine'."),  # the published recipe drops the space before '
    ("\u201eGuten Tag\u201c", '"Guten Tag"'),
    # en/em dashes
    ("1990\u20132000 \u2014 a decade", "1990-2000 - a decade."),
    # emoji, including skin tones, ZWJ families, flags and keycaps
    ("I love it \U0001f600!", "I love it!"),
    ("Thumbs \U0001f44d\U0001f3fd up", "Thumbs up."),
    ("Family \U0001f468\u200d\U0001f469\u200d\U0001f467 time", "Family time."),
    ("Go \U0001f1fa\U0001f1f8 team", "Go team."),
    ("Press 1\ufe0f\u20e3 now", "Press 1 now."),
    ("Hot \u2615\ufe0f coffee \u2764\ufe0f", "Hot coffee."),
    # phrases
    ("Fruit, e.g., apples", "Fruit, for example, apples."),
    ("The capital, i.e., Paris", "The capital, that is, Paris."),
    ("mail me@example.com", "mail me at example.com."),
    # characters that become spaces
    ("snake_case [note] a|b and/or #tag", "snake case note a b and or tag."),
    ("A \u2192 B \u21d2 C\u27f6D", "A B C D."),
    # dropped characters
    ("I \u2665 NY \u00a9 2024 back\\slash", "I NY 2024 backslash."),
    # spaces before punctuation
    ("Hello , world ! Really ? Yes ; no : maybe .", "Hello, world! Really? Yes; no: maybe."),
    # repeated quotes collapse
    ('He said ""yes""', 'He said "yes"'),
    ("It''s", "It's."),
    # whitespace collapses
    ("  lots\t of \n\n space  ", "lots of space."),
    # final punctuation
    ("No period", "No period."),
    ("Question?", "Question?"),
    ("Wow!", "Wow!"),
    ("Trailing ellipsis\u2026", "Trailing ellipsis..."),
    ("She said 'go'", "She said'go'"),
    ("(an aside)", "(an aside)"),
    ("list: a, b]", "list: a, b."),  # "]" is mapped to a space before the check
    (
        "Fran\u00e7ais \u00abbonjour\u00bb",
        unicodedata.normalize("NFKD", "Fran\u00e7ais \u00abbonjour\u00bb"),
    ),
    # Korean is decomposed into conjoining jamo
    ("안녕하세요", unicodedata.normalize("NFKD", "안녕하세요.")),
    ("감사합니다!", unicodedata.normalize("NFKD", "감사합니다!")),
    # compatibility forms
    ("\ufb01ne \u2460", "fine 1."),
    ("", ""),
    ("\U0001f600\U0001f600", ""),
]


@pytest.mark.parametrize(("raw", "expected"), NORMALIZE_CASES)
def test_normalize_table(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


def test_precomposed_and_decomposed_accents_normalize_identically() -> None:
    precomposed = "Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e, S\u00e3o Paulo, ma\u00f1ana"
    decomposed = unicodedata.normalize("NFD", precomposed)
    assert precomposed != decomposed
    assert normalize_text(precomposed) == normalize_text(decomposed)
    assert "\u0301" in normalize_text(precomposed)  # the accent survives as a combining mark


def test_normalize_is_idempotent() -> None:
    for raw, _ in NORMALIZE_CASES:
        once = normalize_text(raw)
        assert normalize_text(once) == once


def test_parity_examples_exactly() -> None:
    assert preprocess("Hello world. How are you today?", "en") == (
        "<en>Hello world. How are you today?</en>"
    )
    expected_es = unicodedata.normalize(
        "NFKD", "<es>\u00bfD\u00f3nde est\u00e1 la biblioteca?</es>"
    )
    result = preprocess("\u00bfD\u00f3nde est\u00e1 la biblioteca?", "es")
    assert result == expected_es
    assert len(result) == 37  # two accents decompose into base letter + combining mark


@pytest.mark.parametrize("lang", LANGUAGES)
def test_preprocess_wraps_every_language(lang: str) -> None:
    assert preprocess("text", lang) == f"<{lang}>text.</{lang}>"


def test_preprocess_accepts_language_case_and_whitespace() -> None:
    assert preprocess("Hi", " EN ") == "<en>Hi.</en>"


@pytest.mark.parametrize("lang", ["de", "", "english", "zh", "e n"])
def test_preprocess_rejects_unsupported_language(lang: str) -> None:
    with pytest.raises(UnsupportedLanguageError, match="en, ko, es, pt, fr"):
        preprocess("Hello", lang)


@pytest.mark.parametrize("raw", ["", "   ", "\n\t", "\U0001f600 \U0001f44d", "...", "?!", "\u2665"])
def test_preprocess_rejects_text_with_nothing_to_speak(raw: str) -> None:
    with pytest.raises(EmptyTextError):
        preprocess(raw, "en")


def test_errors_are_value_errors_with_a_useful_message() -> None:
    assert issubclass(EmptyTextError, TextError)
    assert issubclass(UnsupportedLanguageError, TextError)
    assert issubclass(TextError, ValueError)
    with pytest.raises(TextError, match="send words"):
        preprocess("   ", "en")


def test_non_string_input_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        normalize_text(None)  # type: ignore[arg-type]
