"""Read the server's Prometheus ``/metrics`` and difference two scrapes around a level.

The text exposition format is parsed here (a few dozen lines) so the load tester needs no
Prometheus library and its parsing is testable on a literal string.
"""

from __future__ import annotations

import asyncio
import logging
import math
import urllib.error
import urllib.request
from typing import Any

log = logging.getLogger(__name__)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def _parse_labels(text: str) -> tuple[tuple[str, str], ...]:
    """``a="x",b="y\\"z"`` -> (("a", "x"), ("b", 'y"z')), sorted by name."""
    labels: list[tuple[str, str]] = []
    i = 0
    while i < len(text):
        if text[i] in ", ":
            i += 1
            continue
        eq = text.index("=", i)
        name = text[i:eq].strip()
        if text[eq + 1] != '"':
            raise ValueError(f"label value of {name!r} is not quoted")
        j = eq + 2
        value: list[str] = []
        while text[j] != '"':
            if text[j] == "\\":
                value.append(_ESCAPES.get(text[j + 1], text[j + 1]))
                j += 2
            else:
                value.append(text[j])
                j += 1
        labels.append((name, "".join(value)))
        i = j + 1
    return tuple(sorted(labels))


def parse_metrics(text: str) -> Samples:
    """Every sample of a text-format scrape, keyed by (name, sorted labels)."""
    samples: Samples = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, rest = line.split("{", 1)
            # The closing brace is the last one: label values may contain braces.
            close = rest.rindex("}")
            labels = _parse_labels(rest[:close])
            value_part = rest[close + 1 :].split()
        else:
            name, *value_part = line.split()
            labels = ()
        if not value_part:
            raise ValueError(f"metrics line without a value: {raw!r}")
        samples[(name.strip(), labels)] = float(value_part[0])
    return samples


def total(samples: Samples, name: str, **match: str) -> float | None:
    """Sum of the samples called ``name`` whose labels include ``match``; None if none."""
    found = [
        value
        for (sample, labels), value in samples.items()
        if sample == name and all((k, v) in labels for k, v in match.items())
    ]
    return sum(found) if found else None


def scrape(url: str, timeout_s: float = 5.0) -> Samples:
    """Fetch and parse ``url``; raises OSError when it cannot be read."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = response.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, TimeoutError) as exc:
        raise OSError(f"cannot read metrics from {url}: {exc}") from exc
    return parse_metrics(body)


async def scrape_or_none(url: str | None) -> Samples | None:
    """`scrape` off the event loop; None (with a warning) when there is no usable endpoint."""
    if not url:
        return None
    try:
        return await asyncio.to_thread(scrape, url)
    except (OSError, ValueError) as exc:
        log.warning("metrics unavailable: %s", exc)
        return None


def _delta(before: Samples, after: Samples, name: str) -> float | None:
    a, b = total(after, name), total(before, name)
    if a is None:
        return None
    return a - (b or 0.0)


def level_delta(before: Samples | None, after: Samples | None) -> dict[str, Any] | None:
    """What the server counted during one level: batches, underruns, audio, rejections."""
    if before is None or after is None:
        return None
    batch_sum = _delta(before, after, "supertonic_batch_size_sum")
    batch_count = _delta(before, after, "supertonic_batch_size_count")
    avg = batch_sum / batch_count if batch_sum is not None and batch_count else None
    return {
        "avg_batch_size": avg,
        "batches": batch_count,
        "underruns": _delta(before, after, "supertonic_underruns_total"),
        "underrun_seconds": _delta(before, after, "supertonic_underrun_seconds_total"),
        "audio_seconds": _delta(before, after, "supertonic_audio_seconds_total"),
        "rejected": _delta(before, after, "supertonic_rejected_total"),
    }


def model_info(samples: Samples | None) -> dict[str, str]:
    """The labels of ``supertonic_model_info`` (state, device, dtype, ...), or {}."""
    if not samples:
        return {}
    for (name, labels), value in samples.items():
        if name == "supertonic_model_info" and not math.isclose(value, 0.0):
            return dict(labels)
    return {}


def compare_underruns(client_bounds: tuple[int, int], server_count: float | None) -> bool | None:
    """Whether the server's underrun delta lies within what the client's view allows.

    None when the server's count is unknown (no metrics endpoint).
    """
    if server_count is None:
        return None
    low, high = client_bounds
    return low <= round(server_count) <= high
