"""Command line of ``python -m loadtest``: flags, validation and one-line errors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

from loadtest.corpus import LANGUAGES

PROG = "loadtest"
DEFAULTS: dict[str, Any] = {
    "users": [1, 2, 4, 8],
    "duration": 30.0,
    "requests": 0,
    "steps": 0,
    "max_sentences": 6,
    "warmup": 1,
}
# --smoke: a CI-sized run on a 2-core CPU; any flag given explicitly still wins.
SMOKE: dict[str, Any] = {
    "users": [1, 2],
    "duration": 20.0,
    "requests": 1,
    "steps": 2,
    "max_sentences": 1,
    "warmup": 1,
}


class UsageError(Exception):
    """A bad flag value, reported as one ``loadtest: error:`` line."""


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one error line to stderr and exit with ``code``."""
    flat = " ".join(str(message).split())
    print(f"{PROG}: error: {flat}", file=sys.stderr)
    raise SystemExit(code)


class _Parser(argparse.ArgumentParser):
    # argparse prints the whole usage block before its error; a one-line error is easier to
    # read in CI logs and to assert on.
    def error(self, message: str) -> NoReturn:
        fail(message)


def int_list(text: str) -> list[int]:
    """``"1,2,4"`` -> [1, 2, 4]; every item must be an integer >= 1."""
    items = [item.strip() for item in text.split(",")]
    values: list[int] = []
    for item in items:
        try:
            value = int(item)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers like 1,2,4, got {text!r}"
            ) from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"every level must be >= 1, got {value} in {text!r}")
        values.append(value)
    return values


def str_list(text: str) -> list[str]:
    """``"en,ko"`` -> ["en", "ko"] (no empty items)."""
    items = [item.strip() for item in text.split(",")]
    if any(not item for item in items):
        raise argparse.ArgumentTypeError(f"empty item in {text!r}")
    return items


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m loadtest`` argument parser."""
    p = _Parser(
        prog=PROG,
        description="Load-test a supertonic-grpc server: concurrent streams, time to first "
        "audio, playback gaps, throughput; writes report.json, report.md and charts.",
    )
    target = p.add_argument_group("target")
    target.add_argument("--address", default="localhost:50051", help="gRPC server host:port")
    target.add_argument(
        "--spawn", action="store_true", help="start a server on free loopback ports for the run"
    )
    target.add_argument(
        "--server-arg", action="append", default=[], metavar="FLAG",
        help="extra flag for the spawned server, e.g. --server-arg=--max-batch=4 (repeatable)",
    )  # fmt: skip
    target.add_argument(
        "--ready-timeout", type=float, default=120.0, help="seconds to wait for SERVING"
    )
    target.add_argument(
        "--metrics-url", default="http://127.0.0.1:9090/metrics",
        help="server's Prometheus endpoint ('' to skip); --spawn uses the spawned one",
    )  # fmt: skip
    load = p.add_argument_group("load")
    load.add_argument(
        "--mode", choices=("stream", "unary", "agent"), default="stream",
        help="agent: text in at --token-rate via StreamingSynthesize, vs T1 (loadtest/agent.py)",
    )  # fmt: skip
    load.add_argument("--token-rate", type=float, default=30.0, help="agent: tokens per second")
    load.add_argument("--turns", type=int, default=6, help="agent: turns to measure")
    load.add_argument(
        "--early-clause", action="store_true", help="agent: speak the first clause early"
    )
    load.add_argument(
        "--listeners", type=int_list, default=None, metavar="LEVELS",
        help="real-time listeners per level (1x playback, think time, staggered starts); "
        "also measures T1 and p95/T1",
    )  # fmt: skip
    load.add_argument(
        "--burst", type=int_list, default=None, metavar="LEVELS",
        help="streams started at one instant, once per level (with T1 and p95/T1)",
    )  # fmt: skip
    load.add_argument(
        "--find-capacity", action="store_true",
        help="with --listeners/--burst: search the highest level with 100%% gapless playback "
        "and p95 TTFA <= 2 x T1 (levels 1, 2, 4, ... then bisection)",
    )  # fmt: skip
    load.add_argument("--capacity-max", type=int, default=64, help="highest level searched")
    load.add_argument("--think-s", type=float, default=1.0, help="listeners' mean think time")
    load.add_argument(
        "--stagger-s", type=float, default=2.0, help="listeners' starts spread over this"
    )
    load.add_argument("--t1-repeats", type=int, default=5, help="idle tries T1 is the median of")
    load.add_argument(
        "--heavy", type=int, default=0, metavar="N",
        help="instead of levels: a 40-char request's TTFA idle vs with N maximum-cost requests "
        "(5000 chars, steps 50, speed 0.5) running; writes heavy.json/heavy.md",
    )  # fmt: skip
    load.add_argument("--heavy-settle-s", type=float, default=8.0, help="heavy warm-in time")
    load.add_argument(
        "--users", type=int_list, default=None, help="concurrency levels (default 1,2,4,8)"
    )
    load.add_argument("--duration", type=float, default=None, help="seconds per level (default 30)")
    load.add_argument(
        "--requests", type=int, default=None, help="requests per user and level (0: no cap)"
    )
    load.add_argument("--timeout", type=float, default=120.0, help="deadline of each request")
    load.add_argument("--channels", type=int, default=1, help="gRPC connections to spread over")
    load.add_argument("--warmup", type=int, default=None, help="uncounted requests first")
    req = p.add_argument_group("requests")
    req.add_argument("--voice", default="", help="voice name (default: the server's)")
    req.add_argument("--steps", type=int, default=None, help="flow steps (0: server default)")
    req.add_argument("--speed", type=float, default=0.0, help="speaking rate (0: default)")
    req.add_argument("--languages", type=str_list, default=list(LANGUAGES))
    req.add_argument("--max-sentences", type=int, default=None, help="longest text to send")
    req.add_argument("--seed", type=int, default=0, help="seed of the text draws")
    out = p.add_argument_group("output")
    out.add_argument("--out-dir", type=Path, default=Path("reports/loadtest"))
    out.add_argument(
        "--gap-tolerance-ms", type=float, default=20.0, help="shorter gaps count as jitter"
    )
    out.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    out.add_argument(
        "--smoke", action="store_true", help="tiny CI run: users 1,2, one short request, 2 steps"
    )
    out.add_argument("-v", "--verbose", action="store_true", help="debug logging to stderr")
    return p


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate ``argv``; exits with one error line on bad input."""
    args = build_parser().parse_args(argv)
    preset = SMOKE if args.smoke else DEFAULTS
    try:
        _check(not (args.listeners and args.burst), "--listeners and --burst are separate runs")
        if args.listeners or args.burst:
            _check(args.mode == "stream", "--listeners/--burst stream; drop --mode unary")
            _check(args.users is None, "--users is for back-to-back users; levels go to "
                   "--listeners/--burst")  # fmt: skip
            args.mode = "listen" if args.listeners else "burst"
            args.users = args.listeners or args.burst
        _check(
            not args.find_capacity or args.mode in ("listen", "burst"),
            "--find-capacity needs --listeners or --burst",
        )
        _check(args.capacity_max >= 1, "--capacity-max must be >= 1")
        _check(args.think_s >= 0, "--think-s must be >= 0")
        _check(args.stagger_s >= 0, "--stagger-s must be >= 0")
        _check(args.t1_repeats >= 1, "--t1-repeats must be >= 1")
        _check(args.heavy >= 0, "--heavy must be >= 0")
    except UsageError as exc:
        fail(str(exc))
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        _check(args.duration > 0, f"--duration must be > 0 seconds, got {args.duration:g}")
        _check(args.requests >= 0, f"--requests must be >= 0, got {args.requests}")
        _check(args.timeout > 0, f"--timeout must be > 0 seconds, got {args.timeout:g}")
        _check(args.ready_timeout > 0, "--ready-timeout must be > 0 seconds")
        _check(args.channels >= 1, f"--channels must be >= 1, got {args.channels}")
        _check(args.warmup >= 0, f"--warmup must be >= 0, got {args.warmup}")
        _check(0 <= args.steps <= 50, f"--steps must be 0..50, got {args.steps}")
        _check(
            args.speed == 0 or 0.5 <= args.speed <= 2.0,
            f"--speed must be 0 or 0.5..2.0, got {args.speed:g}",
        )
        _check(args.max_sentences >= 1, "--max-sentences must be >= 1")
        _check(args.token_rate > 0, f"--token-rate must be > 0, got {args.token_rate:g}")
        _check(args.turns >= 1, f"--turns must be >= 1, got {args.turns}")
        _check(args.gap_tolerance_ms >= 0, "--gap-tolerance-ms must be >= 0")
        unknown = sorted(set(args.languages) - set(LANGUAGES))
        _check(not unknown, f"no bundled texts for --languages {','.join(unknown)}")
        _check(
            len(set(args.users)) == len(args.users), f"--users has repeated levels: {args.users}"
        )
    except UsageError as exc:
        fail(str(exc))
    return args
