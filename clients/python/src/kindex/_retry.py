"""Retry policy and node choice, shared by the sync and async clients.

Same rules as the Rust CLI (``kindex upsert``, docs/cli.md): transient errors
(unavailable, connection refused or broken, no leader / leader changed,
deadline exceeded, back-pressure) are retried with exponential backoff, 100 ms
doubling to 2 s; after a failure the next attempt goes to the node a follower
named as the leader if it is one of the client's endpoints, else to the next
endpoint. A call is given up after ``attempts`` attempts or ``timeout``
seconds, whichever comes first. Every call the client retries is idempotent
(upserts and deletes by id, reads), so a write that was applied but whose
answer was lost does no harm when sent again.

Everything else is raised at once, in particular a refused API key
(``UnauthenticatedError``: none, or one the node does not hold;
``PermissionDeniedError``: a read-only key writing): another node or a later
attempt would refuse it the same way (every node of an index holds the same
keys), and hammering a node with a wrong key helps nobody.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

from .errors import KindexError, PermissionDeniedError, UnauthenticatedError
from ._transport import grpc_target

log = logging.getLogger("kindex")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 30
    #: Seconds from the first attempt after which no new attempt is started.
    timeout: float = 120.0
    first_delay: float = 0.1
    max_delay: float = 2.0

    def delay(self, retry: int) -> float:
        """The pause before retry number ``retry`` (1-based)."""
        return float(min(self.max_delay, self.first_delay * (2 ** min(retry - 1, 16))))

    def give_up(self, attempt: int, elapsed: float, delay: float) -> bool:
        return attempt >= self.attempts or elapsed + delay > self.timeout


NO_RETRY = RetryPolicy(attempts=1)

#: Never retried, whatever ``retryable`` says (see the module docs).
_KEY_REFUSED = (UnauthenticatedError, PermissionDeniedError)


def retryable(err: KindexError) -> bool:
    """Whether a call that failed with ``err`` may be tried again."""
    return err.retryable and not isinstance(err, _KEY_REFUSED)


def next_node(nodes: Sequence[str], current: int, err: KindexError) -> int:
    """Where to send the next attempt after ``nodes[current]`` failed with ``err``.

    ``nodes`` are gRPC targets (``host:port``); a leader hint is compared in
    that form. A hint naming a node the client does not know (a pod's cluster
    address seen through a port-forward) is ignored: the next node is tried.
    """
    if err.leader:
        hint = grpc_target(err.leader)
        if hint in nodes:
            return nodes.index(hint)
    return (current + 1) % max(1, len(nodes))
