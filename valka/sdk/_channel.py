"""What the client and the worker share: address, token, channel options, error mapping."""

from __future__ import annotations

import os
from typing import Final

import grpc
import grpc.aio

from valka import __version__
from valka.core import errors

__all__ = [
    "DEFAULT_SERVER",
    "MAX_MESSAGE_BYTES",
    "SDK_VERSION",
    "call_metadata",
    "error_for_code",
    "map_rpc_error",
    "open_channel",
    "resolve_server",
    "resolve_token",
]

DEFAULT_SERVER: Final = "127.0.0.1:50051"
# The client accepts large messages; the server enforces (and names) its own smaller limit.
MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
SDK_VERSION: Final = f"valka-python/{__version__}"

_ERRORS: Final[dict[grpc.StatusCode, type[errors.ValkaError]]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
}

_SCHEMES: Final = ("grpc://", "http://")


def resolve_server(server: str | None) -> str:
    address = server or os.environ.get("VALKA_SERVER") or DEFAULT_SERVER
    for scheme in _SCHEMES:
        if address.startswith(scheme):
            address = address[len(scheme) :]
    return address.rstrip("/")


def resolve_token(token: str | None) -> str | None:
    return token or os.environ.get("VALKA_TOKEN") or None


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def open_channel(server: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(
        server,
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            # grpc's own reconnect backoff grows to 120 s by default; calls fail fast while
            # it runs, which would stretch the worker's own (jittered, capped) backoff.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 5_000),
        ],
    )


def map_rpc_error(exc: grpc.aio.AioRpcError) -> errors.ValkaError:
    """The Valka error for a failed call, keeping the server's own message."""
    return error_for_code(exc.code(), exc.details() or "")


def error_for_code(code: grpc.StatusCode, details: str) -> errors.ValkaError:
    cls = _ERRORS.get(code)
    if cls is not None:
        return cls(details or None)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.Unavailable(f"the server did not answer in time ({details or code.name})")
    return errors.ValkaError(f"{code.name}: {details}" if details else code.name)
