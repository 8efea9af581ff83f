"""Exceptions. Every failure of a call raises a subclass of :class:`KindexError`.

The node reports errors as gRPC status codes (gRPC) or as
``{"error": {"code": ..., "message": ...}}`` with an HTTP status (HTTP); both
are mapped onto the same classes, so code that catches ``NotFoundError`` works
with either protocol.
"""

from __future__ import annotations

from typing import Optional


class KindexError(Exception):
    """Base class. ``code`` is the gRPC code name in snake case (``"unavailable"``),
    ``node`` the endpoint that answered (or could not be reached), ``leader`` the
    shard leader's gRPC address when a follower named one."""

    #: Whether retrying the same (idempotent) call elsewhere or later may succeed.
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: str = "unknown",
        node: Optional[str] = None,
        leader: Optional[str] = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.node = node
        self.leader = leader
        self.attempts = attempts

    def __str__(self) -> str:
        where = f" on {self.node}" if self.node else ""
        tries = f" (gave up after {self.attempts} attempts)" if self.attempts > 1 else ""
        return f"{self.code}{where}: {self.message}{tries}"


class InvalidArgumentError(KindexError, ValueError):
    """Bad input: wrong dimension, NaN, empty or over-long id, k out of range,
    malformed filter, batch over the limit. Nothing was changed."""


class NotFoundError(KindexError):
    """Unknown index."""


class AlreadyExistsError(KindexError):
    pass


class UnavailableError(KindexError):
    """The node is down or restarting, the shard has no leader (election,
    no quorum), or the connection broke. Retried automatically."""

    retryable = True


class NotLeaderError(UnavailableError):
    """A follower could not forward a write; ``leader`` names the leader's gRPC
    address. Retried automatically on that node when it is one of the client's
    endpoints."""


class DeadlineExceededError(KindexError):
    retryable = True


class ResourceExhaustedError(KindexError):
    """Back-pressure: the indexing queue or the shard is full. Retried with backoff."""

    retryable = True


class QuotaExceededError(ResourceExhaustedError):
    """A quota policy refused the write (gRPC ``RESOURCE_EXHAUSTED`` with
    ``kindex-quota-exceeded`` metadata, HTTP 429); the message names the policy,
    its limit and the shard's usage (docs/policies.md). Nothing was written. Not
    retried: the answer stays the same until points are deleted or the quota
    raised."""

    retryable = False


class FailedPreconditionError(KindexError):
    pass


class UnauthenticatedError(KindexError):
    """The node requires an API key and the call carried none, or one the node
    does not hold (gRPC ``UNAUTHENTICATED``, HTTP 401). Give the key with
    ``api_key=`` or ``KINDEX_API_KEY``. Not retried: the same call would get
    the same answer."""

    retryable = False

    def __str__(self) -> str:
        return f"{super().__str__()} (pass the node's API key as api_key= or in KINDEX_API_KEY)"


class PermissionDeniedError(KindexError):
    """The key is valid but may not do this: a read-only key writing (upsert,
    delete) (gRPC ``PERMISSION_DENIED``, HTTP 403). Nothing was changed. Not
    retried."""

    retryable = False


class InternalError(KindexError):
    pass


class BulkUpsertError(KindexError):
    """A bulk load stopped. ``acknowledged`` counts the points whose batches
    the node acknowledged (they are stored); ``failed_rows`` lists the
    ``(start, stop)`` row ranges that were not written."""

    def __init__(
        self,
        message: str,
        *,
        acknowledged: int,
        failed_rows: list[tuple[int, int]],
        cause: KindexError,
    ) -> None:
        super().__init__(message, code=cause.code, node=cause.node, leader=cause.leader)
        self.acknowledged = acknowledged
        self.failed_rows = failed_rows
        self.cause = cause


_BY_CODE: dict[str, type[KindexError]] = {
    "invalid_argument": InvalidArgumentError,
    "out_of_range": InvalidArgumentError,
    "not_found": NotFoundError,
    "already_exists": AlreadyExistsError,
    "unavailable": UnavailableError,
    "cancelled": UnavailableError,
    "aborted": UnavailableError,
    "deadline_exceeded": DeadlineExceededError,
    "resource_exhausted": ResourceExhaustedError,
    "quota_exceeded": QuotaExceededError,
    "failed_precondition": FailedPreconditionError,
    "internal": InternalError,
    "unauthenticated": UnauthenticatedError,
    "permission_denied": PermissionDeniedError,
}


def from_code(
    code: str,
    message: str,
    *,
    node: Optional[str] = None,
    leader: Optional[str] = None,
    not_leader: bool = False,
) -> KindexError:
    """The exception for a gRPC code name (snake case) or an HTTP error body's code.
    ``not_leader``: a follower named a leader (``kindex-leader-id`` metadata)."""
    if code == "failed_precondition" and (not_leader or leader is not None):
        return NotLeaderError(message, code=code, node=node, leader=leader)
    cls = _BY_CODE.get(code, KindexError)
    return cls(message, code=code, node=node, leader=leader)


# HTTP status -> code, for bodies that are not the node's JSON error (a proxy's 502).
_HTTP_STATUS: dict[int, str] = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    409: "already_exists",
    429: "quota_exceeded",
    502: "unavailable",
    503: "unavailable",
    504: "deadline_exceeded",
    507: "resource_exhausted",
}


def from_http(status: int, body: object, *, node: Optional[str] = None) -> KindexError:
    code = _HTTP_STATUS.get(status, "internal" if status >= 500 else "unknown")
    message = f"HTTP {status}"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        code = str(err.get("code") or code)
        message = str(err.get("message") or message)
    elif isinstance(body, str) and body:
        message = f"HTTP {status}: {body[:500]}"
    return from_code(code, message, node=node)
