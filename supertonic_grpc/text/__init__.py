"""Text front end: normalization, tokenization and chunking (stdlib + numpy only)."""

from .chunker import TextChunk, final_break, split_text
from .normalize import (
    LANGUAGES,
    EmptyTextError,
    TextError,
    UnsupportedLanguageError,
    normalize_text,
    preprocess,
)
from .tokenizer import Tokenizer

__all__ = [
    "LANGUAGES",
    "EmptyTextError",
    "TextChunk",
    "TextError",
    "Tokenizer",
    "UnsupportedLanguageError",
    "final_break",
    "normalize_text",
    "preprocess",
    "split_text",
]
