"""Plain data types shared by the gRPC and HTTP clients."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

Payload = dict[str, Any]


class Consistency(str, enum.Enum):
    """Read consistency (see the proto's ``Consistency``).

    - ``EVENTUAL``: any replica, as it is;
    - ``SESSION``: a replica that has applied a session token (your writes);
    - ``LINEARIZABLE``: the shard leader after a read-index round.

    Not given (``None``): ``SESSION`` if a token is passed, else each shard's
    leader (you read your own acknowledged writes).
    """

    EVENTUAL = "eventual"
    SESSION = "session"
    LINEARIZABLE = "linearizable"


ConsistencyLike = Union[Consistency, str, None]


def consistency_of(c: ConsistencyLike) -> Optional[Consistency]:
    if c is None or isinstance(c, Consistency):
        return c
    try:
        return Consistency(c.lower())
    except ValueError:
        raise ValueError(
            f"consistency must be one of eventual, session, linearizable; got {c!r}"
        ) from None


@dataclass(frozen=True)
class ConsistencyToken:
    """Applied Raft log index per shard, returned by writes. Pass it to reads
    (``token=``) to read at least that state from any replica."""

    shards: Mapping[int, int] = field(default_factory=dict)

    def merge(self, other: Optional["ConsistencyToken"]) -> "ConsistencyToken":
        """The later of the two per shard (a token that covers both)."""
        if other is None:
            return self
        out = dict(self.shards)
        for s, i in other.shards.items():
            out[s] = max(out.get(s, 0), i)
        return ConsistencyToken(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "shards": [{"shard": s, "appliedIndex": i} for s, i in sorted(self.shards.items())]
        }

    @staticmethod
    def from_json(v: Any) -> "ConsistencyToken":
        shards = (v or {}).get("shards") or []
        return ConsistencyToken({int(s["shard"]): int(s["appliedIndex"]) for s in shards})

    def __bool__(self) -> bool:
        return bool(self.shards)


@dataclass
class Point:
    id: str
    vector: Optional[Sequence[float]] = None
    payload: Optional[Payload] = None


@dataclass
class ScoredPoint:
    """A search hit. ``distance`` is under the index metric, smaller is closer
    (cosine: 1 - cos, dot: -dot, l2: squared euclidean)."""

    id: str
    distance: float
    vector: Optional[list[float]] = None
    payload: Optional[Payload] = None


@dataclass
class ShardFailure:
    shard: int
    message: str


@dataclass
class SearchResult:
    hits: list[ScoredPoint]
    #: Shards that did not answer; ``hits`` are then partial.
    failures: list[ShardFailure] = field(default_factory=list)


@dataclass
class WriteResult:
    affected: int
    token: ConsistencyToken


@dataclass
class Limits:
    max_batch: int
    max_id_bytes: int
    max_payload_bytes: int
    max_k: int


@dataclass
class IndexInfo:
    index: str
    dimension: int
    metric: str
    shards: int
    vectors: int
    limits: Limits


@dataclass
class BulkResult:
    """What a bulk upsert did: every point counted here was acknowledged."""

    points: int
    batches: int
    retries: int
    seconds: float
    token: ConsistencyToken

    @property
    def points_per_second(self) -> float:
        return self.points / self.seconds if self.seconds > 0 else 0.0
