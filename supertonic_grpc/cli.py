"""The `supertonic-grpc` command: serve, say, voices, download, bench.

Results go to stdout; diagnostics go to stderr through logging. Bad input ends with one line
on stderr and exit code 2; other failures (network, server) with exit code 1.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from supertonic_grpc import audio
from supertonic_grpc.bundle import DOWNLOAD_HINT, load_bundle
from supertonic_grpc.engine import (
    DEMO_CHARS_PER_SECOND,
    MAX_SPEED,
    MAX_STEPS,
    MIN_SPEED,
    MIN_STEPS,
    Engine,
    EngineError,
)
from supertonic_grpc.text import LANGUAGES

log = logging.getLogger("supertonic_grpc.cli")

PROG = "supertonic-grpc"
NATIVE_RATE = 44100
_RAW_ENCODINGS = ("LINEAR16", "PCM_F32", "MULAW", "ALAW")
_NOISE_WARNING = f"WARNING: demo model, the audio is NOISE; to hear speech, {DOWNLOAD_HINT}"


class UsageError(Exception):
    """Bad input from the user: exit code 2."""


class CommandError(Exception):
    """The command could not be carried out (network, server, model): exit code 1."""


# --- say ---------------------------------------------------------------------------------------


def _check_say_args(args: argparse.Namespace) -> None:
    """Checks that need no model, so bad input fails before a slow bundle load."""
    if not args.text.strip():
        raise UsageError("text: must not be empty")
    if args.speed is not None and not (
        math.isfinite(args.speed) and MIN_SPEED <= args.speed <= MAX_SPEED
    ):
        raise UsageError(f"speed: {args.speed} is not in {MIN_SPEED}..{MAX_SPEED}")
    if args.steps is not None and not MIN_STEPS <= args.steps <= MAX_STEPS:
        raise UsageError(f"steps: {args.steps} is not in {MIN_STEPS}..{MAX_STEPS}")
    if args.lang.strip().lower() not in LANGUAGES:
        raise UsageError(
            f"language: {args.lang!r} is not supported; use one of {', '.join(LANGUAGES)}"
        )
    if args.sample_rate and not audio.MIN_SAMPLE_RATE <= args.sample_rate <= audio.MAX_SAMPLE_RATE:
        raise UsageError(
            f"sample rate: {args.sample_rate} is not in "
            f"{audio.MIN_SAMPLE_RATE}..{audio.MAX_SAMPLE_RATE}"
        )


def _request_options(args: argparse.Namespace) -> dict[str, object]:
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
    dest: str, seconds: float, chunks: int, wall: float, voice: str, state: str
) -> str:
    rtf = seconds / wall if wall > 0 else float("inf")
    line = (
        f"{dest}: {seconds:.2f} s of audio in {chunks} chunk{'s' if chunks != 1 else ''}, "
        f"real-time factor {rtf:.2f} (audio s / wall s), voice {voice}, model {state}"
    )
    return f"{line}; {_NOISE_WARNING}" if state == "demo" else line


def _say_local(args: argparse.Namespace, out: BinaryIO | None) -> str:
    # Imported here: the service-side validation pulls in grpc and the generated stubs.
    from supertonic_client.client import build_request
    from supertonic_grpc.settings import Settings
    from supertonic_grpc.validation import RequestError, plan_request

    bundle = load_bundle(args.model_dir or None)
    req = build_request(args.text, **_request_options(args))  # type: ignore[arg-type]
    try:
        # The server's own validation and chunking, so `say` speaks exactly as `serve` would.
        plan = plan_request(
            req,
            settings=Settings(),
            voices=bundle.voices,
            tokenizer=bundle.tokenizer,
            streaming=False,
        )
    except RequestError as exc:
        raise UsageError(exc.message) from None
    engine = Engine(
        bundle.model,
        device=args.device,
        demo_pacing=DEMO_CHARS_PER_SECOND if bundle.is_demo else None,
    )
    start = time.perf_counter()
    try:
        results = engine.synthesize([c.utterance for c in plan.chunks])
    except EngineError as exc:
        raise CommandError(str(exc)) from exc
    wall = time.perf_counter() - start
    samples = np.concatenate([r.audio for r in results])
    seconds = len(samples) / NATIVE_RATE
    if plan.sample_rate != NATIVE_RATE:
        samples = audio.resample(samples, NATIVE_RATE, plan.sample_rate)
    if out is not None:
        out.write(audio.encode(samples, plan.encoding, plan.sample_rate))
        dest = "stdout"
    else:
        Path(args.output).write_bytes(audio.wav_bytes(samples, plan.sample_rate))
        dest = args.output
    return _summary_line(dest, seconds, len(results), wall, plan.voice.name, bundle.state)


class _WavWriter:
    """Writes a 16-bit WAV as chunks arrive; the header's sizes are fixed up at the end."""

    def __init__(self, path: str) -> None:
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

    def close(self) -> None:
        if not self.rate:
            self.rate = NATIVE_RATE
            self._file.write(audio.wav_header(0, self.rate))
        self._file.seek(0)
        self._file.write(audio.wav_header(self.samples, self.rate))
        self._file.close()


def _say_remote(args: argparse.Namespace, out: BinaryIO | None) -> str:
    from supertonic_client.client import SupertonicError

    options = _request_options(args)
    start = time.perf_counter()
    writer = None if out is not None else _WavWriter(args.output)
    try:
        with _connect(args) as client:
            stream = client.stream(args.text, **options)  # type: ignore[arg-type]
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
        if writer is not None:
            writer.close()
    wall = time.perf_counter() - start
    summary = stream.summary
    if summary is None:
        raise CommandError(f"server {args.server}: the stream ended without a summary")
    dest = "stdout" if out is not None else args.output
    return _summary_line(
        dest, summary.audio_seconds, summary.chunks, wall, summary.voice, summary.model_state
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


# --- voices, download, serve, bench -----------------------------------------------------------


def _table(rows: Iterable[tuple[str, str, str]]) -> str:
    rows = [("NAME", "GENDER", "LANGUAGES"), *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows)


def cmd_voices(args: argparse.Namespace) -> int:
    """Print the voices and the model state, of the local bundle or of `--server`."""
    if args.server:
        from supertonic_client.client import SupertonicError

        try:
            with _connect(args) as client:
                listing = client.voices()
        except SupertonicError as exc:
            raise CommandError(f"server {args.server}: {exc}") from None
        rows = [(v.name, v.gender, ", ".join(v.languages)) for v in listing.voices]
        state, version = listing.model_state, listing.model_version
    else:
        bundle = load_bundle(args.model_dir or None)
        rows = [(v.name, v.gender, ", ".join(v.languages)) for v in bundle.voices]
        state, version = bundle.state, bundle.config.version
    print(_table(rows))
    note = " (pseudo weights: the audio is noise)" if state == "demo" else ""
    print(f"model: {state}{note}, version {version or 'unknown'}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """Fetch the published model files into `--model-dir` (default: the cache)."""
    from supertonic_grpc.model.hub import DownloadError, download

    try:
        path = download(Path(args.model_dir) if args.model_dir else None, token=args.token)
    except DownloadError as exc:
        raise CommandError(str(exc)) from None
    print(f"Supertonic-2 files are in {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the gRPC server until SIGTERM."""
    from supertonic_grpc.server import run
    from supertonic_grpc.settings import load_settings

    try:
        settings = load_settings(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return run(settings)


def cmd_bench(args: argparse.Namespace) -> int:
    """The engine benchmark (see `benchmarks.engine_bench`, beside this package)."""
    from benchmarks import engine_bench as bench

    return bench.main(args)


# --- parser ------------------------------------------------------------------------------------


def _add_model_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", default="", help="published model files (default: the cache)")


def _add_server(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default="", metavar="HOST:PORT", help="ask this server instead")
    p.add_argument("--timeout", type=float, default=None, help="deadline in seconds (--server)")
    p.add_argument("--tls", action="store_true", help="connect with TLS (system CA roots)")
    p.add_argument("--tls-ca", default="", metavar="PEM", help="CA that signed the server (TLS)")
    p.add_argument("--tls-cert", default="", metavar="PEM", help="client certificate (mTLS)")
    p.add_argument("--tls-key", default="", metavar="PEM", help="client private key (mTLS)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("SUPERTONIC_API_KEY", ""),
        help="bearer token for the server (default: $SUPERTONIC_API_KEY)",
    )


def _connect(args: argparse.Namespace) -> Any:
    """A `SupertonicClient` for `--server` with the TLS and API key flags."""
    from supertonic_client.client import SupertonicClient

    def read(path: str) -> bytes | None:
        try:
            return Path(path).read_bytes() if path else None
        except OSError as exc:
            raise UsageError(f"{path}: {exc.strerror}") from None

    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    return SupertonicClient(
        args.server,
        tls=args.tls or bool(args.tls_ca or args.tls_cert),
        root_certificates=read(args.tls_ca),
        certificate_chain=read(args.tls_cert),
        private_key=read(args.tls_key),
        api_key=args.api_key or None,
        timeout=args.timeout,
    )


def _add_say(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    p.add_argument("--sample-rate", type=int, default=0, help="Hz, 8000..48000 (0: 44100)")
    p.add_argument("--device", default="auto", help="local model device: auto, cpu, cuda")
    _add_model_dir(p)
    _add_server(p)
    p.set_defaults(func=cmd_say)


def build_parser() -> argparse.ArgumentParser:
    """The full command-line parser."""
    parser = argparse.ArgumentParser(prog=PROG, description="Supertonic-2 text-to-speech over gRPC")
    parser.add_argument("-v", "--verbose", action="store_true", help="log INFO and DEBUG too")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from supertonic_grpc.settings import add_arguments

    serve = sub.add_parser("serve", help="run the gRPC server")
    add_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    _add_say(sub)

    voices = sub.add_parser("voices", help="list voices and the model state")
    _add_model_dir(voices)
    _add_server(voices)
    voices.set_defaults(func=cmd_voices)

    download = sub.add_parser("download", help="fetch the published model from Hugging Face")
    _add_model_dir(download)
    download.add_argument("--token", default=None, help="Hugging Face token (default: HF_TOKEN)")
    download.set_defaults(func=cmd_download)

    from benchmarks import engine_bench as bench

    bench_parser = sub.add_parser("bench", help="engine benchmark: real-time factor by batch")
    bench.add_arguments(bench_parser)
    bench_parser.set_defaults(func=cmd_bench)
    return parser


def _setup_logging(verbose: bool, command: str) -> None:
    if command == "serve":
        return  # the server configures logging from its own --log-level setting
    quiet = command in {"say", "voices"}
    level = logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 1 failure, 2 bad input)."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose, args.command)
    try:
        code: int = args.func(args)
    except UsageError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
