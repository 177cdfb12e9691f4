"""Logic of `make bench` (no model, no server, no timing): serving ratio, report, flags."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from benchmarks import engine_bench as bench
from benchmarks.serving import (
    Reply,
    ServingRow,
    default_clients,
    group_batches,
    render_serving,
    serving_ratio,
    summarize,
    throughput,
)


def _batch(done: float, size: int, compute: float, audio: float = 5.0) -> list[Reply]:
    """The replies of one server batch: same (size, compute) pair, arrivals a few ms apart."""
    return [
        Reply(
            start=done - 3.0,
            end=done + 0.002 * i + 0.001,
            first_chunk=done + 0.002 * i,
            audio_s=audio,
            chunks=1,
            batch_size=size,
            compute_s=compute,
        )
        for i in range(size)
    ]


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


# --- batches and throughput ---------------------------------------------------------------


def test_replies_are_units_of_completion_ordered_by_their_end() -> None:
    # Continuous batching: requests finish one by one, not in whole batches.
    replies = _batch(10.0, 4, 2.01) + _batch(12.0, 2, 1.99)
    failed = Reply(start=9.0, end=9.5, code="UNAVAILABLE")
    groups = group_batches([*reversed(replies), failed])
    assert [g.size for g in groups] == [4, 4, 4, 4, 2, 2]
    assert [g.done for g in groups] == pytest.approx(sorted(r.end for r in replies))
    assert all(g.audio_s == pytest.approx(5.0) for g in groups)


def test_throughput_counts_completions_between_first_and_last() -> None:
    # One 5 s reply finishing every 0.5 s: 10x real time, whatever the window edges.
    replies = [
        Reply(start=t - 2.0, end=t, first_chunk=t - 0.5, audio_s=5.0, chunks=1, batch_size=4)
        for t in (0.25 + 0.5 * k for k in range(30))
    ]
    rtf, audio, span = throughput(replies, t0=1.0, t1=11.0)
    # Finished in the window at 1.25 .. 10.75: 19 replies after the first, over 9.5 s.
    assert span == pytest.approx(9.5)
    assert audio == pytest.approx(95.0)
    assert rtf == pytest.approx(10.0)


def test_throughput_needs_two_completions() -> None:
    rtf, audio, _ = throughput(_batch(1.0, 1, 0.5), t0=0.0, t1=5.0)
    assert rtf is None
    assert audio == pytest.approx(5.0)


def test_serving_ratio() -> None:
    assert serving_ratio(9.0, 10.0) == pytest.approx(0.9)
    assert serving_ratio(None, 10.0) is None
    assert serving_ratio(9.0, None) is None
    assert serving_ratio(9.0, 0.0) is None


def test_default_clients_keep_a_full_batch_waiting() -> None:
    assert [default_clients(b) for b in (1, 4, 8)] == [4, 10, 18]


def test_summarize_saturated_window() -> None:
    replies = [
        Reply(start=t - 2.0, end=t, first_chunk=t - 0.5, audio_s=5.0, chunks=1, batch_size=4)
        for t in (0.25 + 0.5 * k for k in range(20))
    ]
    delta = {"avg_batch_size": 3.9, "batches": 5.0}
    row = summarize(4, 10, replies, 0.0, 10.0, engine_rtf=12.5, server_delta=delta)
    assert row.server_rtf == pytest.approx(10.0)
    assert row.ratio == pytest.approx(0.8)
    assert row.saturated
    assert row.avg_batch_metrics == pytest.approx(3.9)
    assert row.avg_batch_replies == pytest.approx(4.0)
    assert row.batches == 20
    assert row.requests == 20
    assert row.chunks_per_request == pytest.approx(1.0)
    assert row.note == ""


def test_summarize_says_when_the_load_did_not_saturate() -> None:
    replies = [r for k in range(5) for r in _batch(1.0 + k, 2, 1.0 + k / 1000)]
    row = summarize(8, 18, replies, 0.0, 10.0, engine_rtf=10.0, server_delta=None)
    assert not row.saturated
    assert row.avg_batch_metrics is None
    assert "did not saturate: average batch 2.00 of 8" in row.note


# --- report --------------------------------------------------------------------------------


def _report() -> bench.Report:
    rows = [
        bench.Row(bench.EAGER, 1, 5, 5.7, 0.8, 7.1, [0.8]),
        bench.Row(bench.EAGER, 4, 5, 22.7, 2.4, 9.5, [2.4]),
    ]
    report = bench.Report(
        {
            "cpu": "Test CPU",
            "cores": 2,
            "torch_threads": 2,
            "torch": "2.x",
            "python": "3.11",
            "device": "cpu",
            "dtype": "float32",
        },
        True,
        "demo",
        5,
        3,
        rows,
        {bench.EAGER: 0.4},
        {bench.EAGER: 3.0},
    )
    report.compile_note = "compiled phase not run (pass --compile)"
    report.onnxruntime_note = "onnxruntime not installed"
    report.serving_config = {"steps": 5, "seconds": 25.0, "warmup_s": 6.0}
    report.serving = [
        ServingRow(1, 4, 25.0, 30, 0, 30, 170.0, 24.0, 7.0, 7.1, 7.0 / 7.1, 1.0, 1.0, 3.3, True),
        ServingRow(4, 10, 25.0, 40, 0, 10, 220.0, 24.0, 9.0, 9.5, 9.0 / 9.5, 3.2, 3.2, 5.0, False),
    ]
    report.serving[1].note = "did not saturate: average batch 3.20 of 4"
    return report


def test_eager_rtf_is_the_serving_denominator() -> None:
    assert bench.eager_rtf(_report()) == {1: 7.1, 4: 9.5}


def test_render_markdown_has_engine_and_serving_tables() -> None:
    text = bench.render_markdown(_report())
    assert "| 4 | eager | 22.70 | 2.400 | 9.50 |  |" in text
    assert "## Serving overhead" in text
    assert "| 1 | 4 | 30 | 7.10 | – | 7.00 | 0.99 | 1.00 | 1.00 | 3.30 | yes |" in text
    assert "| 4 | 10 | 10 | 9.50 | – | 9.00 | 0.95 | 3.20 | 3.20 | 5.00 | NO |" in text
    assert "- B=4: did not saturate" in text
    assert "onnxruntime not installed" in text
    assert "pass --compile" in text


def test_render_serving_empty_and_missing_values() -> None:
    assert render_serving([], {}) == []
    row = ServingRow(8, 18, 5.0, 1, 0, 1, 0.0, 5.0, None, None, None, None, None, None, False)
    lines = render_serving([row], {"steps": 5, "seconds": 5.0, "warmup_s": 1.0})
    assert "| 8 | 18 | 1 | n/a | – | n/a | n/a | n/a | n/a | n/a | NO |" in lines


def test_a_serving_row_is_judged_against_the_engine_timed_around_its_window() -> None:
    # The table's engine figure (7.1) came minutes earlier; around the window the engine
    # ran at 6.0 and then 8.0: the server's 7.0 is 1.0 of their mean, not 0.99 of 7.1.
    row = ServingRow(1, 4, 25.0, 30, 0, 30, 170.0, 24.0, 7.0, 7.1, 7.0 / 7.1, 1.0, 1.0, 3.3, True)
    row.bracket(6.0, 8.0)
    assert row.ratio == pytest.approx(1.0) and row.engine_rtf == 7.1
    lines = render_serving([row], {"steps": 5, "seconds": 25.0, "warmup_s": 6.0})
    assert "| 1 | 4 | 30 | 7.10 | 6.00 / 8.00 | 7.00 | 1.00 | 1.00 | 1.00 | 3.30 | yes |" in lines


def test_write_reports_records_serving_ratio(tmp_path: Path) -> None:
    json_path, md_path = bench.write_reports(_report(), tmp_path)
    data = json.loads(json_path.read_text())
    assert data["serving_over_engine"] == {
        "1": pytest.approx(7.0 / 7.1),
        "4": pytest.approx(9.0 / 9.5),
    }
    assert data["serving"][0]["avg_batch_metrics"] == 1.0
    assert md_path.read_text().startswith("# Engine benchmark")


# --- flags ---------------------------------------------------------------------------------


def test_defaults_serve_and_skip_compile() -> None:
    args = _parse()
    assert args.batch_sizes == "1,4,8"
    assert not args.compile
    assert not args.no_serving
    assert args.serving_seconds == 25.0
    assert args.serving_warmup == 6.0
    assert args.serving_clients == 0


def test_new_flags_parse() -> None:
    args = _parse(
        "--compile", "--no-serving", "--serving-seconds", "10", "--serving-warmup", "2",
        "--serving-clients", "12",
    )  # fmt: skip
    assert args.compile and args.no_serving
    assert (args.serving_seconds, args.serving_warmup, args.serving_clients) == (10.0, 2.0, 12)


@pytest.mark.parametrize(
    "argv",
    [
        ["--serving-seconds", "0"],
        ["--serving-warmup", "-1"],
        ["--serving-clients", "-2"],
        ["--serving-seconds", "soon"],
    ],
)
def test_bad_serving_flags_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _parse(*argv)
    assert exc.value.code == 2
