"""`--trace-ticks PATH`: every tick's `StepDecision` as one JSON line, for finding where a
newcomer's first audio waits (admission, the tick in flight, shared steps, vocoding)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import IO

from supertonic_grpc.scheduler.decision import StepDecision


class TickTrace:
    """Appends each decision to a file, one JSON object per line (line-buffered, so a
    killed server still leaves every finished tick on disk)."""

    def __init__(self, path: str | Path) -> None:
        self._file: IO[str] = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def __call__(self, decision: StepDecision) -> None:
        row = dataclasses.asdict(decision)
        row["admitted_priorities"] = [p.name for p in decision.admitted_priorities]
        self._file.write(json.dumps(row, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self._file.close()
