"""The `supertonic-grpc` command: serve, say, voices, download, bench.

Results go to stdout; diagnostics go to stderr through logging. Bad input ends with one line
on stderr and exit code 2; other failures (network, server) with exit code 1.

Building the parser imports no model, torch, server or benchmark code: each command imports
what it needs when it runs (`say --server` needs only the light client).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from supertonic_grpc.cli import say
from supertonic_grpc.cli.common import (
    PROG,
    CommandError,
    UsageError,
    add_model_dir,
    add_server,
    connect,
)

__all__ = ["PROG", "CommandError", "UsageError", "build_parser", "main"]

log = logging.getLogger("supertonic_grpc.cli")


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
            with connect(args) as client:
                listing = client.voices()
        except SupertonicError as exc:
            raise CommandError(f"server {args.server}: {exc}") from None
        rows = [(v.name, v.gender, ", ".join(v.languages)) for v in listing.voices]
        state, version = listing.model_state, listing.model_version
    else:
        from supertonic_grpc import bundle

        model = bundle.load_bundle(args.model_dir or None)
        rows = [(v.name, v.gender, ", ".join(v.languages)) for v in model.voices]
        state, version = model.state, model.config.version
    print(_table(rows))
    note = " (pseudo weights: the audio is noise)" if state == "demo" else ""
    print(f"model: {state}{note}, version {version or 'unknown'}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """Fetch the published model files into `--model-dir` (default: the cache)."""
    from supertonic_grpc.model.hub import DownloadError, download

    try:
        path = download(
            Path(args.model_dir) if args.model_dir else None,
            token=args.token,
            revision=args.revision,
            weights_revision=args.weights_revision,
            weights_sha256=args.weights_sha256,
        )
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
    """The engine benchmark (`benchmarks.engine_bench`, beside this package): imported only
    here, since it pulls in the load tester and the ONNX baseline."""
    from benchmarks import engine_bench

    return engine_bench.main(args.bench_args)


# --- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The full command-line parser."""
    parser = argparse.ArgumentParser(prog=PROG, description="Supertonic-2 text-to-speech over gRPC")
    parser.add_argument("-v", "--verbose", action="store_true", help="log INFO and DEBUG too")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from supertonic_grpc.settings import add_arguments

    serve = sub.add_parser("serve", help="run the gRPC server")
    add_arguments(serve)
    serve.set_defaults(func=cmd_serve)

    say.add_parser(sub)

    voices = sub.add_parser("voices", help="list voices and the model state")
    add_model_dir(voices)
    add_server(voices)
    voices.set_defaults(func=cmd_voices)

    download = sub.add_parser("download", help="fetch the published model from Hugging Face")
    add_model_dir(download)
    download.add_argument("--token", default=None, help="Hugging Face token (default: HF_TOKEN)")
    download.add_argument(
        "--revision", default=None, help="commit of Supertone/supertonic-2 (default: the lock)"
    )
    download.add_argument(
        "--weights-revision", default=None, help="commit of the weights repository"
    )
    download.add_argument(
        "--weights-sha256", default=None, help="expected SHA-256 of supertonic.safetensors"
    )
    download.set_defaults(func=cmd_download)

    # The benchmark's own parser reads the rest (`bench --help` lists its flags), so the
    # benchmarks are imported only when the command runs.
    bench = sub.add_parser(
        "bench", help="engine benchmark: real-time factor by batch", add_help=False
    )
    bench.set_defaults(func=cmd_bench, bench_args=[])
    return parser


def _setup_logging(verbose: bool, command: str) -> None:
    if command == "serve":
        return  # the server configures logging from its own --log-level setting
    quiet = command in {"say", "voices"}
    level = logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 1 failure, 2 bad input)."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
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
