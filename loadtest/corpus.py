"""The bundled request texts (``loadtest/texts/<lang>.json``) and a seeded picker over them."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from importlib import resources

_TEXTS = resources.files("loadtest") / "texts"
# The languages with bundled texts, one file each (a test checks they are the server's).
LANGUAGES = tuple(
    sorted(f.name.removesuffix(".json") for f in _TEXTS.iterdir() if f.name.endswith(".json"))
)

# A sentence ends at . ! ? (French puts a space before ! and ?), then a space or the end.
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")


@dataclass(frozen=True)
class Text:
    """One bundled request text."""

    id: str
    language: str
    text: str

    @property
    def sentences(self) -> int:
        """How many sentences it has (at least 1)."""
        return max(1, len(_SENTENCE_END.findall(self.text)))


def load_texts(languages: tuple[str, ...] = LANGUAGES, max_sentences: int = 6) -> list[Text]:
    """Every bundled text in ``languages`` with at most ``max_sentences`` sentences."""
    unknown = [lang for lang in languages if lang not in LANGUAGES]
    if unknown:
        raise ValueError(f"no bundled texts for language(s) {', '.join(unknown)}")
    texts: list[Text] = []
    for lang in languages:
        data = json.loads((_TEXTS / f"{lang}.json").read_text(encoding="utf-8"))
        for item in data["texts"]:
            text = Text(id=item["id"], language=data["language"], text=item["text"])
            if text.sentences <= max_sentences:
                texts.append(text)
    if not texts:
        raise ValueError(f"no bundled text has at most {max_sentences} sentence(s)")
    return texts


class TextPicker:
    """Seeded draws from a text list, one independent stream per (level, user).

    Per-user generators keep a user's sequence the same however the event loop interleaves
    users, so two runs with one seed send the same texts.
    """

    def __init__(self, texts: list[Text], seed: int) -> None:
        self.texts = texts
        self.seed = seed

    def for_user(self, level: int, user: int) -> random.Random:
        """The generator of user ``user`` at concurrency level ``level``."""
        return random.Random(f"{self.seed}:{level}:{user}")

    def pick(self, rng: random.Random) -> Text:
        """Draw one text."""
        return rng.choice(self.texts)
