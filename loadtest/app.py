"""The whole run: optional spawned server, reachability check, warm-up, levels, reports."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from typing import Any

import grpc

from loadtest import agent, heavy, listeners, prom
from loadtest.cli import fail, parse_args
from loadtest.corpus import TextPicker, load_texts
from loadtest.report import build_report, render_markdown, write_reports
from loadtest.runner import (
    LevelResult,
    RunConfig,
    open_channels,
    probe,
    run_level,
    server_info,
    warm_up,
)
from loadtest.spawn import SpawnedServer, SpawnError
from supertonic_client._proto.supertonic.v1 import tts_pb2_grpc

log = logging.getLogger("loadtest")


class RunError(Exception):
    """The run cannot go on (server unreachable, never ready, ...)."""


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The traffic settings of parsed flags."""
    return RunConfig(
        address=args.address,
        mode=args.mode,
        users=list(args.users),
        duration_s=args.duration,
        requests=args.requests,
        timeout_s=args.timeout,
        voice=args.voice,
        steps=args.steps,
        speed=args.speed,
        channels=args.channels,
        tolerance_s=args.gap_tolerance_ms / 1000.0,
        seed=args.seed,
        warmup_requests=args.warmup,
        metrics_url=args.metrics_url or None,
        think_s=args.think_s,
        stagger_s=args.stagger_s,
    )


async def _wait_serving(channel: grpc.aio.Channel, address: str, timeout_s: float) -> None:
    """Fail fast when nothing answers; wait (up to ``timeout_s``) while it warms up."""
    try:
        status = await probe(channel, timeout_s=3.0)
    except grpc.aio.AioRpcError as exc:
        raise RunError(
            f"cannot reach a server at {address}: {exc.code().name} "
            f"(start one with `make run`, or pass --spawn)"
        ) from None
    deadline = time.monotonic() + timeout_s
    while status != "SERVING":
        if time.monotonic() > deadline:
            raise RunError(f"server at {address} is {status}, not SERVING, after {timeout_s:g} s")
        log.info("server at %s is %s; waiting", address, status)
        await asyncio.sleep(1.0)
        with contextlib.suppress(grpc.aio.AioRpcError):
            status = await probe(channel, timeout_s=3.0)


async def drive(cfg: RunConfig, args: argparse.Namespace) -> dict[str, Any]:
    """Run every level against ``cfg.address``; returns what the report needs."""
    picker = TextPicker(load_texts(tuple(args.languages), args.max_sentences), cfg.seed)
    channels = open_channels(cfg.address, cfg.channels)
    try:
        await _wait_serving(channels[0], cfg.address, args.ready_timeout)
        info = await server_info(channels[0])
        samples = None
        if cfg.metrics_url:
            try:
                samples = await asyncio.to_thread(prom.scrape, cfg.metrics_url)
            except (OSError, ValueError) as exc:
                log.warning("no server metrics (%s); server-side figures will be empty", exc)
                cfg.metrics_url = None
        info["model_info"] = prom.model_info(samples)
        log.info(
            "server %s: model %s %s; %s mode, levels %s",
            cfg.address, info["model_state"], info["model_version"], cfg.mode, cfg.users,
        )  # fmt: skip
        stubs = [tts_pb2_grpc.TextToSpeechStub(ch) for ch in channels]
        await warm_up(cfg, stubs[0], picker)
        if args.heavy:
            result = await heavy.run_heavy(
                stubs[0], cfg, args.heavy, args.t1_repeats, args.heavy_settle_s
            )
            return {"server_info": info, "levels": [], "heavy": result}
        if cfg.mode in ("listen", "burst"):
            return {"server_info": info, **await listeners.drive_levels(cfg, args, stubs, picker)}
        levels: list[LevelResult] = []
        for users in cfg.users:
            level = await run_level(cfg, stubs, picker, users)
            levels.append(level)
            log.info("%s", progress_line(level))
        return {"server_info": info, "levels": levels}
    finally:
        for channel in channels:
            await channel.close()


def progress_line(result: LevelResult) -> str:
    f = result.figures
    req = f["requests"]
    extra = ""
    if "ttfa_s" in f and f["ttfa_s"]["p50"] is not None:
        extra = f" ttfa p50 {f['ttfa_s']['p50']:.3f}s, underruns {f['underruns']['count']}"
    elif "latency_s" in f and f["latency_s"]["p50"] is not None:
        extra = f" latency p50 {f['latency_s']['p50']:.3f}s"
    return (
        f"users {result.users}: {req['ok']}/{req['started']} ok,{extra}, "
        f"{f['x_real_time']:.2f}x real time"
    )


async def execute(args: argparse.Namespace) -> dict[str, Any]:
    """Spawn (if asked), drive the levels, stop the server; returns the report."""
    cfg = config_from_args(args)
    started = time.time()
    server_exit: int | None = None
    if args.spawn:
        with SpawnedServer(args.server_arg, args.out_dir / "server.log") as server:
            log.info("spawned server on %s, waiting for SERVING", server.address)
            await server.wait_ready(args.ready_timeout)
            cfg.address, cfg.metrics_url = server.address, server.metrics_url
            run = await drive(cfg, args)
            server_exit = server.stop()
    else:
        run = await drive(cfg, args)
    report = build_report(
        cfg, args, run["levels"], run["server_info"], started, server_exit=server_exit
    )
    if "t1" in run:
        listeners.add_to_report(report, run)
    if "heavy" in run:
        report["heavy"] = run["heavy"]
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m loadtest``; returns the exit code."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="loadtest: %(message)s",
        stream=sys.stderr,
    )
    if args.mode == "agent":
        return agent.main(args)
    try:
        report = asyncio.run(execute(args))
        if "heavy" in report:
            paths = heavy.write(report["heavy"], args.out_dir)
            print(paths[1].read_text(encoding="utf-8"))
            return 0
        paths = write_reports(report, args.out_dir, charts=not args.no_charts)
    except (RunError, SpawnError, OSError, ValueError) as exc:
        fail(str(exc), code=1)
    except grpc.aio.AioRpcError as exc:
        fail(f"RPC failed: {exc.code().name}: {exc.details()}", code=1)
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    except Exception as exc:
        # A bug, not a usage problem: keep the one-line contract, the traceback under -v.
        log.debug("unexpected error", exc_info=True)
        fail(f"unexpected {type(exc).__name__}: {exc} (rerun with -v for details)", code=1)
    print(render_markdown(report))
    log.info("reports written: %s", ", ".join(str(p) for p in paths))
    return 0
