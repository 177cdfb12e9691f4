"""Every server setting in one dataclass, read from flags and `SUPERTONIC_*` environment.

Precedence: command-line flag, then environment variable (`SUPERTONIC_MAX_BATCH` for
`max_batch`), then the default below.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

ENV_PREFIX = "SUPERTONIC_"
# Replies up to this size are allowed when configured; the clients' receive limit matches.
MAX_REPLY_BYTES = 64 * 1024 * 1024


@dataclass
class Settings:
    """Server settings. `help` metadata doubles as the flag's help text."""

    host: str = field(default="0.0.0.0", metadata={"help": "address to listen on"})
    port: int = field(default=50051, metadata={"help": "gRPC port (0 picks a free one)"})
    metrics_port: int = field(
        default=9090, metadata={"help": "Prometheus /metrics port (0 picks one, -1 disables)"}
    )
    model_dir: str = field(
        default="", metadata={"help": "published model files (default: the download cache)"}
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    dtype: str = field(default="float32", metadata={"help": "float32, or bfloat16/float16 on GPU"})
    precision: str = field(
        default="fp32",
        metadata={
            "help": "fp32, bf16 (CPU with AVX512-BF16/AMX, GPU) or int8 (CPU): the ConvNeXt "
            "MLPs' arithmetic; time embedding, rotary positions, Euler update and masks stay fp32"
        },
    )
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    compile_mode: str = field(
        default="default",
        metadata={"help": "torch.compile mode: default, reduce-overhead (CUDA graphs), ..."},
    )
    max_batch: int = field(default=0, metadata={"help": "chunks per batch (0: 32 GPU, 8 CPU)"})
    max_batch_tokens: int = field(
        default=0,
        metadata={
            "help": "padded latent frames (~ text tokens) per flow step (0: 300 CPU, unbounded "
            "GPU): bounds one step, so how long a new listener waits for the step in flight"
        },
    )
    trace_ticks: str = field(
        default="", metadata={"help": "append every scheduler tick to this file (JSON lines)"}
    )
    max_wait_ms: float = field(default=5.0, metadata={"help": "longest wait to fill a batch"})
    max_queue: int = field(default=512, metadata={"help": "queued chunks before rejecting"})
    max_streams: int = field(default=512, metadata={"help": "concurrent requests"})
    max_streams_per_peer: int = field(
        default=0,
        metadata={
            "help": "concurrent requests per client address (0: no limit; behind a proxy "
            "every client shares its address)"
        },
    )
    keepalive_s: float = field(default=60.0, metadata={"help": "ping a connection this often"})
    keepalive_timeout_s: float = field(
        default=20.0, metadata={"help": "close a connection whose ping goes unanswered this long"}
    )
    max_connection_age_s: float = field(
        default=3600.0, metadata={"help": "close connections older than this (0: never)"}
    )
    max_connection_age_grace_s: float = field(
        default=600.0, metadata={"help": "time streams get to end on a connection being closed"}
    )
    max_connection_idle_s: float = field(
        default=900.0, metadata={"help": "close connections idle for this long (0: never)"}
    )
    max_concurrent_streams_per_connection: int = field(
        default=0,
        metadata={"help": "HTTP/2 streams one connection may open at once (0: --max-streams)"},
    )
    write_timeout_s: float = field(
        default=30.0,
        metadata={"help": "end a stream whose client accepts no message for this long"},
    )
    max_reply_bytes: int = field(
        default=4 * 1024 * 1024,
        metadata={"help": "largest message sent (the 4 MiB default of gRPC clients)"},
    )
    max_text_chars: int = field(default=5000, metadata={"help": "longest request text"})
    max_chunk_chars: int = field(default=300, metadata={"help": "default longest chunk"})
    first_chunk_chars: int = field(
        default=60, metadata={"help": "default longest 1st chunk (short: fast first audio)"}
    )
    chunk_growth: float = field(
        default=2.0, metadata={"help": "each chunk's length limit vs the previous one's"}
    )
    lookahead_chunks: int = field(
        default=2, metadata={"help": "chunks of one stream queued or computing at once"}
    )
    stream_idle_s: float = field(
        default=30.0,
        metadata={"help": "StreamingSynthesize: end a call with no request and no audio this long"},
    )
    stream_buffer_delay_ms: int = field(
        default=800,
        metadata={"help": "StreamingSynthesize: speak stalled text after this (0 < ms <= 10000)"},
    )
    default_voice: str = field(default="M1", metadata={"help": "voice when a request names none"})
    default_steps: int = field(default=5, metadata={"help": "flow steps when a request has 0"})
    warmup: bool = field(default=True, metadata={"help": "run warm-up batches before SERVING"})
    grace_s: float = field(default=10.0, metadata={"help": "drain time on SIGTERM"})
    drain_announce_s: float = field(
        default=3.0,
        metadata={
            "help": "on SIGTERM, first answer health NOT_SERVING with the port still open this "
            "long (new requests UNAVAILABLE), then close it and drain (0: close at once)"
        },
    )
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING, ERROR"})
    metrics_host: str = field(
        default="", metadata={"help": "metrics address (default: --host; 127.0.0.1 keeps it local)"}
    )
    tls_cert: str = field(default="", metadata={"help": "PEM certificate chain: serve TLS"})
    tls_key: str = field(default="", metadata={"help": "PEM private key of --tls-cert"})
    tls_client_ca: str = field(
        default="", metadata={"help": "PEM CA bundle: require client certificates (mTLS)"}
    )
    api_keys_file: str = field(
        default="", metadata={"help": "file of API keys, one per line: require a bearer token"}
    )
    api_keys: str = field(
        default="",
        repr=False,  # a secret: never in a log line or a traceback
        metadata={"help": "comma-separated API keys (set it in the environment, not as a flag)"},
    )

    def validate(self) -> None:
        """Raise `SettingsError` naming the first bad setting (the model-dependent ones, such
        as `default_voice`, are checked once the model is loaded)."""
        ranges: dict[str, tuple[float, float]] = {
            "port": (0, 65535),
            "metrics_port": (-1, 65535),
            "max_streams": (1, 1_000_000),
            "max_queue": (1, 10_000_000),
            "max_text_chars": (1, 1_000_000),
            "lookahead_chunks": (1, 1000),
            "default_steps": (1, 100),
            "chunk_growth": (1.0, 100.0),
            "write_timeout_s": (0.001, 3600),
            "max_reply_bytes": (64 * 1024, MAX_REPLY_BYTES),
            "keepalive_s": (1, 86400),
            "keepalive_timeout_s": (1, 86400),
            "max_concurrent_streams_per_connection": (0, 1_000_000),
            "drain_announce_s": (0, 3600),
        }
        non_negative = (
            "max_batch", "max_batch_tokens", "max_wait_ms", "max_streams_per_peer", "grace_s",
            "max_connection_age_s",
            "max_connection_age_grace_s", "max_connection_idle_s",
        )  # fmt: skip
        ranges.update({name: (0, float("inf")) for name in non_negative})
        for name, (lo, hi) in ranges.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise SettingsError(f"--{_flag(name)}: {value} is outside [{lo:g}, {hi:g}]")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SettingsError("--tls-cert and --tls-key: give both or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise SettingsError("--tls-client-ca: needs --tls-cert and --tls-key")
        for name in ("tls_cert", "tls_key", "tls_client_ca", "api_keys_file"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise SettingsError(f"--{_flag(name)}: no such file: {path}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise SettingsError(f"--log-level: {self.log_level!r} is not a log level")
        from supertonic_grpc.backends.precision import parse_precision

        try:
            parse_precision(self.precision)
        except ValueError as exc:
            raise SettingsError(f"--precision: {exc}") from None

    def resolved_max_batch(self, device_type: str) -> int:
        """`max_batch`, or the device's default when 0."""
        if self.max_batch > 0:
            return self.max_batch
        return 32 if device_type == "cuda" else 8

    def resolved_max_batch_tokens(self, device_type: str) -> int:
        """`max_batch_tokens`, or the device's default when 0. On a CPU a batch costs about
        its size, so the budget keeps any one batch to a couple of seconds."""
        if self.max_batch_tokens > 0:
            return self.max_batch_tokens
        return 1_000_000 if device_type == "cuda" else 300

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


class SettingsError(ValueError):
    """A setting that cannot work; the message names the flag."""


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _convert(f: dataclasses.Field[Any], raw: str) -> bool | int | float | str:
    default = f.default
    if isinstance(default, bool):
        return _parse_bool(raw)
    if isinstance(default, int | float | str):
        return type(default)(raw)
    raise TypeError(f"setting {f.name} has no default of a simple type")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one `--flag` per setting (booleans get `--flag/--no-flag`)."""
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (env {ENV_PREFIX}{f.name.upper()})"
        if isinstance(f.default, bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(flag, type=type(f.default), default=None, help=help_text)


def load_settings(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from parsed flags over environment over defaults."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is not None:
            try:
                values[f.name] = _convert(f, raw)
            except ValueError as exc:
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()}: {exc}") from None
        flag_value = getattr(args, f.name, None) if args is not None else None
        if flag_value is not None:
            values[f.name] = flag_value
    settings = Settings(**values)
    settings.validate()
    return settings


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Parse a command line of setting flags only (for tests and embedding)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return load_settings(parser.parse_args(argv))
