"""`make gpu-check`'s CPU-side parts: the plan fits the budget, every command's flags parse
here, and the summary is written whatever the steps do."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks import engine_bench, gpu_check
from loadtest import cli as loadtest_cli
from supertonic_grpc.settings import parse_settings


def _after(argv: list[str], marker: str) -> list[str]:
    return argv[argv.index(marker) + 1 :]


def test_plan_fits_the_eight_minute_budget_and_runs_what_the_issue_asks(tmp_path: Path) -> None:
    steps = gpu_check.plan(tmp_path)
    assert sum(s.timeout_s for s in steps) < gpu_check.BUDGET_S
    text = " ".join(" ".join(s.argv) for s in steps)
    assert "-m gpu" in text
    assert "--precisions fp32,bf16" in text and "reduce-overhead" in text
    assert "--users 50,100,200" in text


def test_every_command_line_parses_here(tmp_path: Path) -> None:
    tests, bench, load = gpu_check.plan(tmp_path)
    parser = argparse.ArgumentParser()
    engine_bench.add_arguments(parser)
    args = parser.parse_args(_after(bench.argv, "bench"))
    assert args.device == "cuda" and args.compile and args.compile_mode == "reduce-overhead"
    load_args = loadtest_cli.parse_args(_after(load.argv, "loadtest"))
    assert load_args.spawn
    server = [a.split("=", 1)[1] for a in load.argv if a.startswith("--server-arg=")]
    settings = parse_settings(server)
    assert (settings.device, settings.precision, settings.compile) == ("cuda", "bf16", True)
    assert tests.argv[-1] == "tests"


def test_run_writes_a_summary_and_keeps_going_after_a_failure(tmp_path: Path) -> None:
    steps = [
        gpu_check.Step("fails", [sys.executable, "-c", "raise SystemExit(3)"], 30),
        gpu_check.Step("passes", [sys.executable, "-c", "pass"], 30),
    ]
    assert gpu_check.run(tmp_path, steps) == 1
    summary = (tmp_path / "summary.md").read_text()
    assert "| fails | FAILED (exit 3) |" in summary
    assert "| passes | ok |" in summary
    assert "- device: " in summary
