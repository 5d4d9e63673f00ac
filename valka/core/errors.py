"""The one exception hierarchy of Valka.

Errors are raised deep inside (validation, the database seam) and translated to a gRPC status
or an HTTP problem document only at the edges, so each class carries both codes as plain
class attributes. The gRPC code is stored as its name to keep this module free of grpc, so
that the compiled core can raise these errors without importing the network stack.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "ConfigError",
    "DatabaseError",
    "FailedPrecondition",
    "InvalidArgument",
    "MigrationError",
    "NotFound",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "ValkaError",
]


class ValkaError(Exception):
    """Valka failed to handle the request."""

    grpc_code: str = "INTERNAL"
    http_status: int = 500

    def __init__(self, message: str | None = None, *, field: str | None = None) -> None:
        # The class docstring's first line is the default message, so a bare
        # `raise NotFound()` still says something useful.
        self.message: str = message if message else _default_message(type(self))
        self.field: str | None = field
        super().__init__(self.message)

    def __repr__(self) -> str:
        if self.field is None:
            return f"{type(self).__name__}({self.message!r})"
        return f"{type(self).__name__}({self.message!r}, field={self.field!r})"


def _default_message(cls: type[ValkaError]) -> str:
    for klass in cls.__mro__:
        doc = klass.__doc__
        if doc and doc.strip():
            return doc.strip().splitlines()[0]
    return cls.__name__


class InvalidArgument(ValkaError):
    """The request contains an invalid value."""

    grpc_code = "INVALID_ARGUMENT"
    http_status = 400


class NotFound(ValkaError):
    """The requested object does not exist."""

    grpc_code = "NOT_FOUND"
    http_status = 404


class AlreadyExists(ValkaError):
    """The object already exists."""

    grpc_code = "ALREADY_EXISTS"
    http_status = 409


class FailedPrecondition(ValkaError):
    """The object is not in a state that allows this operation."""

    grpc_code = "FAILED_PRECONDITION"
    http_status = 409


class ResourceExhausted(ValkaError):
    """The request exceeds a configured limit."""

    grpc_code = "RESOURCE_EXHAUSTED"
    http_status = 413


class Unauthenticated(ValkaError):
    """The request has no valid credentials."""

    grpc_code = "UNAUTHENTICATED"
    http_status = 401


class Unavailable(ValkaError):
    """The service is unavailable; try again later."""

    grpc_code = "UNAVAILABLE"
    http_status = 503


class ConfigError(ValkaError):
    """The configuration is invalid."""


class MigrationError(ValkaError):
    """The database schema is missing, modified or newer than this server."""


class DatabaseError(ValkaError):
    """The database failed to execute a statement."""
