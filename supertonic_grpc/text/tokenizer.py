"""Character tokenizer for Supertonic-2 (``unicode_indexer.json``: code point -> token id).

The published helper indexes characters directly, so an unknown character yields id -1 and
indexes the embedding table from the end. Here every character either maps to a real id
(directly, or through a look-alike fallback) or is dropped.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Sequence

import numpy as np

from .normalize import DASHES_AND_QUOTES, EmptyTextError, TextError, is_speakable

_TAGGED_RE = re.compile(r"(<[a-z]{2}>)(.*)(</[a-z]{2}>)", re.DOTALL)
_SPACE_RUN_RE = re.compile(" {2,}")

# Look-alikes for characters NFKD leaves alone and the published vocabulary lacks. A mapping
# is only used when every character of its replacement is in the indexer.
_LOOKALIKES: dict[str, str] = {
    **DASHES_AND_QUOTES,
    "\u2010": "-",  # hyphen
    "\u2011": "-",  # non-breaking hyphen
    "\u2012": "-",  # figure dash
    "\u2015": "-",  # horizontal bar
    "\u2212": "-",  # minus sign
    "\u2039": "'",
    "\u203a": "'",
    "`": "'",
    "\u00b4": "'",
    "{": "(",
    "}": ")",
    "\u2044": "/",  # fraction slash, from NFKD of ½
    "\u00d7": "x",
    "\u00f8": "o",
    "\u00d8": "O",
    "\u00df": "ss",
    "\u00e6": "ae",
    "\u00c6": "AE",
    "\u0111": "d",
    "\u0110": "D",
    "\u00f0": "d",
    "\u0142": "l",
    "\u0141": "L",
    "\u0131": "i",
    "\u00fe": "th",
    "\u00de": "Th",
}


def _load_indexer(indexer: Sequence[int]) -> np.ndarray:
    table = np.asarray(indexer)
    if table.ndim != 1 or table.size == 0:
        raise ValueError("indexer must be a non-empty flat list of ints")
    if not np.issubdtype(table.dtype, np.integer):
        raise ValueError(f"indexer must hold ints, got dtype {table.dtype}")
    if table.min() < -1:
        raise ValueError("indexer ids must be >= 0, or -1 for an unknown character")
    if table.max() < 0:
        raise ValueError("indexer has no known characters")
    return table.astype(np.int64)


class Tokenizer:
    """Maps preprocessed text (``<lang>...</lang>``) to model token ids, never -1."""

    def __init__(self, indexer: Sequence[int]) -> None:
        table = _load_indexer(indexer)
        self._ids: list[int] = table.tolist()
        self.vocab_size: int = int(table.max()) + 1
        self._resolved: dict[str, tuple[int, ...]] = {}

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Load a published ``unicode_indexer.json`` (a JSON list of 65536 ints)."""
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, list):
            raise ValueError(f"{os.fspath(path)}: expected a JSON list of ints")
        return cls(data)

    @classmethod
    def demo(cls) -> Tokenizer:
        """A deterministic indexer built without reference data (ids 0..161, 163-row tables).

        Covers printable ASCII, ``¡ ¿ « » £ € œ``, combining marks U+0300..U+036F and Hangul
        jamo U+1100..U+11FF. Its ids are NOT the published ones: use it only with demo weights.
        """
        return cls(_demo_indexer())

    def _direct(self, ch: str) -> int:
        code = ord(ch)
        return self._ids[code] if code < len(self._ids) else -1

    def _resolve(self, ch: str) -> tuple[int, ...]:
        """Ids for one character: itself, else a fallback, else () (dropped)."""
        cached = self._resolved.get(ch)
        if cached is not None:
            return cached
        ids = self._fallback(ch)
        self._resolved[ch] = ids
        return ids

    def _all_known(self, text: str) -> tuple[int, ...] | None:
        ids = tuple(self._direct(c) for c in text)
        return ids if ids and min(ids) >= 0 else None

    def _fallback(self, ch: str) -> tuple[int, ...]:
        direct = self._direct(ch)
        if direct >= 0:
            return (direct,)
        candidates = []
        if ch.isspace():
            candidates.append(" ")
        if ch in _LOOKALIKES:
            candidates.append(_LOOKALIKES[ch])
        candidates += [ch.lower(), ch.upper()]
        for candidate in candidates:
            ids = self._all_known(candidate)
            if ids is not None:
                return ids
        # Precomposed letters the caller did not decompose: keep the base letter and whichever
        # marks the model knows; unknown combining marks are simply stripped.
        decomposed = unicodedata.normalize("NFKD", ch)
        if decomposed != ch:
            out: list[int] = []
            for part in decomposed:
                out.extend(self._resolve(part))
            return tuple(out)
        return ()

    def _split_tags(self, preprocessed: str) -> tuple[str, str, str]:
        match = _TAGGED_RE.fullmatch(preprocessed)
        if match is None:
            return "", preprocessed, ""
        return match.group(1), match.group(2), match.group(3)

    def _map_body(self, body: str) -> str:
        # Work on characters so the speakable check and space collapsing see what survives.
        kept: list[str] = []
        for ch in body:
            if self._direct(ch) >= 0 or self._resolve(ch):
                kept.append(ch)
            elif ch.isspace():
                kept.append(" ")
        return _SPACE_RUN_RE.sub(" ", "".join(kept)).strip(" ")

    def encode(self, preprocessed: str) -> list[int]:
        """Token ids for ``preprocessed`` (output of ``preprocess``); never contains -1.

        Unknown characters are mapped to a look-alike the indexer has, else dropped. Raises
        :class:`EmptyTextError` when nothing speakable is left between the language tags.
        """
        if not isinstance(preprocessed, str):
            raise TypeError(f"text must be str, not {type(preprocessed).__name__}")
        open_tag, body, close_tag = self._split_tags(preprocessed)
        body = self._map_body(body)
        if not body or not is_speakable(body):
            dropped = self.unknown_chars(preprocessed)
            detail = f" (unsupported characters dropped: {''.join(sorted(dropped))!r})"
            raise EmptyTextError(
                "nothing speakable is left to synthesize" + (detail if dropped else "")
            )
        ids: list[int] = []
        for part in (open_tag, body, close_tag):
            for ch in part:
                ids.extend(self._resolve(ch))
        if open_tag and len(ids) <= len(open_tag) + len(close_tag):
            raise TextError("the tokenizer's indexer cannot encode the language tags")
        return ids

    def unknown_chars(self, preprocessed: str) -> set[str]:
        """Characters of ``preprocessed`` that ``encode`` would drop (for logging)."""
        return {ch for ch in set(preprocessed) if not ch.isspace() and not self._resolve(ch)}

    def encode_batch(self, preprocessed: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Encode and right-pad with id 0: ``text_ids`` int64 [B, T], ``text_mask`` f32 [B, 1, T].

        This is the layout of the model's text inputs (pad positions are 0 in both).
        """
        rows = [self.encode(t) for t in preprocessed]
        if not rows:
            raise ValueError("encode_batch needs at least one text")
        width = max(len(r) for r in rows)
        text_ids = np.zeros((len(rows), width), dtype=np.int64)
        text_mask = np.zeros((len(rows), 1, width), dtype=np.float32)
        for i, row in enumerate(rows):
            text_ids[i, : len(row)] = row
            text_mask[i, 0, : len(row)] = 1.0
        return text_ids, text_mask


def _demo_indexer() -> list[int]:
    table = [-1] * 65536
    next_id = 0
    for code in range(0x20, 0x7F):  # printable ASCII, ids 0..94
        table[code] = next_id
        next_id += 1
    for ch in "¡¿«»£€œ":  # ids 95..101
        table[ord(ch)] = next_id
        next_id += 1
    # The marks NFKD produces for en/es/pt/fr letters get their own ids (102..109); the rest of
    # the combining block shares four ids, which is harmless for a demo vocabulary.
    common_marks = (0x300, 0x301, 0x302, 0x303, 0x308, 0x327, 0x30A, 0x30C)
    for code in common_marks:
        table[code] = next_id
        next_id += 1
    for code in range(0x300, 0x370):
        if table[code] < 0:
            table[code] = next_id + code % 4
    next_id += 4  # 114
    # 48 ids remain for 256 jamo. Modern jamo (what NFKD makes of Hangul syllables) come first
    # so only 19 of those 67 share an id; archaic ones fold on top.
    modern = [*range(0x1100, 0x1113), *range(0x1161, 0x1176), *range(0x11A8, 0x11C3)]
    modern_set = set(modern)
    rest = [code for code in range(0x1100, 0x1200) if code not in modern_set]
    slots = 162 - next_id
    for k, code in enumerate(modern + rest):
        table[code] = next_id + k % slots
    return table
