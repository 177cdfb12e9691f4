"""Load tester of a supertonic-grpc server: ``python -m loadtest`` (``make loadtest``).

Opens concurrent ``Synthesize`` streams (or ``SynthesizeOnce`` calls) per concurrency level,
measures time to first audio and what a listener would hear (gaps between chunks), compares
the client's underruns with the server's Prometheus counters, and writes JSON/Markdown/PNG
reports. The pure figures live in :mod:`loadtest.stats`.
"""

from loadtest.stats import Playback, StreamRecord, percentile, playback

__all__ = ["Playback", "StreamRecord", "percentile", "playback"]
