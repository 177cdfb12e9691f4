"""Tests for supertonic_grpc.audio: encodings, WAV, resampling."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest

from supertonic_grpc import audio
from supertonic_grpc.audio import Encoding

SR = 44100


def tone(freq: float, seconds: float = 1.0, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * sr / len(x))


@pytest.fixture
def noise() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.clip(rng.standard_normal(SR) * 0.3, -1, 1).astype(np.float32)


# --- encodings ---------------------------------------------------------------------------------


def test_encoding_names_and_streamable() -> None:
    assert [e.name for e in Encoding] == ["LINEAR16", "PCM_F32", "MULAW", "ALAW", "WAV"]
    assert [e.value for e in Encoding] == [1, 2, 3, 4, 5]  # the proto's numbers
    assert frozenset(Encoding) - {Encoding.WAV} == audio.STREAMABLE
    assert (audio.MIN_SAMPLE_RATE, audio.MAX_SAMPLE_RATE) == (8000, 48000)


def test_linear16_round_trip(noise: np.ndarray) -> None:
    data = audio.encode(noise, Encoding.LINEAR16, SR)
    assert len(data) == 2 * len(noise)
    back = audio.decode(data, Encoding.LINEAR16)
    assert back.dtype == np.float32
    assert np.max(np.abs(back - noise)) <= 1 / 32767
    assert np.frombuffer(audio.encode(np.array([1.0, -1.0, 0.0]), Encoding.LINEAR16, SR), "<i2")[
        :3
    ].tolist() == [32767, -32767, 0]


def test_pcm_f32_round_trip_is_exact(noise: np.ndarray) -> None:
    data = audio.encode(noise, Encoding.PCM_F32, SR)
    assert len(data) == 4 * len(noise)
    np.testing.assert_array_equal(audio.decode(data, Encoding.PCM_F32), noise)
    np.testing.assert_array_equal(np.frombuffer(data, "<f4"), noise)


@pytest.mark.parametrize("encoding", [Encoding.MULAW, Encoding.ALAW])
def test_g711_round_trip_within_quantization(encoding: Encoding, noise: np.ndarray) -> None:
    data = audio.encode(noise, encoding, 8000)
    assert len(data) == len(noise)
    back = audio.decode(data, encoding)
    # Within quantization: each value decodes to one of the two code levels around it.
    levels = np.unique(audio.decode(bytes(range(256)), encoding))
    hi = np.clip(np.searchsorted(levels, noise), 1, len(levels) - 1)
    assert np.all((back == levels[hi - 1]) | (back == levels[hi]))
    err = np.abs(back - noise)
    snr = 10 * np.log10(np.mean(noise**2) / np.mean(err**2))
    assert snr > 30  # G.711 gives ~38 dB on speech-like levels


def test_g711_known_code_points() -> None:
    def codes(encoding: Encoding, values: list[float]) -> list[int]:
        return list(audio.encode(np.array(values, np.float32), encoding, 8000))

    assert codes(Encoding.MULAW, [0.0, 1.0, -1.0]) == [0xFF, 0x80, 0x00]
    assert codes(Encoding.ALAW, [0.0, 1.0, -1.0]) == [0xD5, 0xAA, 0x2A]
    # Decoding: mu-law 0xFF and 0x7F are zero; the extremes are +-32124 / 32767.
    mu = audio.decode(bytes([0xFF, 0x7F, 0x80, 0x00]), Encoding.MULAW) * 32767
    assert np.rint(mu).tolist() == [0, 0, 32124, -32124]
    al = audio.decode(bytes([0xD5, 0x55, 0xAA, 0x2A]), Encoding.ALAW) * 32767
    assert np.rint(al).tolist() == [8, -8, 32256, -32256]


@pytest.mark.parametrize("encoding", [Encoding.MULAW, Encoding.ALAW])
def test_g711_every_code_round_trips(encoding: Encoding) -> None:
    # Decoding a code and re-encoding it must give the same code (the laws are idempotent),
    # except mu-law's negative zero (0x7F), which encodes back to positive zero.
    codes = bytes(range(256))
    again = audio.encode(audio.decode(codes, encoding), encoding, 8000)
    diff = [c for c, d in zip(codes, again, strict=True) if c != d]
    assert diff == ([0x7F] if encoding is Encoding.MULAW else [])


@pytest.mark.parametrize("encoding", list(Encoding))
def test_clipping(encoding: Encoding) -> None:
    x = np.array([2.0, -3.0, 1.5, -1.0001, np.nan, np.inf], dtype=np.float32)
    back = audio.decode(audio.encode(x, encoding, SR), encoding)
    ref = audio.decode(
        audio.encode(np.array([1, -1, 1, -1, 0, 1], np.float32), encoding, SR), encoding
    )
    np.testing.assert_array_equal(back, ref)
    assert np.all(np.abs(back) <= 1.0)


@pytest.mark.parametrize("encoding", list(Encoding))
def test_empty_input(encoding: Encoding) -> None:
    data = audio.encode(np.zeros(0, np.float32), encoding, SR)
    assert audio.decode(data, encoding).shape == (0,)


# --- WAV ---------------------------------------------------------------------------------------


def test_wav_header_fields_parse_with_stdlib(noise: np.ndarray) -> None:
    data = audio.encode(noise, Encoding.WAV, 22050)
    assert data == audio.wav_bytes(noise, 22050)
    assert data[:44] == audio.wav_header(len(noise), 22050)
    with wave.open(io.BytesIO(data)) as w:
        assert w.getnchannels() == 1
        assert w.getsampwidth() == 2
        assert w.getframerate() == 22050
        assert w.getnframes() == len(noise)
        pcm = np.frombuffer(w.readframes(len(noise)), "<i2")
    assert np.max(np.abs(pcm / 32767 - noise)) <= 1 / 32767
    assert len(data) == 44 + 2 * len(noise)


def test_wav_round_trip_and_read_wav_from_file(noise: np.ndarray, tmp_path) -> None:
    data = audio.wav_bytes(noise, 16000)
    assert np.max(np.abs(audio.decode(data, Encoding.WAV) - noise)) <= 1 / 32767
    path = tmp_path / "x.wav"
    path.write_bytes(data)
    samples, rate = audio.read_wav(path)
    assert rate == 16000
    assert np.max(np.abs(samples - noise)) <= 1 / 32767
    samples, rate = audio.read_wav(str(path))
    assert rate == 16000 and len(samples) == len(noise)


def test_read_wav_float32_and_stdlib_written_files(noise: np.ndarray) -> None:
    f32 = audio.wav_header(len(noise), 48000, bits=32) + noise.astype("<f4").tobytes()
    samples, rate = audio.read_wav(f32)
    assert rate == 48000
    np.testing.assert_array_equal(samples, noise)

    # A stereo file written by the stdlib is mixed down to mono.
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.array([[1000, 3000], [-2000, -4000]], "<i2").tobytes())
    samples, rate = audio.read_wav(buf.getvalue())
    assert rate == 8000
    np.testing.assert_allclose(samples * 32767, [2000, -3000], atol=1e-3)


def test_read_wav_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="RIFF"):
        audio.read_wav(b"not a wav file at all")
    eight_bit = bytearray(audio.wav_header(4, 8000))
    eight_bit[34] = 8  # bits per sample
    with pytest.raises(ValueError, match="unsupported WAV sample format"):
        audio.read_wav(bytes(eight_bit) + b"\x00" * 8)
    with pytest.raises(ValueError, match="no fmt or data"):
        audio.read_wav(b"RIFF\x04\x00\x00\x00WAVE")


# --- sizes and durations -----------------------------------------------------------------------


def test_bytes_per_sample_and_duration() -> None:
    assert [audio.bytes_per_sample(e) for e in Encoding] == [2, 4, 1, 1, 2]
    assert audio.duration_seconds(88200, Encoding.LINEAR16, 44100) == pytest.approx(1.0)
    assert audio.duration_seconds(64000, Encoding.PCM_F32, 16000) == pytest.approx(1.0)
    assert audio.duration_seconds(4000, Encoding.MULAW, 8000) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="streamable"):
        audio.duration_seconds(100, Encoding.WAV, 8000)


# --- resampling --------------------------------------------------------------------------------

RATES = [16000, 22050, 48000, 8000, 24000, 32000]


@pytest.mark.parametrize("to_hz", RATES)
def test_resample_length_and_frequency(to_hz: int) -> None:
    x = tone(1000.0, seconds=1.3)
    y = audio.resample(x, SR, to_hz)
    assert y.dtype == np.float32
    assert len(y) == round(len(x) * to_hz / SR)
    assert peak_hz(y, to_hz) == pytest.approx(1000.0, abs=2.0)
    # Passband gain ~1 (RMS of the steady part of a 0.5-amplitude sine).
    assert np.sqrt(2) * y[500:-500].std() == pytest.approx(0.5, rel=0.01)


def test_resample_identity_and_empty() -> None:
    x = tone(440.0)
    y = audio.resample(x, SR, SR)
    np.testing.assert_array_equal(y, x)
    assert y is not x
    assert audio.resample(np.zeros(0, np.float32), SR, 16000).shape == (0,)
    assert len(audio.resample(np.ones(3, np.float32), SR, 16000)) == round(3 * 16000 / SR)


def test_resample_preserves_dc() -> None:
    y = audio.resample(np.full(SR, 0.25, np.float32), SR, 16000)
    np.testing.assert_allclose(y[200:-200], 0.25, atol=1e-5)


@pytest.mark.parametrize(("to_hz", "freq"), [(16000, 10000.0), (8000, 6000.0), (22050, 15000.0)])
def test_resample_suppresses_aliasing(to_hz: int, freq: float) -> None:
    x = tone(freq)
    y = audio.resample(x, SR, to_hz)
    ratio_db = 10 * np.log10(np.mean(y[300:-300] ** 2) / np.mean(x**2))
    assert ratio_db < -40


@pytest.mark.parametrize("to_hz", [*RATES, 44099])
def test_stream_resampler_equals_whole(to_hz: int, noise: np.ndarray) -> None:
    whole = audio.resample(noise, SR, to_hz)
    rng = np.random.default_rng(1)
    stream = audio.StreamResampler(SR, to_hz)
    parts, i = [], 0
    while i < len(noise):
        n = int(rng.integers(1, 4000))
        parts.append(stream.process(noise[i : i + n]))
        i += n
    body = np.concatenate(parts)
    tail = stream.flush()
    assert len(body) > 0.9 * len(whole)  # outputs come out as input arrives, not at the end
    np.testing.assert_allclose(np.concatenate([body, tail]), whole, atol=1e-4)


def test_stream_resampler_reusable_after_flush_and_identity() -> None:
    x = tone(700.0, seconds=0.2)
    stream = audio.StreamResampler(SR, 16000)
    first = np.concatenate([stream.process(x), stream.flush()])
    second = np.concatenate([stream.process(x), stream.flush()])
    np.testing.assert_allclose(first, second, atol=1e-6)
    same = audio.StreamResampler(SR, SR)
    np.testing.assert_array_equal(np.concatenate([same.process(x), same.flush()]), x)


# --- invalid arguments -------------------------------------------------------------------------


def test_invalid_arguments_raise_clear_value_errors() -> None:
    x = np.zeros(10, np.float32)
    cases = [
        (lambda: audio.encode(x, "LINEAR16", SR), "encoding must be"),  # type: ignore[arg-type]
        (lambda: audio.encode(x, Encoding.LINEAR16, 0), "sample_rate must be"),
        (lambda: audio.encode(np.zeros((2, 5)), Encoding.LINEAR16, SR), "1-D mono"),
        (lambda: audio.decode(b"\x00\x01\x02", Encoding.LINEAR16), "whole number"),
        (lambda: audio.decode(b"\x00\x01\x02", Encoding.PCM_F32), "whole number"),
        (lambda: audio.resample(x, 0, 16000), "from_hz must be"),
        (lambda: audio.resample(x, SR, -5), "to_hz must be"),
        (lambda: audio.resample(x, 44100.0, 16000), "from_hz must be"),  # type: ignore[arg-type]
        (lambda: audio.StreamResampler(SR, 0), "to_hz must be"),
        (lambda: audio.wav_header(10, SR, bits=24), "bits must be"),
        (lambda: audio.wav_header(-1, SR), "num_samples"),
        (lambda: audio.duration_seconds(-1, Encoding.LINEAR16, SR), "num_bytes"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
