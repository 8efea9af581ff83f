"""Python client for kindex, a sharded, replicated vector index.

>>> import numpy as np, kindex
>>> c = kindex.Client("127.0.0.1:7070")
>>> c.upsert_many(np.random.rand(1000, 384).astype("float32"))
>>> c.search(np.random.rand(384), k=5, filter={"lang": "en"}).hits

See docs/python.md in the kindex repository.
"""

from ._retry import NO_RETRY, RetryPolicy
from .client import AsyncClient, Client
from .errors import (
    AlreadyExistsError,
    BulkUpsertError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    KindexError,
    NotFoundError,
    NotLeaderError,
    PermissionDeniedError,
    QuotaExceededError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from .types import (
    BulkResult,
    Consistency,
    ConsistencyToken,
    IndexInfo,
    Limits,
    Point,
    ScoredPoint,
    SearchResult,
    ShardFailure,
    WriteResult,
)

__version__ = "0.1.0"

__all__ = [
    "AlreadyExistsError",
    "AsyncClient",
    "BulkResult",
    "BulkUpsertError",
    "Client",
    "Consistency",
    "ConsistencyToken",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "IndexInfo",
    "InternalError",
    "InvalidArgumentError",
    "KindexError",
    "Limits",
    "NO_RETRY",
    "NotFoundError",
    "NotLeaderError",
    "PermissionDeniedError",
    "Point",
    "QuotaExceededError",
    "ResourceExhaustedError",
    "RetryPolicy",
    "ScoredPoint",
    "SearchResult",
    "ShardFailure",
    "UnauthenticatedError",
    "UnavailableError",
    "WriteResult",
]
