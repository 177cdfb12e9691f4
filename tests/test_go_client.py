"""The Go client (clients/go/cmd/say) builds offline and behaves on success and failure."""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
import struct
import subprocess
import time
import wave
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from supertonic_client._proto.supertonic.v1 import tts_pb2, tts_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
GO_DIR = REPO / "clients" / "go"
SAY = GO_DIR / "bin" / "say"
TTFA_LINE = re.compile(r"^time to first audio: \d+\.\d{3} s", re.M)


@pytest.fixture(scope="module")
def say_binary() -> Path:
    if shutil.which("go") is None:
        # CI installs Go (make go-tools); there a missing toolchain must fail, not skip.
        if os.environ.get("CI"):
            pytest.fail("go not found but CI is set; run `make go-tools`")
        pytest.skip("go not installed (run `make go-tools`)")
    result = subprocess.run(
        [str(GO_DIR / "build.sh")], capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr
    assert SAY.is_file() and os.access(SAY, os.X_OK)
    return SAY


def _run_say(binary: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _closed_port() -> int:
    # Bind then close: the port was free a moment ago and nothing listens on it now.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read_wav(path: Path) -> tuple[Any, bytes]:
    raw = path.read_bytes()
    assert raw[:4] == b"RIFF" and raw[8:16] == b"WAVEfmt "
    assert struct.unpack_from("<I", raw, 4)[0] == len(raw) - 8, "RIFF size not patched"
    with wave.open(str(path), "rb") as w:
        return w.getparams(), w.readframes(w.getnframes())


def test_build_sh_produces_say_binary(say_binary: Path) -> None:
    assert say_binary == SAY
    help_run = _run_say(say_binary, "-h")
    assert "-addr" in help_run.stderr and "-timeout" in help_run.stderr


def test_say_against_closed_port_fails_fast_with_one_line(say_binary: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.wav"
    start = time.monotonic()
    result = _run_say(
        say_binary,
        "-addr",
        f"127.0.0.1:{_closed_port()}",
        "-text",
        "Hello.",
        "-o",
        str(out),
        timeout=30,
    )
    elapsed = time.monotonic() - start

    assert result.returncode != 0
    assert elapsed < 5, f"took {elapsed:.1f}s to notice nothing listens"
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("say: "), result.stderr
    assert "Unavailable" in lines[0]
    assert result.stdout == ""
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [], "left a partial file behind"


def test_say_without_text_fails_with_one_line(say_binary: Path) -> None:
    result = _run_say(say_binary, "-addr", "127.0.0.1:1")
    assert result.returncode != 0
    assert result.stderr.splitlines() == ["say: -text is required"]


# --- against an in-process fake server (no model needed) -------------------------------


@dataclass
class _FakeTTS(tts_pb2_grpc.TextToSpeechServicer):
    """Streams a known tone in a few chunks of two pieces each, or rejects the request like
    the server would."""

    sample_rate: int = 44100
    chunk_samples: tuple[int, ...] = (441, 882, 1323)
    reject: str | None = None
    requests: list[tts_pb2.SynthesizeRequest] = field(default_factory=list)
    sent_pcm: bytearray = field(default_factory=bytearray)

    def Synthesize(
        self, request: tts_pb2.SynthesizeRequest, context: grpc.ServicerContext
    ) -> Iterator[tts_pb2.SynthesizeResponse]:
        self.requests.append(request)
        if self.reject:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, self.reject)
        offset = 0
        for index, n in enumerate(self.chunk_samples):
            samples = [
                int(8000 * math.sin(2 * math.pi * 440 * (offset + i) / self.sample_rate))
                for i in range(n)
            ]
            pcm = struct.pack(f"<{n}h", *samples)
            self.sent_pcm += pcm
            # Each chunk in two pieces, as the server sends a first piece early.
            half = (n // 2) * 2
            for piece, part in enumerate((pcm[:half], pcm[half:])):
                yield tts_pb2.SynthesizeResponse(
                    chunk=tts_pb2.AudioChunk(
                        index=index,
                        audio=part,
                        encoding=tts_pb2.LINEAR16,
                        sample_rate_hz=self.sample_rate,
                        duration_seconds=len(part) / 2 / self.sample_rate,
                        piece=piece,
                        last_piece=piece == 1,
                    )
                )
            offset += n
        yield tts_pb2.SynthesizeResponse(
            summary=tts_pb2.SynthesizeSummary(
                chunks=len(self.chunk_samples),
                audio_seconds=offset / self.sample_rate,
                time_to_first_audio_seconds=0.01,
                sample_rate_hz=self.sample_rate,
                encoding=tts_pb2.LINEAR16,
                voice=request.voice or "M1",
                language=request.language or "en",
                seed=request.seed if request.HasField("seed") else 12345,
                model_state=tts_pb2.DEMO,
            )
        )


@pytest.fixture
def fake_server() -> Iterator[tuple[_FakeTTS, str]]:
    servicer = _FakeTTS()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    tts_pb2_grpc.add_TextToSpeechServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


class _OneBigMessage(tts_pb2_grpc.TextToSpeechServicer):
    """Sends a chunk over the 4 MiB default receive limit of gRPC clients in one message, as
    a server with a raised --max-reply-bytes may."""

    SAMPLES = 2_200_000  # 4.4 MB of LINEAR16

    def Synthesize(
        self, request: tts_pb2.SynthesizeRequest, context: grpc.ServicerContext
    ) -> Iterator[tts_pb2.SynthesizeResponse]:
        chunk = tts_pb2.AudioChunk(
            audio=b"\x01\x00" * self.SAMPLES,
            encoding=tts_pb2.LINEAR16,
            sample_rate_hz=44100,
            duration_seconds=self.SAMPLES / 44100,
            last_piece=True,
        )
        yield tts_pb2.SynthesizeResponse(chunk=chunk)
        yield tts_pb2.SynthesizeResponse(
            summary=tts_pb2.SynthesizeSummary(chunks=1, audio_seconds=self.SAMPLES / 44100)
        )


def test_say_receives_a_message_over_four_mebibytes(say_binary: Path, tmp_path: Path) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    tts_pb2_grpc.add_TextToSpeechServicer_to_server(_OneBigMessage(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        out = tmp_path / "big.wav"
        result = _run_say(say_binary, "-addr", f"127.0.0.1:{port}", "-text", "Hi.", "-o", str(out))
    finally:
        server.stop(grace=None)
    assert result.returncode == 0, result.stderr
    params, frames = _read_wav(out)
    assert params.nframes == _OneBigMessage.SAMPLES and len(frames) > 4 * 1024 * 1024


def test_say_writes_wav_from_fake_server_stream(
    say_binary: Path, fake_server: tuple[_FakeTTS, str], tmp_path: Path
) -> None:
    servicer, address = fake_server
    out = tmp_path / "fake.wav"
    result = _run_say(
        say_binary,
        *("-addr", address, "-text", "Hello there.", "-voice", "F3", "-lang", "es"),
        *("-speed", "1.25", "-steps", "8", "-seed", "42", "-o", str(out)),
    )

    assert result.returncode == 0, result.stderr
    assert TTFA_LINE.search(result.stderr), result.stderr
    assert "3 chunks" in result.stderr

    (request,) = servicer.requests
    assert request.text == "Hello there."
    assert (request.voice, request.language, request.steps) == ("F3", "es", 8)
    assert request.speed == pytest.approx(1.25)
    assert request.HasField("seed") and request.seed == 42
    assert request.audio_config.encoding == tts_pb2.LINEAR16

    params, frames = _read_wav(out)
    assert (params.nchannels, params.sampwidth, params.framerate) == (1, 2, 44100)
    assert frames == bytes(servicer.sent_pcm), "audio must be the chunks, in order, unchanged"


def test_say_leaves_seed_unset_when_not_given(
    say_binary: Path, fake_server: tuple[_FakeTTS, str], tmp_path: Path
) -> None:
    servicer, address = fake_server
    result = _run_say(say_binary, "-addr", address, "-text", "Hi.", "-o", str(tmp_path / "a.wav"))
    assert result.returncode == 0, result.stderr
    assert not servicer.requests[0].HasField("seed")


def test_say_reports_rejected_request_in_one_line(
    say_binary: Path, fake_server: tuple[_FakeTTS, str], tmp_path: Path
) -> None:
    servicer, address = fake_server
    servicer.reject = "speed must be within 0.5..2.0\n(got 9)"
    out = tmp_path / "bad.wav"
    result = _run_say(say_binary, "-addr", address, "-text", "Hi.", "-speed", "9", "-o", str(out))

    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert lines == ["say: InvalidArgument: speed must be within 0.5..2.0 (got 9)"]
    assert not out.exists()


# --- against the real server -----------------------------------------------------------


@pytest.mark.slow
def test_say_against_live_server_writes_valid_wav(
    say_binary: Path, live_server: Any, tmp_path: Path
) -> None:
    out = tmp_path / "live.wav"
    result = _run_say(
        say_binary,
        *("-addr", live_server.address, "-text", "Hello from the Go client.", "-seed", "7"),
        *("-o", str(out), "-timeout", "120s"),
        timeout=180,
    )

    assert result.returncode == 0, result.stderr
    assert TTFA_LINE.search(result.stderr), result.stderr
    params, frames = _read_wav(out)
    assert (params.nchannels, params.sampwidth, params.framerate) == (1, 2, 44100)
    assert len(frames) > 0
    assert len(frames) / 2 / params.framerate > 0
