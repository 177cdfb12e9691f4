"""`supertonic-grpc say`: speak text locally (the server's own chunking) or on `--server`.

The model, torch and the server's validation load only when the text is spoken locally.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from supertonic_grpc import audio
from supertonic_grpc.cli.common import CommandError, UsageError, add_model_dir, add_server, connect
from supertonic_grpc.text import LANGUAGES

if TYPE_CHECKING:  # the light client loads only for --server
    from supertonic_client.options import RequestOptions

_RAW_ENCODINGS = ("LINEAR16", "PCM_F32", "MULAW", "ALAW")


def _check_say_args(args: argparse.Namespace) -> None:
    """Checks that need neither a model nor a server, so bad input fails at once."""
    if not args.text.strip():
        raise UsageError("text: must not be empty")
    if args.lang.strip().lower() not in LANGUAGES:
        raise UsageError(
            f"language: {args.lang!r} is not supported; use one of {', '.join(LANGUAGES)}"
        )
    if args.sample_rate and not audio.MIN_SAMPLE_RATE <= args.sample_rate <= audio.MAX_SAMPLE_RATE:
        raise UsageError(
            f"sample rate: {args.sample_rate} is not in "
            f"{audio.MIN_SAMPLE_RATE}..{audio.MAX_SAMPLE_RATE}"
        )


def _check_engine_limits(args: argparse.Namespace) -> None:
    """The local engine's limits, checked before the slow bundle load (a server checks its
    own: `--server` leaves them to it)."""
    from supertonic_grpc.engine import MAX_SPEED, MAX_STEPS, MIN_SPEED, MIN_STEPS

    if args.speed is not None and not (
        math.isfinite(args.speed) and MIN_SPEED <= args.speed <= MAX_SPEED
    ):
        raise UsageError(f"speed: {args.speed} is not in {MIN_SPEED}..{MAX_SPEED}")
    if args.steps is not None and not MIN_STEPS <= args.steps <= MAX_STEPS:
        raise UsageError(f"steps: {args.steps} is not in {MIN_STEPS}..{MAX_STEPS}")


def _request_options(args: argparse.Namespace) -> RequestOptions:
    return {
        "voice": args.voice or "",
        "language": args.lang,
        "speed": args.speed or 0.0,
        "steps": args.steps or 0,
        "encoding": audio.Encoding[args.encoding],
        "sample_rate_hz": args.sample_rate or 0,
        "seed": args.seed,
    }


def _summary_line(
    dest: str, seconds: float, chunks: int, wall: float, voice: str, state: str, hint: str
) -> str:
    """One line about the audio; with the demo model, a warning and `hint` (how to get
    the real one)."""
    rtf = seconds / wall if wall > 0 else float("inf")
    line = (
        f"{dest}: {seconds:.2f} s of audio in {chunks} chunk{'s' if chunks != 1 else ''}, "
        f"real-time factor {rtf:.2f} (audio s / wall s), voice {voice}, model {state}"
    )
    if state != "demo":
        return line
    return f"{line}; WARNING: demo model, the audio is NOISE; to hear speech, {hint}"


def _say_local(args: argparse.Namespace, out: BinaryIO | None) -> str:
    # Imported here: only local speech needs the model, torch and the server's validation.
    from supertonic_client.client import build_request
    from supertonic_grpc import bundle
    from supertonic_grpc.engine import DEMO_CHARS_PER_SECOND, Engine, EngineError
    from supertonic_grpc.settings import Settings
    from supertonic_grpc.validation import RequestError, plan_request

    _check_engine_limits(args)
    model = bundle.load_bundle(args.model_dir or None)
    req = build_request(args.text, **_request_options(args))
    try:
        # The server's own validation and chunking, so `say` speaks exactly as `serve` would.
        plan = plan_request(
            req,
            settings=Settings(),
            voices=model.voices,
            tokenizer=model.tokenizer,
            native_rate=model.config.sample_rate,
            streaming=False,
        )
    except RequestError as exc:
        raise UsageError(exc.message) from None
    engine = Engine(
        model.model,
        device=args.device,
        demo_pacing=DEMO_CHARS_PER_SECOND if model.is_demo else None,
    )
    start = time.perf_counter()
    try:
        results = engine.synthesize([c.utterance for c in plan.chunks])
    except EngineError as exc:
        raise CommandError(str(exc)) from exc
    wall = time.perf_counter() - start
    samples = np.concatenate([r.audio for r in results])
    seconds = len(samples) / plan.native_rate
    if plan.sample_rate != plan.native_rate:
        samples = audio.resample(samples, plan.native_rate, plan.sample_rate)
    if out is not None:
        out.write(audio.encode(samples, plan.encoding, plan.sample_rate))
        dest = "stdout"
    else:
        Path(args.output).write_bytes(audio.wav_bytes(samples, plan.sample_rate))
        dest = args.output
    return _summary_line(
        dest, seconds, len(results), wall, plan.voice.name, model.state, bundle.DOWNLOAD_HINT
    )


class _WavWriter:
    """Writes a 16-bit WAV as chunks arrive; the header's sizes are fixed up at the end."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._file: io.BufferedWriter = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.rate = 0
        self.samples = 0

    def write(self, samples: np.ndarray, rate: int) -> None:
        if not self.rate:
            self.rate = rate
            self._file.write(audio.wav_header(0, rate))
        self._file.write(audio.encode(samples, audio.Encoding.LINEAR16, rate))
        self._file.flush()  # a player reading the file as it grows gets every chunk
        self.samples += len(samples)

    def close(self, rate: int | None) -> None:
        """Fix up the header. `rate` (the stream's, from its summary) is for a file that got
        no audio; without it too the stream failed, and the file is removed."""
        if not self.rate:
            if not rate:
                self._file.close()
                self.path.unlink(missing_ok=True)
                return
            self.rate = rate
            self._file.write(audio.wav_header(0, self.rate))
        self._file.seek(0)
        self._file.write(audio.wav_header(self.samples, self.rate))
        self._file.close()


def _say_remote(args: argparse.Namespace, out: BinaryIO | None) -> str:
    from supertonic_client.client import SupertonicError

    options = _request_options(args)
    start = time.perf_counter()
    writer = None if out is not None else _WavWriter(args.output)
    stream = None
    try:
        with connect(args) as client:
            stream = client.stream(args.text, **options)
            for chunk in stream:
                if out is not None:
                    out.write(chunk.data)
                    out.flush()
                elif writer is not None:
                    writer.write(chunk.audio, chunk.sample_rate_hz)
    except SupertonicError as exc:
        if exc.code.name == "INVALID_ARGUMENT":
            raise UsageError(exc.message) from None
        raise CommandError(f"server {args.server}: {exc}") from None
    finally:
        summary = stream.summary if stream is not None else None
        if writer is not None:
            writer.close(summary.sample_rate_hz if summary is not None else None)
    wall = time.perf_counter() - start
    if summary is None:
        raise CommandError(f"server {args.server}: the stream ended without a summary")
    dest = "stdout" if out is not None else args.output
    hint = f"the server needs the model files ({args.server} has none)"
    return _summary_line(
        dest, summary.audio_seconds, summary.chunks, wall, summary.voice, summary.model_state, hint
    )


def cmd_say(args: argparse.Namespace) -> int:
    """Synthesize TEXT locally (or on `--server`) into a WAV file or raw PCM on stdout."""
    _check_say_args(args)
    out = sys.stdout.buffer if args.raw else None
    try:
        line = _say_remote(args, out) if args.server else _say_local(args, out)
    except BrokenPipeError:
        # The player went away (e.g. aplay closed); nothing useful is left to do.
        raise CommandError("output closed before the audio ended") from None
    # With --raw, stdout carries audio, so the summary goes to stderr.
    print(line, file=sys.stderr if args.raw else sys.stdout)
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("say", help="speak TEXT into a WAV file (or raw PCM on stdout)")
    p.add_argument("text", metavar="TEXT")
    p.add_argument("--voice", default="", help="voice name, e.g. M1 or F3 (default M1)")
    p.add_argument("--lang", default="en", help=f"language: {', '.join(LANGUAGES)}")
    p.add_argument("--speed", type=float, default=None, help="0.5..2.0 (default 1.05)")
    p.add_argument("--steps", type=int, default=None, help="flow steps 1..50 (default 5)")
    p.add_argument("--seed", type=int, default=None, help="noise seed (default random)")
    p.add_argument("-o", "--output", default="out.wav", help="WAV file to write")
    p.add_argument("--raw", action="store_true", help="write raw audio to stdout instead")
    p.add_argument(
        "--encoding",
        default="LINEAR16",
        type=str.upper,
        choices=_RAW_ENCODINGS,
        help="wire/raw encoding (the WAV file is always 16-bit)",
    )
    p.add_argument("--sample-rate", type=int, default=0, help="Hz, 8000..48000 (0: the model's)")
    p.add_argument("--device", default="auto", help="local model device: auto, cpu, cuda")
    add_model_dir(p)
    add_server(p)
    p.set_defaults(func=cmd_say)
