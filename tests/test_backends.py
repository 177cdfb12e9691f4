"""The engine's backend step: the channels-last fast path is exact, and the precision policy
keeps the numerically sensitive parts in float32."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from supertonic_grpc import backends
from supertonic_grpc.backends import attention, convnext, relative_attention
from supertonic_grpc.backends.precision import parse_precision, supported
from supertonic_grpc.bundle import ModelBundle, demo_bundle
from supertonic_grpc.engine import Engine, Utterance
from supertonic_grpc.model.layers import AttentionEncoder, ConvNeXtBlock, ConvNeXtStack
from supertonic_grpc.model.vector_estimator import (
    RotaryTextAttention,
    StyleBlock,
    TextBlock,
    TimeEncoder,
)
from supertonic_grpc.model.vocoder import Decoder

# The bar for "exact": what float32 rounding alone could explain.
EXACT = 1e-5


@pytest.fixture(scope="module")
def bundle() -> Iterator[ModelBundle]:
    b = demo_bundle()
    yield b
    convnext.restore(b.model)


def _items(bundle: ModelBundle) -> list[Utterance]:
    voice = bundle.voices.get("M1")
    lengths = (14, 40, 70)  # different lengths, so masks and padding are exercised
    return [Utterance([7 + i % 50 for i in range(n)], voice, steps=2, seed=n) for n in lengths]


def _snr_db(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    signal = sum(float((r.astype(np.float64) ** 2).sum()) for r in ref)
    noise = sum(
        float(((r - g).astype(np.float64) ** 2).sum()) for r, g in zip(ref, got, strict=True)
    )
    return 10 * np.log10(signal / max(noise, 1e-30))


@pytest.mark.parametrize(
    ("causal", "dilation", "masked"), [(False, 1, True), (False, 4, True), (True, 2, False)]
)
@torch.inference_mode()
def test_channels_last_block_equals_the_paper_form(
    causal: bool, dilation: int, masked: bool
) -> None:
    torch.manual_seed(0)
    block = ConvNeXtBlock(64, 128, 5, dilation, causal=causal).eval()
    with torch.no_grad():
        block.gamma.fill_(0.5)  # a visible layer scale, so folding it into W2 is checked
    x = torch.randn(3, 64, 37)
    mask = None
    if masked:
        mask = torch.ones(3, 1, 37)
        mask[1, :, 20:] = 0.0
        mask[2, :, 5:] = 0.0
    want = block(x, mask)
    fast = convnext.ChannelsLastConvNeXt(block)
    got = fast(x, mask)
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= EXACT * float(want.abs().max())


@pytest.mark.parametrize(("kernel", "dilation"), [(5, 1), (5, 8), (7, 2)])
@pytest.mark.parametrize("length", [1, 3, 40])
@torch.inference_mode()
def test_channels_last_stack_equals_the_paper_form_at_any_length(
    kernel: int, dilation: int, length: int
) -> None:
    # Lengths below the padding exercise the edge terms of the zero-padded convolution.
    torch.manual_seed(length)
    stack = ConvNeXtStack(32, 64, kernel, (dilation, 1)).eval()
    for block in stack.convnext:
        block.gamma.data.fill_(0.5)  # type: ignore[union-attr]
    x = torch.randn(3, 32, length)
    mask = torch.ones(3, 1, length)
    mask[1, :, length // 2 + 1 :] = 0.0
    for m in (mask, torch.ones(1, 1, length)):  # padded, and all ones (the skipped masks)
        xs = x[: m.shape[0]]
        want = stack(xs, m)
        fast = convnext.ChannelsLastStack(
            [convnext.ChannelsLastConvNeXt(b) for b in stack.convnext]
        )  # type: ignore[arg-type]
        got = fast(xs, m)
        assert float((got - want).abs().max()) <= EXACT * float(want.abs().max())


@torch.inference_mode()
def test_channels_last_decoder_equals_the_paper_form(bundle: ModelBundle) -> None:
    decoder = next(m for m in bundle.model.modules() if isinstance(m, Decoder))
    convnext.restore(bundle.model)
    z = torch.randn(1, 24, 60)
    want = decoder(z)
    blocks = [convnext.ChannelsLastConvNeXt(b) for b in decoder.convnext]  # type: ignore[arg-type]
    got = convnext.ChannelsLastDecoder(decoder, blocks)(z)
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= EXACT


@torch.inference_mode()
def test_a_streamed_decode_in_pieces_equals_the_paper_form_decoded_whole(
    bundle: ModelBundle,
) -> None:
    """Pieces shorter than some convolutions' receptive field (the dilated ones reach 24
    frames back) and longer ones, each decoded once from the state the one before left."""
    decoder = next(m for m in bundle.model.modules() if isinstance(m, Decoder))
    convnext.restore(bundle.model)
    z = torch.randn(1, 24, 150)
    want = decoder(z)
    blocks = [convnext.ChannelsLastConvNeXt(b) for b in decoder.convnext]  # type: ignore[arg-type]
    fast = convnext.ChannelsLastDecoder(decoder, blocks)
    state, parts, at = None, [], 0
    for size in (1, 5, 30, 6, 108):
        part, state = fast.stream(z[:, :, at : at + size], state)
        parts.append(part)
        at += size
    got = torch.cat(parts, dim=1)
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= EXACT
    # What a flight carries between pieces: each convolution's receptive field, no more.
    reach = [6, *(6 * d for d in bundle.config.vocoder.convnext.dilations), 2]
    assert [t.shape[1] for t in state.tails] == reach
    assert state.nbytes == (6 * 24 + sum(reach[1:]) * 512) * 4  # ~0.24 MB a flight
    assert convnext.streaming_decoder(decoder) is None  # the paper form does not stream


@pytest.mark.parametrize("batch", [1, 3])
@torch.inference_mode()
def test_fast_attention_blocks_equal_the_paper_form(batch: int) -> None:
    torch.manual_seed(batch)
    text_block, style_block = TextBlock(64, 32, 4).eval(), StyleBlock(64, 32, 2, 10).eval()
    for p in [*text_block.parameters(), *style_block.parameters()]:
        p.data.normal_(0.0, 0.2)
    text_block.attn.increments.data = torch.arange(1000.0).view(1, 1000, 1)
    x, text, style = (
        torch.randn(batch, 64, 23),
        torch.randn(batch, 32, 17),
        torch.randn(batch, 10, 32),
    )
    latent_mask, text_mask = torch.ones(batch, 1, 23), torch.ones(batch, 1, 17)
    latent_mask[1:, :, 15:] = 0.0
    text_mask[1:, :, 9:] = 0.0
    cases = [
        (text_block(x, text, latent_mask, text_mask),
         attention.FastTextBlock(text_block)(x, text, latent_mask, text_mask)),
        (style_block(x, style, latent_mask),
         attention.FastStyleBlock(style_block)(x, style, latent_mask)),
    ]  # fmt: skip
    for want, got in cases:
        assert got.shape == want.shape
        assert float((got - want).abs().max()) <= EXACT * float(want.abs().max())


@torch.inference_mode()
def test_attention_blocks_reuse_the_text_side_only_for_the_same_tensor_objects() -> None:
    torch.manual_seed(5)
    block = TextBlock(64, 32, 4).eval()
    for p in block.parameters():
        p.data.normal_(0.0, 0.2)
    block.attn.increments.data = torch.arange(1000.0).view(1, 1000, 1)
    fast = attention.FastTextBlock(block)
    made = 0
    text_side = fast._text_side

    def counted(text: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        nonlocal made
        made += 1
        return text_side(text, mask)

    fast._text_side = counted  # type: ignore[assignment]
    x, latent_mask = torch.randn(1, 64, 23), torch.ones(1, 1, 23)
    text, text_mask = torch.randn(1, 32, 17), torch.ones(1, 1, 17)
    other = torch.randn(1, 32, 17)
    for t, expected_made in ((text, 1), (text, 1), (other, 2), (text.clone(), 3)):
        got = fast(x, t, latent_mask, text_mask)
        want = block(x, t, latent_mask, text_mask)
        assert made == expected_made
        assert float((got - want).abs().max()) <= EXACT * float(want.abs().max())


@pytest.mark.parametrize("length", [1, 3, 9, 41])
@torch.inference_mode()
def test_banded_relative_attention_encoder_equals_the_paper_form(length: int) -> None:
    # Lengths at and below the +-4 window exercise the band's edges.
    torch.manual_seed(length)
    encoder = AttentionEncoder(64, 96, 4, 2).eval()
    for p in encoder.parameters():
        p.data.normal_(0.0, 0.3)  # the relative embeddings too, which start at zero
    x = torch.randn(3, 64, length)
    mask = torch.ones(3, 1, length)
    mask[1, :, length // 2 + 1 :] = 0.0
    mask[2, :, 1:] = 0.0
    for m in (mask, torch.ones(1, 1, length), torch.ones(2, 1, length)):
        xs = x[: m.shape[0]]
        want = encoder(xs, m)
        got = relative_attention.FastAttentionEncoder(encoder)(xs, m)
        assert got.shape == want.shape
        assert float((got - want).abs().max()) <= EXACT * float(want.abs().max())


def test_prepare_installs_the_banded_encoders_of_both_text_stages(bundle: ModelBundle) -> None:
    model = bundle.model
    backends.prepare(model, torch.device("cpu"))
    encoders = [m for m in model.modules() if isinstance(m, AttentionEncoder)]
    assert len(encoders) == 2  # the text encoder's and the duration predictor's
    assert all("forward" in m.__dict__ for m in encoders)
    relative_attention.restore(model)
    assert not any("forward" in m.__dict__ for m in encoders)


def test_prepare_keeps_the_state_dict_and_restore_undoes_it(bundle: ModelBundle) -> None:
    model = bundle.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n = convnext.install(model)
    assert n == sum(isinstance(m, ConvNeXtBlock) for m in model.modules()) > 0
    assert convnext.install(model) == n  # idempotent
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    convnext.restore(model)
    assert not convnext.is_prepared(model)


@pytest.mark.slow
def test_fast_engine_equals_paper_form_engine(bundle: ModelBundle) -> None:
    engine = Engine(bundle.model, device="cpu")
    assert convnext.is_prepared(bundle.model)
    fast = engine.synthesize(_items(bundle))
    convnext.restore(bundle.model)
    attention.restore(bundle.model)
    relative_attention.restore(bundle.model)
    paper = engine.synthesize(_items(bundle))
    for a, b in zip(paper, fast, strict=True):
        assert a.audio.shape == b.audio.shape
        assert float(np.abs(a.audio - b.audio).max()) <= EXACT


@pytest.mark.slow
def test_bf16_keeps_time_embedding_rotary_euler_and_masks_in_fp32(bundle: ModelBundle) -> None:
    model = bundle.model
    seen: dict[str, list[torch.Tensor]] = {"time": [], "rotary": [], "euler": []}

    def keep(name: str):  # type: ignore[no-untyped-def]
        return lambda _mod, args, out: seen[name].append(out)

    hooks = [
        model.vector_estimator.register_forward_hook(keep("euler")),
        *(
            m.register_forward_hook(keep("time"))
            for m in model.modules()
            if isinstance(m, TimeEncoder)
        ),
    ]
    rotations: list[torch.Tensor] = []
    originals = {}
    for m in model.modules():
        if isinstance(m, RotaryTextAttention):
            originals[m] = m._rotate

            def rotate(x, mask, _orig=m._rotate):  # type: ignore[no-untyped-def]
                rotations.append(mask)
                out = _orig(x, mask)
                seen["rotary"].append(out)
                return out

            m._rotate = rotate  # type: ignore[method-assign]
    try:
        fp32 = Engine(model, device="cpu", precision="fp32").synthesize(_items(bundle))
        ref = {k: [t.clone() for t in v] for k, v in seen.items()}
        for v in seen.values():
            v.clear()
        rotations.clear()
        engine = Engine(model, device="cpu", precision="bf16")
        assert engine.precision == "bf16"
        bf16 = engine.synthesize(_items(bundle))
    finally:
        for h in hooks:
            h.remove()
        for m in originals:
            del m._rotate
    # Everything the policy protects is float32 ...
    for name in ("time", "rotary", "euler"):
        assert seen[name] and all(t.dtype == torch.float32 for t in seen[name]), name
    assert all(m.dtype == torch.float32 for m in rotations)
    # ... and the time embedding, computed before any ConvNeXt block, is bit for bit fp32's.
    assert all(torch.equal(a, b) for a, b in zip(ref["time"], seen["time"], strict=True))
    # The MLPs really ran in bf16: the audio moved, but not far.
    snr = _snr_db([o.audio for o in fp32], [o.audio for o in bf16])
    assert 30.0 < snr < 200.0, snr


@pytest.mark.slow
def test_int8_runs_with_finite_audio_close_to_fp32(bundle: ModelBundle) -> None:
    fp32 = Engine(bundle.model, device="cpu").synthesize(_items(bundle))
    int8 = Engine(bundle.model, device="cpu", precision="int8").synthesize(_items(bundle))
    assert all(np.isfinite(o.audio).all() for o in int8)
    assert _snr_db([o.audio for o in fp32], [o.audio for o in int8]) > 20.0


def test_parse_precision_accepts_the_three_names_and_rejects_others() -> None:
    assert [parse_precision(p) for p in ("fp32", "BF16", " int8 ")] == ["fp32", "bf16", "int8"]
    with pytest.raises(ValueError, match="fp32, bf16, int8"):
        parse_precision("fp16")


def test_int8_is_refused_off_cpu() -> None:
    assert supported("int8", torch.device("cuda")) == "int8 is CPU only (dynamic quantization)"
    assert supported("bf16", torch.device("cpu")) is None
    with pytest.raises(ValueError, match="int8"):
        backends.prepare(torch.nn.Module(), torch.device("cuda"), "int8")


def test_precision_setting_reaches_the_engine_and_bad_values_fail_at_start() -> None:
    from supertonic_grpc.engine.serving import build_engine
    from supertonic_grpc.settings import Settings, SettingsError, load_settings

    assert load_settings(environ={"SUPERTONIC_PRECISION": "bf16"}).precision == "bf16"
    with pytest.raises(SettingsError, match="--precision"):
        Settings(precision="fp16").validate()
    with pytest.raises(ValueError, match="--precision"):
        build_engine(demo_bundle().model, Settings(device="cpu", precision="fp16"), demo=True)
