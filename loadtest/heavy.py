"""The heavy-request case: does a newcomer still hear its first audio fast while several
maximum-cost valid requests (5000 characters, 50 steps, speed 0.5) are running?

It measures a 40-character request's TTFA on the idle server, then starts the heavy
streams (read as fast as they come), waits until they are mid-flight, and measures the same
request again several times; the figure is the ratio to the idle value (target <= 3).
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from loadtest.corpus import Text, load_texts
from loadtest.runner import RunConfig, one_request
from loadtest.stats import StreamRecord
from supertonic_client._proto.supertonic.v1 import tts_pb2, tts_pb2_grpc

log = logging.getLogger("loadtest")

NEWCOMER = Text(id="newcomer", language="en", text="A new listener asks for a short reply.")
HEAVY_CHARS, HEAVY_STEPS, HEAVY_SPEED = 5000, 50, 0.5
TARGET_RATIO = 3.0


def heavy_text() -> str:
    """5000 characters of the bundled English texts, repeated as needed."""
    texts = [t.text for t in load_texts(("en",), max_sentences=50)]
    out = ""
    while len(out) < HEAVY_CHARS:
        out += " ".join(texts) + " "
    return out[:HEAVY_CHARS].rsplit(" ", 1)[0]


async def _ttfas(stub: tts_pb2_grpc.TextToSpeechStub, cfg: RunConfig, n: int) -> list[float]:
    out = []
    for _ in range(n):
        rec = StreamRecord(user=-3, text_id=NEWCOMER.id, language="en", start=0.0)
        await one_request(stub, cfg, NEWCOMER, rec)
        if not rec.ok or rec.ttfa is None:
            raise RuntimeError(f"newcomer request failed: {rec.code} {rec.error}")
        out.append(rec.ttfa)
        await asyncio.sleep(0.3)
    return out


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


async def run_heavy(
    stub: tts_pb2_grpc.TextToSpeechStub, cfg: RunConfig, heavy: int, repeats: int, settle_s: float
) -> dict[str, Any]:
    """Idle TTFA, then TTFA with ``heavy`` maximum-cost streams running."""
    idle = await _ttfas(stub, cfg, repeats)
    req = tts_pb2.SynthesizeRequest(
        text=heavy_text(), language="en", steps=HEAVY_STEPS, speed=HEAVY_SPEED,
        audio_config=tts_pb2.AudioConfig(encoding=tts_pb2.LINEAR16),
    )  # fmt: skip
    calls = [stub.Synthesize(req, timeout=600.0) for _ in range(heavy)]
    drains = [asyncio.ensure_future(_drain(c)) for c in calls]
    try:
        await asyncio.sleep(settle_s)  # the heavy chunks are mid-flight by now
        loaded = await _ttfas(stub, cfg, repeats)
        still_running = sum(1 for d in drains if not d.done())
    finally:
        for c in calls:
            c.cancel()
        await asyncio.gather(*drains, return_exceptions=True)
    idle_s, loaded_s = statistics.median(idle), statistics.median(loaded)
    return {
        "heavy_requests": heavy,
        "heavy": {"chars": len(req.text), "steps": HEAVY_STEPS, "speed": HEAVY_SPEED},
        "newcomer_text": NEWCOMER.text,
        "idle_ttfa_s": idle,
        "loaded_ttfa_s": loaded,
        "idle_median_s": idle_s,
        "loaded_median_s": loaded_s,
        "loaded_max_s": max(loaded),
        "ratio_median": loaded_s / idle_s,
        "ratio_max": max(loaded) / idle_s,
        "heavy_still_running": still_running,
        "target_ratio": TARGET_RATIO,
        "meets_target": max(loaded) / idle_s <= TARGET_RATIO and still_running == heavy,
        "created_unix": time.time(),
    }


def write(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """heavy.json and heavy.md in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "heavy.json"
    js.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    md = out_dir / "heavy.md"
    md.write_text(
        "\n".join(
            [
                "# Heavy requests vs a newcomer",
                "",
                f"{result['heavy_requests']} requests of {result['heavy']['chars']} characters, "
                f"steps {HEAVY_STEPS}, speed {HEAVY_SPEED} running "
                f"({result['heavy_still_running']} still running at the end of the probe).",
                "",
                "| newcomer TTFA | median s | max s |",
                "|---|---:|---:|",
                f"| idle | {result['idle_median_s']:.3f} | {max(result['idle_ttfa_s']):.3f} |",
                f"| with the heavy requests | {result['loaded_median_s']:.3f} "
                f"| {result['loaded_max_s']:.3f} |",
                "",
                f"Ratio to idle: median {result['ratio_median']:.2f}, max "
                f"{result['ratio_max']:.2f} (target <= {TARGET_RATIO:g}): "
                f"{'met' if result['meets_target'] else '**not met**'}.",
                "",
            ]
        ),
        encoding="utf-8",
    )
    return [js, md]
