"""Typed exceptions: one per wire error code (docs/protocol.md §7.2), plus the client's own.

Every server refusal is a `ServerError` subclass carrying `code`, `name`, the server's
`message`, `retry_after_ms` (0 = no hint), `retryable` and `closes` (whether the spec says the
server closes the connection after it). An unknown code (a newer server) is a plain
`ServerError`, non-retryable, as §7.2 says.
"""

from __future__ import annotations


class EdgeInferError(Exception):
    """Base of everything this package raises."""


class InputError(EdgeInferError, ValueError):
    """Refused on the client side before any byte was sent: wrong dtype, names, shape,
    NaN/inf where the model forbids them, a frame above the server's limits."""


class ConnectionClosed(EdgeInferError, ConnectionError):
    """The connection closed (or failed) before the answer came. The request may or may not
    have run; the next call opens a new connection."""


class Unavailable(EdgeInferError, ConnectionError):
    """No connection could be opened (no socket file, connection refused)."""


class Timeout(EdgeInferError, TimeoutError):
    """No answer within the call's timeout (or no connection within the connect timeout).
    A late answer is dropped; the connection is reopened by the next call."""


class ProtocolError(EdgeInferError):
    """The server sent something this client cannot read (a bug on one side)."""


class ServerError(EdgeInferError):
    """The server answered ERROR."""

    code = 0
    name = "UNKNOWN"
    retryable = False
    closes = False

    def __init__(self, message: str = "", retry_after_ms: int = 0, code: int | None = None,
                 request_id: int = 0):
        if code is not None:
            self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms
        self.request_id = request_id
        hint = f" (retry after {retry_after_ms} ms)" if retry_after_ms else ""
        super().__init__(f"{self.name} ({self.code}): {message}{hint}")


def _code(code: int, name: str, retryable: bool = False, closes: bool = False):
    def deco(cls):
        cls.code, cls.name, cls.retryable, cls.closes = code, name, retryable, closes
        return cls
    return deco


@_code(1, "BAD_FRAME", closes=True)
class BadFrame(ServerError):
    """Malformed frame. The server closes when the header was bad; the client cannot tell
    which, so it always reopens."""


@_code(2, "UNSUPPORTED_VERSION", closes=True)
class UnsupportedVersion(ServerError):
    pass


@_code(3, "UNKNOWN_OPCODE")
class UnknownOpcode(ServerError):
    pass


@_code(4, "UNKNOWN_MODEL")
class UnknownModel(ServerError):
    pass


@_code(5, "BAD_INPUT")
class BadInput(ServerError):
    pass


@_code(6, "OVERLOADED", retryable=True)
class Overloaded(ServerError):
    pass


@_code(7, "DEADLINE_EXCEEDED")
class DeadlineExceeded(ServerError):
    pass


@_code(8, "FRAME_TOO_LARGE", closes=True)
class FrameTooLarge(ServerError):
    pass


@_code(9, "INTERNAL")
class Internal(ServerError):
    pass


@_code(10, "NOT_READY", retryable=True)
class NotReady(ServerError):
    pass


@_code(11, "NOT_IMPLEMENTED")
class NotImplementedByServer(ServerError):
    pass


@_code(12, "SHUTTING_DOWN", retryable=True, closes=True)
class ShuttingDown(ServerError):
    pass


@_code(13, "TOO_MANY_IN_FLIGHT", retryable=True)
class TooManyInFlight(ServerError):
    pass


@_code(14, "UNAUTHENTICATED", closes=True)
class Unauthenticated(ServerError):
    pass


@_code(15, "FEATURE_STORE")
class FeatureStore(ServerError):
    """The server's feature store failed (map full: nothing written; reads go on)."""


@_code(16, "UNKNOWN_REQUEST_ID")
class UnknownRequestId(ServerError):
    """FEEDBACK named a prediction the server's log does not hold (never served, expired)."""


ERRORS: dict[int, type[ServerError]] = {
    cls.code: cls
    for cls in (BadFrame, UnsupportedVersion, UnknownOpcode, UnknownModel, BadInput,
                Overloaded, DeadlineExceeded, FrameTooLarge, Internal, NotReady,
                NotImplementedByServer, ShuttingDown, TooManyInFlight, Unauthenticated,
                FeatureStore, UnknownRequestId)
}


def server_error(code: int, message: str, retry_after_ms: int = 0,
                 request_id: int = 0) -> ServerError:
    cls = ERRORS.get(code)
    if cls is None:
        return ServerError(message, retry_after_ms, code=code, request_id=request_id)
    return cls(message, retry_after_ms, request_id=request_id)
