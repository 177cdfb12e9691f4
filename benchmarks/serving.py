"""The serving phase of `make bench`: the real server under saturating load, per batch size.

For each batch size B the server is spawned (`--max-batch B --max-wait-ms 20`, no step budget
below B chunks) and kept busy by 2B+2 clients, each sending one ~100-character chunk per
request back to back, so B chunks are always ready to share each flow step. Throughput is
measured from the replies over a fixed window after a warm-up and set beside the engine's
own throughput at the same batch size, measured in the same run: serving overhead is one
ratio. The engine is timed again just before and just after each serving window, and the
ratio divides by the mean of those two: a shared machine's speed drifts over the minutes
between the engine table and the serving phase (on a 2-core EPYC the same code measured
0.78 and 0.94 in consecutive runs against the table alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from loadtest import prom
from loadtest.runner import open_channels
from loadtest.spawn import SpawnedServer
from supertonic_client._proto.supertonic.v1 import tts_pb2, tts_pb2_grpc

log = logging.getLogger(__name__)

MAX_WAIT_MS = 20  # long enough for a freed client's next request to join the batch
SATURATED = 0.9  # average batch >= 90% of --max-batch counts as saturated


@dataclass
class Reply:
    """One request as the client saw it (times from time.monotonic())."""

    start: float
    end: float = 0.0
    first_chunk: float | None = None  # arrival of the first audio
    audio_s: float = 0.0
    chunks: int = 0
    batch_size: int = 0  # the largest step it shared
    compute_s: float = 0.0  # admission to last audio
    code: str = "OK"


@dataclass
class ServingRow:
    """The server at one --max-batch, beside the engine at the same batch size."""

    batch_size: int
    clients: int
    window_s: float
    requests: int  # replies whose batch finished inside the window
    errors: int
    batches: int  # batches that finished inside the window
    audio_s: float  # audio counted by the throughput estimate
    span_s: float  # wall time the estimate divides by
    server_rtf: float | None  # audio seconds per wall second through gRPC
    engine_rtf: float | None  # the engine alone (eager), same batch size, same run
    ratio: float | None  # server_rtf / engine_rtf: 1.0 means no serving overhead
    avg_batch_metrics: float | None  # supertonic_batch_size_sum/_count delta over the window
    avg_batch_replies: float | None  # mean batch size of the replies' batches
    latency_p50_s: float | None  # request latency under this load (mostly queueing)
    saturated: bool
    chunks_per_request: float | None = None
    note: str = ""
    # The engine re-timed just before and just after the window; `ratio` uses their mean.
    engine_rtf_around: tuple[float, float] | None = None

    def bracket(self, before: float, after: float) -> None:
        """Judge the server against the engine timed around its window."""
        self.engine_rtf_around = (before, after)
        self.ratio = serving_ratio(self.server_rtf, (before + after) / 2)


@dataclass
class _Batch:
    done: float  # first arrival among its items
    size: int
    audio_s: float
    items: int = 0  # how many of its items were ours and arrived


def group_batches(replies: Sequence[Reply]) -> list[_Batch]:
    """Successful replies as units of completion, ordered by when each finished.

    The scheduler batches continuously (chunks join and leave the running set between flow
    steps), so requests complete one by one rather than in whole batches: each reply is its
    own unit, done when its last audio arrived; `size` is the largest step it shared.
    """
    done = [
        _Batch(r.end, r.batch_size, r.audio_s, 1)
        for r in replies
        if r.code == "OK" and r.first_chunk is not None
    ]
    return sorted(done, key=lambda b: b.done)


def throughput(replies: Sequence[Reply], t0: float, t1: float) -> tuple[float | None, float, float]:
    """Audio seconds per wall second over [t0, t1]: (rtf, audio counted, span).

    Counting the audio that happens to land in a fixed window would be off by up to one
    request. Instead the estimate runs from the first completion in the window to the last
    one, and counts the audio of the completions after the first: whole requests over the
    time they took, overhead included.
    """
    done = [b for b in group_batches(replies) if t0 <= b.done <= t1]
    if len(done) < 2:
        return None, sum(b.audio_s for b in done), t1 - t0
    span = done[-1].done - done[0].done
    audio = sum(b.audio_s for b in done[1:])
    return (audio / span if span > 0 else None), audio, span


def summarize(
    batch_size: int,
    clients: int,
    replies: Sequence[Reply],
    t0: float,
    t1: float,
    engine_rtf: float | None,
    server_delta: dict[str, Any] | None,
) -> ServingRow:
    """One ServingRow from the raw replies of a window and the metrics delta around it."""
    rtf, audio, span = throughput(replies, t0, t1)
    in_window = [r for r in replies if r.first_chunk is not None and t0 <= r.end <= t1]
    batches = [b for b in group_batches(replies) if t0 <= b.done <= t1]
    errors = sum(1 for r in replies if r.code != "OK" and t0 <= r.end <= t1)
    avg_metrics = server_delta.get("avg_batch_size") if server_delta else None
    avg_replies = statistics.fmean(b.size for b in batches) if batches else None
    formed = avg_metrics if avg_metrics is not None else avg_replies
    saturated = formed is not None and formed >= SATURATED * batch_size
    notes = []
    if rtf is None:
        notes.append("fewer than two batches finished in the window: make it longer")
    if formed is not None and not saturated:
        notes.append(f"did not saturate: average batch {formed:.2f} of {batch_size}")
    if errors:
        notes.append(f"{errors} failed requests")
    return ServingRow(
        batch_size=batch_size,
        clients=clients,
        window_s=t1 - t0,
        requests=len(in_window),
        errors=errors,
        batches=len(batches),
        audio_s=audio,
        span_s=span,
        server_rtf=rtf,
        engine_rtf=engine_rtf,
        ratio=serving_ratio(rtf, engine_rtf),
        avg_batch_metrics=avg_metrics,
        avg_batch_replies=avg_replies,
        latency_p50_s=statistics.median(r.end - r.start for r in in_window) if in_window else None,
        saturated=saturated,
        chunks_per_request=statistics.fmean(r.chunks for r in in_window) if in_window else None,
        note="; ".join(notes),
    )


def serving_ratio(server_rtf: float | None, engine_rtf: float | None) -> float | None:
    """Server throughput over raw engine throughput; None when either is unknown."""
    if server_rtf is None or not engine_rtf:
        return None
    return server_rtf / engine_rtf


def default_clients(batch_size: int) -> int:
    """Enough clients that a full batch waits while the previous one computes."""
    return 2 * batch_size + 2


# --- driving the server ---------------------------------------------------------------------


@dataclass
class ServingConfig:
    """What the serving phase needs from the command line."""

    batch_sizes: list[int]
    texts: Sequence[str]
    voices: Sequence[str]
    steps: int = 5
    seconds: float = 25.0
    warmup_s: float = 6.0
    clients: int = 0  # 0: default_clients(B)
    device: str = "auto"
    model_dir: str = ""  # "" means demo weights (an empty directory)
    log_dir: Path = field(default_factory=lambda: Path("reports/serving"))
    ready_timeout_s: float = 300.0


async def _client(
    stub: tts_pb2_grpc.TextToSpeechStub,
    cfg: ServingConfig,
    index: int,
    clients: int,
    stop_at: float,
    replies: list[Reply],
) -> None:
    k = index
    while time.monotonic() < stop_at:
        # Clients walk the texts out of step, so every batch mixes lengths as the engine's does.
        request = tts_pb2.SynthesizeRequest(
            text=cfg.texts[k % len(cfg.texts)],
            voice=cfg.voices[k % len(cfg.voices)],
            language="en",
            steps=cfg.steps,
            audio_config=tts_pb2.AudioConfig(encoding=tts_pb2.LINEAR16),
            # One chunk per request, as the engine phase synthesizes each text whole.
            chunking=tts_pb2.ChunkingConfig(max_chunk_chars=300, first_chunk_chars=300),
        )
        k += clients
        rec = Reply(start=time.monotonic())
        replies.append(rec)
        try:
            async for message in stub.Synthesize(request, timeout=120.0):
                if message.WhichOneof("event") == "chunk":
                    if rec.first_chunk is None:
                        rec.first_chunk = time.monotonic()
                    rec.batch_size = max(rec.batch_size, message.chunk.timings.batch_size)
                    rec.compute_s = message.chunk.timings.compute_seconds
                    rec.chunks += message.chunk.last_piece
                    rec.audio_s += message.chunk.duration_seconds
        except grpc.aio.AioRpcError as exc:
            rec.code = exc.code().name
            await asyncio.sleep(0.1)  # no spinning on an instant rejection
        finally:
            rec.end = time.monotonic()


async def _measure(
    server: SpawnedServer, cfg: ServingConfig, batch_size: int, engine_rtf: float | None
) -> ServingRow:
    clients = cfg.clients or default_clients(batch_size)
    replies: list[Reply] = []
    channel = open_channels(server.address, 1)[0]
    try:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        start = time.monotonic()
        stop_at = start + cfg.warmup_s + cfg.seconds
        tasks = [
            asyncio.ensure_future(_client(stub, cfg, i, clients, stop_at, replies))
            for i in range(clients)
        ]
        await asyncio.sleep(cfg.warmup_s)  # uncounted: the first batches form unevenly
        before, t0 = await prom.scrape_or_none(server.metrics_url), time.monotonic()
        await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
        after, t1 = await prom.scrape_or_none(server.metrics_url), time.monotonic()
        # Cancelling drops the queued work, so the server drains in one batch time.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await channel.close()
    return summarize(
        batch_size, clients, replies, t0, t1, engine_rtf, prom.level_delta(before, after)
    )


async def _serve_one(
    cfg: ServingConfig, batch_size: int, model_dir: str, engine_rtf: float | None
) -> ServingRow:
    server_args = [
        "--max-batch", str(batch_size),
        "--max-wait-ms", str(MAX_WAIT_MS),
        # The same batch as the engine phase: no step budget below B ~100-character chunks.
        "--max-batch-tokens", "100000",
        "--default-steps", str(cfg.steps),
        "--device", cfg.device,
        "--model-dir", model_dir,
    ]  # fmt: skip
    log_path = cfg.log_dir / f"server-batch{batch_size}.log"
    with SpawnedServer(server_args, log_path) as server:
        await server.wait_ready(cfg.ready_timeout_s)
        row = await _measure(server, cfg, batch_size, engine_rtf)
        server.stop()
    return row


def run_serving(
    cfg: ServingConfig,
    engine_rtf: dict[int, float],
    retime: Callable[[int], float] | None = None,
) -> list[ServingRow]:
    """Spawn and saturate the server once per batch size; one row each (logged as it goes).
    With `retime` (the engine's RTF at a batch size, timed now), each row is judged against
    the engine timed just before and just after its window."""
    rows: list[ServingRow] = []
    with contextlib.ExitStack() as stack:
        model_dir = cfg.model_dir
        if not model_dir:
            # An empty directory makes the server load the demo bundle whatever the
            # environment's SUPERTONIC_MODEL_DIR or cache holds, matching the engine phase.
            model_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-demo-"))
        for n in cfg.batch_sizes:
            before = retime(n) if retime else None
            row = asyncio.run(_serve_one(cfg, n, model_dir, engine_rtf.get(n)))
            if retime is not None and before is not None:
                row.bracket(before, retime(n))
            rows.append(row)
            log.info(
                "serving batch %d: %s x real time (engine %s), ratio %s, average batch %s%s",
                n, _fmt(row.server_rtf), _fmt(row.engine_rtf), _fmt(row.ratio),
                _fmt(row.avg_batch_metrics), f" ({row.note})" if row.note else "",
            )  # fmt: skip
    return rows


# --- report ---------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render_serving(rows: Sequence[ServingRow], cfg: dict[str, Any]) -> list[str]:
    """The serving-overhead section of bench.md, as lines."""
    if not rows:
        return []
    lines = [
        "",
        "## Serving overhead (server under saturating load vs engine alone)",
        "",
        f"- spawned server per batch size B: `--max-batch B --max-wait-ms {MAX_WAIT_MS} "
        f"--default-steps {cfg.get('steps')}`, eager; 2B+2 clients unless set, each sending "
        f"one ~100-character chunk per request back to back; {cfg.get('warmup_s'):g} s "
        f"warm-up, then {cfg.get('seconds'):g} s measured",
        "- server RTF: audio of whole requests finished in the window / the wall time they "
        "took; engine RTF: the eager engine table above (same run, same batch size); "
        "*around*: the same engine timed just before / just after the window. The ratio "
        "divides by the mean of *around* when it was measured, else by the table's figure.",
        "",
        "| B | clients | batches | engine RTF | around (before / after) | server RTF | "
        "server / engine | avg batch (metrics) | avg batch (replies) | latency p50 s | "
        "saturated |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        around = r.engine_rtf_around
        around_s = "–" if around is None else f"{around[0]:.2f} / {around[1]:.2f}"
        lines.append(
            f"| {r.batch_size} | {r.clients} | {r.batches} | {_fmt(r.engine_rtf)} | "
            f"{around_s} | {_fmt(r.server_rtf)} | {_fmt(r.ratio)} | {_fmt(r.avg_batch_metrics)} | "
            f"{_fmt(r.avg_batch_replies)} | {_fmt(r.latency_p50_s)} | "
            f"{'yes' if r.saturated else 'NO'} |"
        )
    lines.append("")
    for r in rows:
        if r.note:
            lines.append(f"- B={r.batch_size}: {r.note}")
    return lines
