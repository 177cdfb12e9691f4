"""What every subcommand shares: the exit-code errors and the flags of the model and server."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the light client loads only when a command connects
    from supertonic_client.client import SupertonicClient

PROG = "supertonic-grpc"


class UsageError(Exception):
    """Bad input from the user: exit code 2."""


class CommandError(Exception):
    """The command could not be carried out (network, server, model): exit code 1."""


def add_model_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", default="", help="published model files (default: the cache)")


def add_server(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default="", metavar="HOST:PORT", help="ask this server instead")
    p.add_argument("--timeout", type=float, default=None, help="deadline in seconds (--server)")
    p.add_argument("--tls", action="store_true", help="connect with TLS (system CA roots)")
    p.add_argument("--tls-ca", default="", metavar="PEM", help="CA that signed the server (TLS)")
    p.add_argument("--tls-cert", default="", metavar="PEM", help="client certificate (mTLS)")
    p.add_argument("--tls-key", default="", metavar="PEM", help="client private key (mTLS)")
    p.add_argument(
        "--api-key",
        default=os.environ.get("SUPERTONIC_API_KEY", ""),
        help="bearer token for the server (default: $SUPERTONIC_API_KEY)",
    )


def connect(args: argparse.Namespace) -> SupertonicClient:
    """A `SupertonicClient` for `--server` with the TLS and API key flags."""
    from supertonic_client.client import SupertonicClient

    def read(path: str) -> bytes | None:
        try:
            return Path(path).read_bytes() if path else None
        except OSError as exc:
            raise UsageError(f"{path}: {exc.strerror}") from None

    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    return SupertonicClient(
        args.server,
        tls=args.tls or bool(args.tls_ca or args.tls_cert),
        root_certificates=read(args.tls_ca),
        certificate_chain=read(args.tls_cert),
        private_key=read(args.tls_key),
        api_key=args.api_key or None,
        timeout=args.timeout,
    )
