"""`make gpu-check`: everything a first GPU run must show, in one script, in under 8 minutes.

1. the GPU tests (`pytest -m gpu`);
2. the engine bench on CUDA, fp32 and bf16, eager and compiled with CUDA graphs
   (`reduce-overhead`, bucketed shapes recorded at warm-up);
3. a burst load test of 50, 100 and 200 concurrent streams against a spawned server (bf16,
   CUDA graphs), with its charts;
4. `reports/gpu-check/summary.md`: the card, each step's outcome and time, where the figures are.

Each step has its own time limit (they add up to 7.5 minutes) and a failed step does not stop
the later ones: a first GPU run should show as much as it can. `--dry-run` prints the plan;
CI checks the plan on a CPU (every command's flags parse) without running it.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

BUDGET_S = 8 * 60
STREAM_LEVELS = "50,100,200"


@dataclass(frozen=True)
class Step:
    name: str
    argv: list[str]
    timeout_s: int


def plan(out_dir: Path, python: str = sys.executable) -> list[Step]:
    """The steps, in order; their time limits add up to less than BUDGET_S."""
    bench = shlex.split(
        "-m supertonic_grpc.cli bench --device cuda --precisions fp32,bf16 --compile "
        "--compile-mode reduce-overhead --batch-sizes 1,8,32 --repeats 5 --no-serving --no-onnx"
    )
    server = shlex.split(
        "--device=cuda --precision=bf16 --compile --compile-mode=reduce-overhead "
        "--max-batch=32 --max-streams=256"
    )
    load = shlex.split("-m loadtest --spawn --ready-timeout 120 --duration 20 --warmup 0")
    return [
        Step("gpu tests", [python, "-m", "pytest", "-q", "-m", "gpu", "tests"], 90),
        Step(
            "engine bench (fp32, bf16; eager and CUDA graphs)",
            [python, *bench, "--out-dir", str(out_dir / "bench")],
            150,
        ),
        Step(
            f"burst load test ({STREAM_LEVELS} streams)",
            [
                python, *load, *(f"--server-arg={a}" for a in server), "--users", STREAM_LEVELS,
                "--out-dir", str(out_dir / "stream"),
            ],
            210,
        ),
    ]  # fmt: skip


def _device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return "no CUDA device"


def run(out_dir: Path, steps: list[Step]) -> int:
    """Run every step; write the summary; 0 only when every step passed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# GPU check", "", f"- device: {_device_name()}", "", "| step | result | s |"]
    lines.append("| --- | --- | ---: |")
    failed = 0
    for step in steps:
        log.info("%s: %s", step.name, shlex.join(step.argv))
        start = time.monotonic()
        try:
            rc = subprocess.run(step.argv, timeout=step.timeout_s, check=False).returncode
            result = "ok" if rc == 0 else f"FAILED (exit {rc})"
        except subprocess.TimeoutExpired:
            rc, result = -1, f"TIMED OUT after {step.timeout_s} s"
        failed += rc != 0
        lines.append(f"| {step.name} | {result} | {time.monotonic() - start:.0f} |")
    lines += [
        "",
        "- engine figures: `bench/bench.md`; load test: `stream/report.md` and its PNG charts",
    ]
    (out_dir / "summary.md").write_text("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + "\n")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make gpu-check", description=__doc__)
    parser.add_argument("--out-dir", default="reports/gpu-check", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    steps = plan(args.out_dir)
    if args.dry_run:
        for step in steps:
            sys.stdout.write(f"[{step.timeout_s:>3} s] {step.name}: {shlex.join(step.argv)}\n")
        return 0
    return run(args.out_dir, steps)


if __name__ == "__main__":
    sys.exit(main())
