"""Every Prometheus metric of the server, in one place.

Conventions: prefix ``supertonic_``, counters end in ``_total``, durations are ``_seconds``
histograms with explicit buckets, and labels take a handful of values (never a request id).
Each :class:`Metrics` owns its registry so that several servers can share one test process.
"""

from __future__ import annotations

import threading
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from supertonic_grpc.metrics_http import Route, serve_http

__all__ = ["PRIORITIES", "REJECT_REASONS", "Metrics"]

PREFIX = "supertonic"
PRIORITIES = ("high", "normal")
REJECT_REASONS = ("queue_full", "too_many_streams", "too_many_streams_per_peer", "draining")

# Time to first audio: tens of milliseconds on a warm GPU, seconds on a loaded CPU.
LATENCY_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
)  # fmt: skip
# Queue waits start near zero when idle, so the low end is finer.
WAIT_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# One batched forward pass: a few ms for a short chunk on GPU, up to seconds for a big CPU batch.
COMPUTE_BUCKETS = (
    0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# The service's RPCs, and those that observe time to first audio.
RPCS = ("Synthesize", "SynthesizeOnce", "ListVoices")
AUDIO_RPCS = ("Synthesize", "SynthesizeOnce")


class Metrics:
    """The server's metrics, registered in ``registry`` (a fresh one when None)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        reg = self.registry

        def name(short: str) -> str:
            return f"{PREFIX}_{short}"

        self.requests_total = Counter(
            name("requests_total"),
            "Finished RPCs by method and gRPC status code.",
            ["rpc", "code"],
            registry=reg,
        )
        self.time_to_first_audio_seconds = Histogram(
            name("time_to_first_audio_seconds"),
            "From request arrival to the first audio chunk sent.",
            ["rpc"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.queue_wait_seconds = Histogram(
            name("queue_wait_seconds"),
            "Per chunk: from submission to the start of its batch.",
            ["priority"],
            buckets=WAIT_BUCKETS,
            registry=reg,
        )
        self.compute_seconds = Histogram(
            name("compute_seconds"),
            "Per chunk: model time of the batch that computed it.",
            ["priority"],
            buckets=COMPUTE_BUCKETS,
            registry=reg,
        )
        self.batch_compute_seconds = Histogram(
            name("batch_compute_seconds"),
            "Model time per batch.",
            buckets=COMPUTE_BUCKETS,
            registry=reg,
        )
        self.queue_depth = Gauge(
            name("queue_depth"), "Chunks waiting for the model.", ["priority"], registry=reg
        )
        self.running_chunks = Gauge(
            name("running_chunks"),
            "Chunks admitted into the engine and not yet fully vocoded (the running set).",
            registry=reg,
        )
        self.batch_size = Histogram(
            name("batch_size"),
            "Chunks per model batch (per flow step).",
            buckets=BATCH_SIZE_BUCKETS,
            registry=reg,
        )
        self.audio_seconds_total = Counter(
            name("audio_seconds_total"), "Seconds of audio generated.", registry=reg
        )
        self.chunks_total = Counter(
            name("chunks_total"), "Chunks generated.", ["priority"], registry=reg
        )
        self.active_streams = Gauge(
            name("active_streams"), "Streaming RPCs in progress.", registry=reg
        )
        self.active_unary_requests = Gauge(
            name("active_unary_requests"), "Unary RPCs in progress.", ["rpc"], registry=reg
        )
        self.stalled_streams_total = Counter(
            name("stalled_streams_total"),
            "Streams ended because the client read nothing for the write-stall timeout.",
            registry=reg,
        )
        self.sentence_to_audio_seconds = Histogram(
            name("sentence_to_audio_seconds"),
            "StreamingSynthesize: from the text that completes a sentence (or a flush, a stall,"
            " the end of input) to that text's first audio sent.",
            ["trigger"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.barge_in_total = Counter(
            name("barge_in_total"),
            "StreamingSynthesize calls cancelled by the client (barge-in) before they ended.",
            registry=reg,
        )
        self.underruns_total = Counter(
            name("underruns_total"),
            "Chunks sent after the listener would have run out of audio.",
            registry=reg,
        )
        self.underrun_seconds_total = Counter(
            name("underrun_seconds_total"), "Summed length of playback gaps.", registry=reg
        )
        self.rejected_total = Counter(
            name("rejected_total"),
            "Requests refused by admission control, by reason.",
            ["reason"],
            registry=reg,
        )
        # Info renders as supertonic_model_info{state=...,device=...} 1
        self.model_info = Info(
            name("model"),
            "Loaded model: demo or real weights, device, dtype, compile.",
            registry=reg,
        )
        self.model_warm = Gauge(
            name("model_warm"), "1 once warm-up has finished, else 0.", registry=reg
        )
        self.device_memory_bytes = Gauge(
            name("device_memory_bytes"),
            "Accelerator memory in use (allocated, reserved).",
            ["kind"],
            registry=reg,
        )
        self.oom_splits_total = Counter(
            name("oom_splits"),
            "Batches halved and retried after the device ran out of memory.",
            registry=reg,
        )
        # Known label values start at zero, so dashboards see 0 rather than "no data".
        for priority in PRIORITIES:
            for metric in (self.queue_wait_seconds, self.compute_seconds, self.chunks_total):
                metric.labels(priority=priority)
            self.queue_depth.labels(priority=priority).set(0)
        for reason in REJECT_REASONS:
            self.rejected_total.labels(reason=reason)
        # A series born with its first observations hides them from rate(): start at 0.
        for rpc in RPCS:
            self.requests_total.labels(rpc=rpc, code="OK")
        for rpc in AUDIO_RPCS:
            self.time_to_first_audio_seconds.labels(rpc=rpc)

    def set_model_info(
        self, *, state: str, device: str, dtype: str, compiled: bool, version: str
    ) -> None:
        """Publish what model is loaded; ``state`` is "demo" or "real"."""
        self.model_info.info(
            {
                "state": state,
                "device": device,
                "dtype": dtype,
                "compiled": "true" if compiled else "false",
                "version": version,
            }
        )

    def observe_playback(self, gap_seconds: float) -> None:
        """Count one underrun of ``gap_seconds`` (as returned by
        :meth:`playback.PlaybackClock.on_chunk_sent`); a gap of 0 counts nothing."""
        if gap_seconds > 0.0:
            self.underruns_total.inc()
            self.underrun_seconds_total.inc(gap_seconds)

    def render(self) -> bytes:
        """The text exposition format of this registry."""
        return generate_latest(self.registry)

    def start_http_server(
        self,
        port: int,
        addr: str = "0.0.0.0",
        routes: dict[str, Route] | None = None,
        **options: Any,
    ) -> tuple[WSGIServer, threading.Thread]:
        """Serve ``/metrics`` from this registry (plus any extra `routes`, e.g. the server's
        ``/healthz`` and ``/readyz`` probes) on a daemon thread; see
        :func:`metrics_http.serve_http` for the bounds and the `options` (TLS, API keys).
        ``port`` 0 picks a free port: read it from ``server.server_port``.
        """

        def metrics_page() -> tuple[str, str, bytes]:
            return "200 OK", CONTENT_TYPE_LATEST, self.render()

        return serve_http(addr, port, {"/metrics": metrics_page, **(routes or {})}, **options)
