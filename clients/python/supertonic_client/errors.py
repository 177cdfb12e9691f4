"""`SupertonicError`: every failed call, with the server's status code and message."""

from __future__ import annotations

from typing import cast

import grpc


class SupertonicError(Exception):
    """Any failed call: the gRPC status `code` and the server's `message`.

    `retry_after_s` is the server's suggested back-off for RESOURCE_EXHAUSTED, else None.
    """

    def __init__(
        self, code: grpc.StatusCode, message: str, retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


def error_from(exc: grpc.RpcError) -> SupertonicError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    retry: float | None = None
    trailers = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    # At run time trailers are (key, value) pairs; grpc-stubs types them as objects.
    for key, value in cast("tuple[tuple[str, str | bytes], ...]", trailers or ()):
        if key == "retry-after-ms":
            try:
                retry = float(value) / 1000.0
            except (TypeError, ValueError):
                retry = None
    return SupertonicError(code or grpc.StatusCode.UNKNOWN, details or "", retry)
