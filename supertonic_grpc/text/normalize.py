"""Text normalization matching the published Supertonic-2 preprocessing.

The model was trained on text cleaned by a fixed recipe (see the reference README); feeding it
anything else shifts the input distribution, so these steps follow that recipe in its order.
Extra guarding against characters the model cannot embed lives in the tokenizer, not here.
"""

from __future__ import annotations

import re
import unicodedata

LANGUAGES: tuple[str, ...] = ("en", "ko", "es", "pt", "fr")


class TextError(ValueError):
    """Base class for request-text problems; the message says what the caller should fix."""


class UnsupportedLanguageError(TextError):
    """The language code is not one the model was trained on."""


class EmptyTextError(TextError):
    """Nothing speakable is left (empty input, or only emoji/unsupported characters)."""


# Arrows become spaces rather than vanishing, because they usually separate words ("A→B").
# The emoji class below deliberately excludes them so the two steps never compete.
_ARROWS = (
    "\u2190-\u21ff"  # Arrows
    "\u2794-\u27af\u27b1-\u27be"  # dingbat arrows
    "\u27f0-\u27ff"  # Supplemental Arrows-A
    "\u2900-\u297f"  # Supplemental Arrows-B
    "\u2b00-\u2b11\u2b60-\u2bb9"  # arrows in Miscellaneous Symbols and Arrows
    "\U0001f800-\U0001f8ff"  # Supplemental Arrows-C
)

_EMOJI_RE = re.compile(
    "["
    "\U0001f000-\U0001f7ff"  # tiles, cards, regional indicators (flags), pictographs, emoticons
    "\U0001f900-\U0001faff"  # supplemental pictographs, symbols extended-A
    "\u2600-\u2793\u27b0\u27bf"  # miscellaneous symbols and dingbats (minus dingbat arrows)
    "\u231a\u231b\u2328\u23cf\u23e9-\u23f3\u23f8-\u23fa"  # emoji in Miscellaneous Technical
    "\u25a0-\u25ff"  # geometric shapes (many render as emoji: ▶ ◀ ◼)
    "\u2b1b\u2b1c\u2b50\u2b55\u3030\u303d\u00ae"
    # Sequence glue: zero-width joiner, variation selectors, keycap, skin tones are in the
    # pictograph range above, subdivision-flag tag characters.
    "\u200d\ufe0e\ufe0f\u20e3\U000e0020-\U000e007f"
    "]+"
)
_ARROW_RE = re.compile(f"[{_ARROWS}]")

# Typographic dashes and quotes as the ASCII ones the vocabulary has: the published
# preprocessing maps them, and the tokenizer's look-alikes start from the same table.
DASHES_AND_QUOTES: dict[str, str] = {
    "\u2013": "-",  # en dash
    "\u2014": "-",  # em dash
    "\u2018": "'",
    "\u2019": "'",
    "\u201a": "'",
    "\u201b": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u201e": '"',
    "\u201f": '"',
}

_CHAR_MAP = str.maketrans(
    {
        **DASHES_AND_QUOTES,
        "_": " ",
        "[": " ",
        "]": " ",
        "|": " ",
        "/": " ",
        "#": " ",
        "♥": None,
        "☆": None,
        "♡": None,
        "©": None,
        "\\": None,
    }
)

_PHRASES = (("@", " at "), ("e.g.,", "for example, "), ("i.e.,", "that is, "))
_SPACE_BEFORE_PUNCT_RE = re.compile(r"\s+([,.!?;:'])")
_REPEATED_DOUBLE_QUOTE_RE = re.compile(r'"{2,}')
_REPEATED_SINGLE_QUOTE_RE = re.compile(r"'{2,}")

# Text ending in one of these (or any closing bracket/quote category) gets no extra ".".
_FINAL_PUNCT = frozenset(".!?;:,'\")]}»›…。！？」』】〉》")


def _ends_with_punctuation(text: str) -> bool:
    last = text[-1]
    return last in _FINAL_PUNCT or unicodedata.category(last) in ("Pe", "Pf")


def is_speakable(text: str) -> bool:
    """True when ``text`` holds a letter, digit or symbol, not just punctuation and marks."""
    return any(unicodedata.category(ch)[0] in "LNS" for ch in text)


def normalize_text(text: str) -> str:
    """Apply the published Supertonic-2 cleanup, every step except the ``<lang>`` wrap.

    Returns ``""`` when nothing is left (for example emoji-only input); ``preprocess`` turns
    that into :class:`EmptyTextError`.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, not {type(text).__name__}")
    text = unicodedata.normalize("NFKD", text)
    text = _EMOJI_RE.sub("", text)
    text = _ARROW_RE.sub(" ", text)
    text = text.translate(_CHAR_MAP)
    for phrase, replacement in _PHRASES:
        text = text.replace(phrase, replacement)
    text = _SPACE_BEFORE_PUNCT_RE.sub(r"\1", text)
    text = _REPEATED_DOUBLE_QUOTE_RE.sub('"', text)
    text = _REPEATED_SINGLE_QUOTE_RE.sub("'", text)
    text = " ".join(text.split())
    if text and not _ends_with_punctuation(text):
        text += "."
    return text


def check_language(lang: str) -> str:
    """Return the canonical language code, or raise :class:`UnsupportedLanguageError`."""
    if not isinstance(lang, str):
        raise UnsupportedLanguageError(f"language must be a string, one of {', '.join(LANGUAGES)}")
    code = lang.strip().lower()
    if code not in LANGUAGES:
        raise UnsupportedLanguageError(
            f"unsupported language {lang!r}: use one of {', '.join(LANGUAGES)}"
        )
    return code


def preprocess(text: str, lang: str) -> str:
    """Normalize ``text`` and wrap it as ``<lang>text</lang>``, the model's input format.

    Raises :class:`UnsupportedLanguageError` for a language outside :data:`LANGUAGES` and
    :class:`EmptyTextError` when nothing speakable remains after normalization.
    """
    code = check_language(lang)
    normalized = normalize_text(text)
    if not normalized:
        raise EmptyTextError(
            "text is empty after normalization (blank, or only emoji/symbols): send words to speak"
        )
    if not is_speakable(normalized):
        raise EmptyTextError(
            f"text {normalized!r} has only punctuation after normalization: send words to speak"
        )
    return f"<{code}>{normalized}</{code}>"
