"""The engine: honest batching, per-item settings, seeds, durations, validation, failures.

Full-size model on demo weights (no reference data needed); 1..3 flow steps and short texts
keep it quick on a CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from supertonic_grpc.bundle import ModelBundle, demo_bundle
from supertonic_grpc.engine import (
    DEMO_CHARS_PER_SECOND,
    MAX_POSITIONS,
    Engine,
    EngineError,
    InvalidUtterance,
    Utterance,
)
from supertonic_grpc.text import preprocess
from supertonic_grpc.voices import demo_voice

# Padding changes the order of float sums, nothing else: a loose bound for float32 CPU.
BATCH_TOLERANCE = 2e-3
TEXTS = (
    "Hi there.",
    "The quick brown fox jumps over the lazy dog.",
    "Batching must not change what any single request sounds like, however long it is.",
)
VOICES = ("M1", "F2", "M4")


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return demo_bundle()


@pytest.fixture(scope="module")
def engine(bundle: ModelBundle) -> Engine:
    """Durations from the model's own duration predictor."""
    return Engine(bundle.model, device="cpu")


@pytest.fixture(scope="module")
def paced(bundle: ModelBundle) -> Engine:
    """Durations from a speaking rate, so texts of different lengths get different latents."""
    return Engine(bundle.model, device="cpu", demo_pacing=DEMO_CHARS_PER_SECOND)


def _ids(bundle: ModelBundle, text: str, lang: str = "en") -> list[int]:
    return bundle.tokenizer.encode(preprocess(text, lang))


def _items(bundle: ModelBundle, **settings: object) -> list[Utterance]:
    return [
        Utterance(_ids(bundle, t), bundle.voices.get(v), seed=100 + i, **settings)  # type: ignore[arg-type]
        for i, (t, v) in enumerate(zip(TEXTS, VOICES, strict=True))
    ]


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, f"{a.shape} != {b.shape}"
    return float(np.abs(a - b).max())


def _assert_same_as_alone(engine: Engine, items: Sequence[Utterance]) -> None:
    batched = engine.synthesize(items)
    for i, item in enumerate(items):
        (alone,) = engine.synthesize([item])
        assert batched[i].duration_s == pytest.approx(alone.duration_s, abs=1e-6)
        diff = _max_diff(batched[i].audio, alone.audio)
        assert diff <= BATCH_TOLERANCE, f"item {i}: batched differs from alone by {diff}"


@pytest.mark.slow
def test_mixed_length_batch_equals_items_alone(paced: Engine, bundle: ModelBundle) -> None:
    items = _items(bundle, steps=2)
    out = paced.synthesize(items)
    lengths = [len(o.audio) for o in out]
    assert len(set(lengths)) == len(items), "the batch must mix latent lengths"
    _assert_same_as_alone(paced, items)


@pytest.mark.slow
def test_per_item_speed_and_steps_in_one_batch(paced: Engine, bundle: ModelBundle) -> None:
    settings = [(1.0, 2), (1.6, 3), (0.8, 1)]
    items = [
        Utterance(u.token_ids, u.voice, speed=speed, steps=steps, seed=u.seed)
        for u, (speed, steps) in zip(_items(bundle), settings, strict=True)
    ]
    _assert_same_as_alone(paced, items)


@torch.inference_mode()
@pytest.mark.slow
def test_stages_are_batch_independent(bundle: ModelBundle) -> None:
    """text_emb, duration and the final latent of each item, padded in a batch vs alone."""
    model = bundle.model
    ids = [_ids(bundle, t) for t in TEXTS]
    frames = [7, 12, 18]
    ttl = torch.from_numpy(np.stack([bundle.voices.get(v).style_ttl for v in VOICES]))
    dp = torch.from_numpy(np.stack([bundle.voices.get(v).style_dp for v in VOICES]))
    gen = torch.Generator().manual_seed(7)
    noise = [torch.randn(144, f, generator=gen) for f in frames]

    def run(rows: list[int]) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
        t_max, l_max = max(len(ids[r]) for r in rows), max(frames[r] for r in rows)
        text_ids = torch.zeros(len(rows), t_max, dtype=torch.long)
        text_mask = torch.zeros(len(rows), 1, t_max)
        latent_mask = torch.zeros(len(rows), 1, l_max)
        x = torch.zeros(len(rows), 144, l_max)
        for j, r in enumerate(rows):
            text_ids[j, : len(ids[r])] = torch.tensor(ids[r])
            text_mask[j, :, : len(ids[r])] = 1
            latent_mask[j, :, : frames[r]] = 1
            x[j, :, : frames[r]] = noise[r]
        emb = model.text_encoder(text_ids, ttl[rows], text_mask)
        duration = model.duration_predictor(text_ids, dp[rows], text_mask)
        total = torch.full((len(rows),), 2.0)
        for step in range(2):
            current = torch.full((len(rows),), float(step))
            x = model.vector_estimator(x, emb, ttl[rows], latent_mask, text_mask, current, total)
        embs = [emb[j, :, : len(ids[r])] for j, r in enumerate(rows)]
        latents = [x[j, :, : frames[r]] for j, r in enumerate(rows)]
        return embs, duration, latents

    b_emb, b_dur, b_lat = run([0, 1, 2])
    for r in range(3):
        (a_emb,), a_dur, (a_lat,) = run([r])
        assert _max_diff(b_emb[r].numpy(), a_emb.numpy()) <= BATCH_TOLERANCE, f"text_emb {r}"
        assert abs(float(b_dur[r] - a_dur[0])) <= BATCH_TOLERANCE, f"duration {r}"
        assert _max_diff(b_lat[r].numpy(), a_lat.numpy()) <= BATCH_TOLERANCE, f"latent {r}"


@pytest.mark.slow
def test_seeds(engine: Engine, bundle: ModelBundle) -> None:
    voice = bundle.voices.get("F1")
    ids = _ids(bundle, "Same seed, same sound.")
    a, b, c = (engine.synthesize([Utterance(ids, voice, steps=2, seed=s)])[0] for s in (42, 42, 43))
    np.testing.assert_array_equal(a.audio, b.audio)
    assert a.audio.shape == c.audio.shape
    assert _max_diff(a.audio, c.audio) > 1e-3


@pytest.mark.slow
def test_speed_scales_duration(engine: Engine, bundle: ModelBundle) -> None:
    voice = bundle.voices.get("M2")
    ids = _ids(bundle, "How fast can you say this sentence?")
    normal, fast = (
        engine.synthesize([Utterance(ids, voice, speed=s, steps=1, seed=1)])[0] for s in (1.0, 2.0)
    )
    assert len(fast.audio) == pytest.approx(len(normal.audio) / 2, abs=2)
    assert fast.duration_s == pytest.approx(normal.duration_s / 2, abs=1e-4)


@torch.inference_mode()
@pytest.mark.slow
@pytest.mark.parametrize("speed", [1.0, 1.3])
def test_length_is_duration_times_rate(engine: Engine, bundle: ModelBundle, speed: float) -> None:
    voice = bundle.voices.get("F4")
    ids = _ids(bundle, "Length check.")
    (out,) = engine.synthesize([Utterance(ids, voice, speed=speed, steps=1)])
    text_ids = torch.tensor([ids])
    mask = torch.ones(1, 1, len(ids))
    style_dp = torch.from_numpy(voice.style_dp)[None]
    seconds = bundle.model.duration_predictor(text_ids, style_dp, mask).float()
    seconds = seconds / torch.tensor([speed], dtype=torch.float32)
    assert len(out.audio) == math.floor(float(seconds[0]) * 44100)
    assert out.audio.dtype == np.float32


@pytest.mark.slow
def test_paced_length(paced: Engine, bundle: ModelBundle) -> None:
    text = "Twenty-nine characters, long."
    ids = _ids(bundle, text)
    (out,) = paced.synthesize([Utterance(ids, bundle.voices.get("M1"), speed=1.25, steps=1)])
    chars = len(ids) - 9  # the "<en>" and "</en>" tags are not speech
    want = torch.tensor(chars / DEMO_CHARS_PER_SECOND, dtype=torch.float32) / 1.25
    assert len(out.audio) == math.floor(float(want) * 44100)


_VOICE = demo_voice("M1")


@pytest.mark.parametrize(
    ("utterance", "setting"),
    [
        (Utterance([1, 2, 3], _VOICE, speed=0.4), "speed"),
        (Utterance([1, 2, 3], _VOICE, speed=2.1), "speed"),
        (Utterance([1, 2, 3], _VOICE, speed=float("nan")), "speed"),
        (Utterance([1, 2, 3], _VOICE, steps=0), "steps"),
        (Utterance([1, 2, 3], _VOICE, steps=51), "steps"),
        (Utterance([], _VOICE), "text"),
        (Utterance([1] * (MAX_POSITIONS + 1), _VOICE), "text"),
    ],
)
def test_invalid_utterances_name_the_setting(utterance: Utterance, setting: str) -> None:
    with pytest.raises(InvalidUtterance, match=rf"^{setting}:"):
        utterance.validate()


@pytest.mark.slow
def test_engine_validates_before_running(engine: Engine, bundle: ModelBundle) -> None:
    good = Utterance(_ids(bundle, "Fine."), bundle.voices.get("M1"), steps=1)
    bad = Utterance(good.token_ids, good.voice, speed=2.5)
    with pytest.raises(InvalidUtterance, match="speed"):
        engine.synthesize([good, bad])
    assert engine.synthesize([]) == []


@pytest.mark.slow
def test_model_failure_is_engine_error_and_engine_recovers(
    engine: Engine, bundle: ModelBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    item = Utterance(_ids(bundle, "Still here."), bundle.voices.get("F5"), steps=2, seed=3)
    (before,) = engine.synthesize([item])

    def boom(*_: object, **__: object) -> torch.Tensor:
        raise RuntimeError("simulated CUDA error")

    with monkeypatch.context() as patch:
        patch.setattr(bundle.model.vector_estimator, "forward", boom)
        with pytest.raises(EngineError, match="simulated CUDA error"):
            engine.synthesize([item, item])
    (after,) = engine.synthesize([item])
    np.testing.assert_array_equal(before.audio, after.audio)
