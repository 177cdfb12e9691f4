"""Read one sample out of Prometheus text exposition (for assertions)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def sample(body: str | bytes, name: str, **labels: str) -> float:
    """The value of sample `name` whose labels include `labels`; KeyError when absent."""
    text = body.decode() if isinstance(body, bytes) else body
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise KeyError(f"{name}{labels or ''} not in exposition")
