"""Tests for supertonic_grpc.metrics: names, values, isolation, the HTTP endpoint."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from supertonic_grpc.metrics import Metrics
from supertonic_grpc.playback import PlaybackClock

NAMES = [
    "supertonic_requests_total",
    "supertonic_time_to_first_audio_seconds",
    "supertonic_queue_wait_seconds",
    "supertonic_compute_seconds",
    "supertonic_batch_compute_seconds",
    "supertonic_queue_depth",
    "supertonic_batch_size",
    "supertonic_audio_seconds_total",
    "supertonic_chunks_total",
    "supertonic_active_streams",
    "supertonic_underruns_total",
    "supertonic_underrun_seconds_total",
    "supertonic_rejected_total",
    "supertonic_model_info",
    "supertonic_model_warm",
    "supertonic_device_memory_bytes",
]


def value(m: Metrics, name: str, labels: dict[str, str] | None = None) -> float | None:
    return m.registry.get_sample_value(name, labels or {})


def test_every_metric_is_rendered_with_the_prefix() -> None:
    text = Metrics().render().decode()
    for name in NAMES:
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
        assert name in text, name
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert line.startswith("supertonic_"), line


def test_known_label_values_start_at_zero() -> None:
    m = Metrics()
    assert value(m, "supertonic_queue_depth", {"priority": "high"}) == 0.0
    assert value(m, "supertonic_chunks_total", {"priority": "normal"}) == 0.0
    assert value(m, "supertonic_rejected_total", {"reason": "queue_full"}) == 0.0
    assert value(m, "supertonic_queue_wait_seconds_count", {"priority": "normal"}) == 0.0


def test_values_move_when_observed() -> None:
    m = Metrics()
    m.requests_total.labels(rpc="Synthesize", code="OK").inc()
    m.requests_total.labels(rpc="Synthesize", code="INVALID_ARGUMENT").inc(2)
    m.time_to_first_audio_seconds.labels(rpc="Synthesize").observe(0.12)
    m.queue_wait_seconds.labels(priority="high").observe(0.003)
    m.compute_seconds.labels(priority="high").observe(0.04)
    m.batch_compute_seconds.observe(0.04)
    m.queue_depth.labels(priority="normal").set(7)
    m.batch_size.observe(3)
    m.audio_seconds_total.inc(2.5)
    m.chunks_total.labels(priority="high").inc()
    m.active_streams.inc()
    m.rejected_total.labels(reason="draining").inc()
    m.model_warm.set(1)
    m.device_memory_bytes.labels(kind="allocated").set(1 << 30)
    m.set_model_info(state="demo", device="cpu", dtype="float32", compiled=False, version="0.1")

    assert value(m, "supertonic_requests_total", {"rpc": "Synthesize", "code": "OK"}) == 1
    assert (
        value(m, "supertonic_requests_total", {"rpc": "Synthesize", "code": "INVALID_ARGUMENT"})
        == 2
    )
    ttfa = {"rpc": "Synthesize"}
    assert value(m, "supertonic_time_to_first_audio_seconds_count", ttfa) == 1
    assert value(m, "supertonic_time_to_first_audio_seconds_sum", ttfa) == pytest.approx(0.12)
    le = {"rpc": "Synthesize", "le": "0.15"}
    assert value(m, "supertonic_time_to_first_audio_seconds_bucket", le) == 1
    assert value(m, "supertonic_queue_wait_seconds_count", {"priority": "high"}) == 1
    assert value(m, "supertonic_compute_seconds_sum", {"priority": "high"}) == pytest.approx(0.04)
    assert value(m, "supertonic_batch_compute_seconds_count") == 1
    assert value(m, "supertonic_queue_depth", {"priority": "normal"}) == 7
    assert value(m, "supertonic_batch_size_bucket", {"le": "4.0"}) == 1
    assert value(m, "supertonic_batch_size_bucket", {"le": "2.0"}) == 0
    assert value(m, "supertonic_audio_seconds_total") == 2.5
    assert value(m, "supertonic_chunks_total", {"priority": "high"}) == 1
    assert value(m, "supertonic_active_streams") == 1
    assert value(m, "supertonic_rejected_total", {"reason": "draining"}) == 1
    assert value(m, "supertonic_model_warm") == 1
    assert value(m, "supertonic_device_memory_bytes", {"kind": "allocated"}) == 1 << 30
    info = {"state": "demo", "device": "cpu", "dtype": "float32", "compiled": "false"}
    assert value(m, "supertonic_model_info", {**info, "version": "0.1"}) == 1


def test_batch_size_buckets_are_powers_of_two() -> None:
    text = Metrics().render().decode()
    les = [
        line.split('le="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("supertonic_batch_size_bucket")
    ]
    assert les == ["1.0", "2.0", "4.0", "8.0", "16.0", "32.0", "64.0", "128.0", "+Inf"]


def test_underruns_from_a_playback_clock() -> None:
    m = Metrics()
    clock = PlaybackClock()
    for now, duration in [(0.0, 1.0), (0.5, 1.0), (2.5, 1.0), (4.0, 0.5)]:
        m.observe_playback(clock.on_chunk_sent(now, duration))
    assert value(m, "supertonic_underruns_total") == 2
    assert value(m, "supertonic_underrun_seconds_total") == pytest.approx(1.0)


def test_instances_do_not_share_values() -> None:
    a, b = Metrics(), Metrics()
    a.audio_seconds_total.inc(3)
    a.active_streams.set(2)
    assert value(a, "supertonic_audio_seconds_total") == 3
    assert value(b, "supertonic_audio_seconds_total") == 0
    assert value(b, "supertonic_active_streams") == 0


def test_given_registry_is_used() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry)
    assert m.registry is registry
    m.underruns_total.inc()
    assert registry.get_sample_value("supertonic_underruns_total") == 1


def test_http_server_serves_metrics_and_shuts_down() -> None:
    m = Metrics()
    m.chunks_total.labels(priority="normal").inc(5)
    server, thread = m.start_http_server(0, "127.0.0.1")
    try:
        port = server.server_port
        assert port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.status == 200
            body = resp.read().decode()
        for name in NAMES:
            assert name.removesuffix("_total") in body
        assert 'supertonic_chunks_total{priority="normal"} 5.0' in body
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert not thread.is_alive()
