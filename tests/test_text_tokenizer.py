"""Tokenizer: parity with the published indexer, and no -1 ever reaching the model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from supertonic_grpc.text import EmptyTextError, Tokenizer, preprocess

REPO_ROOT = Path(__file__).resolve().parents[1]
PARITY_TEXTS = [("Hello world. How are you today?", "en"), ("¿Dónde está la biblioteca?", "es")]

SAMPLES = {
    "en": "The quick brown fox jumps over the lazy dog; it costs $3.50 (about 10%) & more!",
    "ko": "안녕하세요, 만나서 반갑습니다. 오늘 날씨가 정말 좋네요!",
    "es": "¡Hola! ¿Cómo estás? El niño comió piñas y pingüinos en el año 2024.",
    "pt": "Não sei se ele está aqui, mas vou verificar às três horas. Ação, coração!",
    "fr": "L'été dernier, nous sommes allés à la mer — c'était génial ! Où est le cœur ? Ça va.",
}


def _reference_dir() -> Path:
    default = REPO_ROOT.parent / "shared" / "reference" / "supertonic-2"
    path = Path(os.environ.get("SUPERTONIC_REFERENCE_DIR", default))
    if not (path / "unicode_indexer.json").is_file():
        reason = f"Supertonic-2 reference data not found at {path} (set SUPERTONIC_REFERENCE_DIR)"
        if os.environ.get("SUPERTONIC_REQUIRE_REFERENCE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def reference_dir() -> Path:
    return _reference_dir()


@pytest.fixture(scope="module")
def reference(reference_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(reference_dir / "unicode_indexer.json")


@pytest.fixture(scope="module")
def parity_inputs(reference_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(reference_dir / "parity" / "parity.safetensors"))


def test_reference_vocab_size(reference: Tokenizer) -> None:
    assert reference.vocab_size == 162


def test_parity_first_example_matches_reference_ids(
    reference: Tokenizer, parity_inputs: dict[str, np.ndarray]
) -> None:
    ids = reference.encode(preprocess(*PARITY_TEXTS[0]))
    assert len(ids) == 40
    assert ids == parity_inputs["text_ids"][0].tolist()


def test_parity_second_example_matches_unpadded_ids(
    reference: Tokenizer, parity_inputs: dict[str, np.ndarray]
) -> None:
    length = int(parity_inputs["text_mask"][1].sum())
    ids = reference.encode(preprocess(*PARITY_TEXTS[1]))
    assert len(ids) == length == 37
    assert ids == parity_inputs["text_ids"][1, :length].tolist()


def test_encode_batch_reproduces_parity_tensors(
    reference: Tokenizer, parity_inputs: dict[str, np.ndarray]
) -> None:
    text_ids, text_mask = reference.encode_batch([preprocess(t, lang) for t, lang in PARITY_TEXTS])
    assert text_ids.dtype == np.int64 and text_mask.dtype == np.float32
    np.testing.assert_array_equal(text_ids, parity_inputs["text_ids"])
    np.testing.assert_array_equal(text_mask, parity_inputs["text_mask"])


@pytest.mark.parametrize(
    "raw",
    [
        "Price: 5 ¥ or 3 ₩, x = y ^ 2 {ok} `tick` Straße ½ ø Łódź",
        "Mixed Кириллица and 漢字 and العربية text",
        "Zero\u200bwidth\ufeff and control \x00\x07 chars, å ř ǅ",
        "Œuvre, œuf, Æsop, þorn",
    ],
)
def test_unknown_characters_never_give_minus_one(reference: Tokenizer, raw: str) -> None:
    ids = reference.encode(preprocess(raw, "en"))
    assert ids
    assert min(ids) >= 0 and max(ids) < reference.vocab_size


def test_fallbacks_keep_what_the_model_knows(reference: Tokenizer) -> None:
    # ß -> ss, ø -> o, {} -> (), unknown combining ring/caron stripped from å and ř
    ids = reference.encode("<en>Straße ø {å ř}</en>")
    assert ids == reference.encode("<en>Strasse o (a r)</en>")
    assert reference.encode("<fr>Œuvre</fr>") == reference.encode("<fr>œuvre</fr>")


def test_dropped_characters_leave_single_spaces(reference: Tokenizer) -> None:
    assert reference.encode("<en>a 漢 b</en>") == reference.encode("<en>a b</en>")


def test_unknown_chars_reports_only_dropped_ones(reference: Tokenizer) -> None:
    text = preprocess("Кот and 漢 plus ß and é", "en")
    assert reference.unknown_chars(text) == {"К", "о", "т", "漢"}
    assert reference.unknown_chars(preprocess(*PARITY_TEXTS[1])) == set()


@pytest.mark.parametrize("raw", ["Кириллица", "漢字 漢字", "∑∫∂"])
def test_text_of_only_unknown_characters_is_empty(reference: Tokenizer, raw: str) -> None:
    preprocessed = preprocess(raw, "en")  # normalization alone keeps these characters
    with pytest.raises(EmptyTextError, match="dropped"):
        reference.encode(preprocessed)


def test_empty_body_between_tags_is_rejected(reference: Tokenizer) -> None:
    with pytest.raises(EmptyTextError):
        reference.encode("<en></en>")
    with pytest.raises(EmptyTextError):
        reference.encode("<en> . </en>")


@pytest.mark.parametrize("lang", sorted(SAMPLES))
def test_reference_covers_sample_sentences(reference: Tokenizer, lang: str) -> None:
    preprocessed = preprocess(SAMPLES[lang], lang)
    assert reference.unknown_chars(preprocessed) == set()
    assert len(reference.encode(preprocessed)) == len(preprocessed)


@pytest.mark.parametrize("lang", sorted(SAMPLES))
def test_demo_covers_sample_sentences(lang: str) -> None:
    demo = Tokenizer.demo()
    preprocessed = preprocess(SAMPLES[lang], lang)
    ids = demo.encode(preprocessed)
    assert demo.unknown_chars(preprocessed) == set()
    assert len(ids) == len(preprocessed)  # nothing dropped, one id per character
    assert min(ids) >= 0 and max(ids) < 163


def test_demo_indexer_shape_and_determinism() -> None:
    demo = Tokenizer.demo()
    assert demo.vocab_size == 162
    text = preprocess("Déjà vu, 한국어 </> 100%", "fr")
    assert demo.encode(text) == Tokenizer.demo().encode(text)
    # Distinct printable ASCII characters get distinct ids.
    ascii_ids = demo.encode("<en>" + "".join(chr(c) for c in range(0x21, 0x7F)) + "</en>")
    assert len(set(ascii_ids[4:-5])) == 0x7F - 0x21


def test_untagged_text_is_encoded_whole() -> None:
    demo = Tokenizer.demo()
    assert demo.encode("ab") == [demo.encode("<en>a</en>")[4], demo.encode("<en>b</en>")[4]]


def test_from_file_and_constructor_validation(tmp_path: Path) -> None:
    path = tmp_path / "indexer.json"
    path.write_text(json.dumps([-1] * 32 + [0] + [-1] * 32 + list(range(1, 27))))
    tok = Tokenizer.from_file(path)
    assert tok.vocab_size == 27
    assert tok.encode("A") == [1]
    with pytest.raises(ValueError):
        Tokenizer([])
    with pytest.raises(ValueError):
        Tokenizer([-1, -1])
    with pytest.raises(ValueError):
        Tokenizer([0, -2])
    path.write_text(json.dumps({"a": 1}))
    with pytest.raises(ValueError):
        Tokenizer.from_file(path)
