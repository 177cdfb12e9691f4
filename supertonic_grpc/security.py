"""TLS, mTLS and API keys for the gRPC port and the metrics port.

API keys are bearer tokens (``authorization: Bearer <key>``), read from `--api-keys-file`
(one per line, ``#`` comments) and/or `SUPERTONIC_API_KEYS` (comma-separated). With keys
configured every RPC needs one, except the gRPC health service, so an orchestrator can probe
without a secret; a missing or wrong key is UNAUTHENTICATED.
"""

from __future__ import annotations

import hmac
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import grpc

from supertonic_grpc.settings import Settings, SettingsError

log = logging.getLogger(__name__)

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
_UNAUTHENTICATED = "missing or invalid API key (send `authorization: Bearer <key>`)"


def load_api_keys(settings: Settings) -> tuple[str, ...]:
    """Every configured key; none means no authentication."""
    keys = [k.strip() for k in settings.api_keys.split(",")]
    if settings.api_keys_file:
        for line in Path(settings.api_keys_file).read_text().splitlines():
            keys.append(line.split("#", 1)[0].strip())
    keys = [k for k in keys if k]
    if any(len(k) < 16 for k in keys):
        raise SettingsError("API keys: each key needs at least 16 characters")
    return tuple(dict.fromkeys(keys))


class Authorizer:
    """Checks an ``authorization`` header value against the configured keys."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [k.encode() for k in keys]

    def __call__(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        given = header.removeprefix("Bearer ").strip().encode()
        # Compare against every key, so the time taken says nothing about which matched.
        matches = [hmac.compare_digest(given, key) for key in self._keys]
        return any(matches)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid key (UNAUTHENTICATED), counting them per method."""

    def __init__(
        self, authorized: Authorizer, on_refused: Callable[[str], None] = lambda _m: None
    ) -> None:
        self.authorized = authorized
        self.on_refused = on_refused

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        method = details.method
        if handler is None or method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        header = dict(details.invocation_metadata or ()).get("authorization")
        if self.authorized(header if isinstance(header, str) else None):
            return handler
        self.on_refused(method)
        return _refusal(handler)


def _refusal(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as `handler` that answers UNAUTHENTICATED."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, _UNAUTHENTICATED)

    options = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **options)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **options)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **options)
    return grpc.unary_unary_rpc_method_handler(refuse, **options)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials for the gRPC port (client certificates required with a client CA)."""
    if not settings.tls_cert:
        return None
    cert = Path(settings.tls_cert).read_bytes()
    key = Path(settings.tls_key).read_bytes()
    client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def http_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The same TLS (and mTLS) for the metrics port."""
    if not settings.tls_cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
        if settings.tls_client_ca:
            ctx.load_verify_locations(settings.tls_client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (ssl.SSLError, OSError) as exc:
        raise SettingsError(f"--tls-cert/--tls-key/--tls-client-ca: {exc}") from None
    return ctx
