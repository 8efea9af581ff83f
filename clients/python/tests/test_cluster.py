"""A 3-replica shard on loopback: leader hints, session reads, and a bulk load
that survives kill -9 of the shard leader."""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

import grpc
import numpy as np
import pytest

import kindex
from conftest import NodeSet, wait_for
from kindex._transport import grpc_error
from kindex.v1 import points_pb2 as pb
from kindex.v1 import points_pb2_grpc as pb_grpc

ROWS = 20_000
DIM = 8


def test_a_follower_names_the_leader_and_the_client_goes_there(cluster: NodeSet) -> None:
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n is not leader)
    # A write marked as already forwarded (what a node sends another node) is not
    # forwarded again: the follower answers FailedPrecondition with the leader.
    with grpc.insecure_channel(follower.grpc) as ch:
        with pytest.raises(grpc.RpcError) as ei:
            pb_grpc.PointsStub(ch).Upsert(
                pb.UpsertRequest(points=[pb.Point(id="h", vector=[1.0] * DIM)]),
                metadata=[("kindex-forwarded", "1")],
                timeout=10,
            )
    e = grpc_error(ei.value, follower.grpc)
    assert isinstance(e, kindex.NotLeaderError) and e.leader == leader.grpc, e
    # The client moves to the hinted node.
    c = kindex.Client(cluster.grpc_addrs)
    c._current = cluster.nodes.index(follower)
    from kindex._retry import next_node

    assert c.nodes[next_node(c.nodes, c._current, e)] == leader.grpc


def test_session_reads_on_a_follower_see_the_write(cluster: NodeSet) -> None:
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n is not leader)
    w = kindex.Client(leader.grpc)
    r = kindex.Client(follower.grpc)
    for i in range(20):
        t = w.upsert([(f"s{i}", np.full(DIM, i + 1.0))]).token
        # Session: the follower waits until it applied the token's index.
        got = r.get([f"s{i}"], consistency="session", token=t)
        assert [p.id for p in got] == [f"s{i}"]
    assert w.token.shards[0] >= t.shards[0]
    assert r.count(consistency="linearizable") == 20


def _acked_everywhere(cluster: NodeSet, n: int) -> Optional[list[Any]]:
    st = [x.status() for x in cluster.nodes]
    if any(s is None for s in st):
        return None
    if {s.vectors_live for s in st} != {n} or len({s.content_checksum for s in st}) != 1:  # type: ignore[union-attr]
        return None
    return st


@pytest.mark.parametrize("protocol", ["grpc"])
def test_bulk_load_survives_leader_kill(cluster: NodeSet, protocol: str) -> None:
    leader = cluster.leader()
    # Start on the leader, so the kill hits the node the client is talking to.
    order = [leader] + [x for x in cluster.nodes if x is not leader]
    client = kindex.Client([x.grpc for x in order], timeout=10)
    vecs = np.random.default_rng(3).normal(size=(ROWS, DIM)).astype(np.float32)
    acked: set[str] = set()
    lock = threading.Lock()
    result: dict[str, Any] = {}

    def on_batch(start: int, ids: list[str]) -> None:
        with lock:
            acked.update(ids)

    def load() -> None:
        try:
            result["r"] = client.upsert_many(vecs, id_prefix="k", batch_size=200, concurrency=2, on_batch=on_batch, progress=False)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            result["e"] = e

    th = threading.Thread(target=load)
    th.start()
    wait_for("10% acknowledged", lambda: len(acked) >= ROWS // 10, timeout=120)
    killed_at = len(acked)
    leader.kill9()
    th.join(timeout=240)
    assert not th.is_alive(), "bulk load did not finish in 240 s"
    assert "e" not in result, f"bulk load failed: {result.get('e')}"
    r = result["r"]
    assert r.points == ROWS and len(acked) == ROWS
    assert killed_at < ROWS, "the kill came after the load finished"
    assert r.retries > 0, "the kill cost no retry: it did not hit the load"
    # Every acknowledged point is readable through the survivors...
    new_leader = cluster.leader(exclude=leader)
    assert new_leader is not leader
    check = kindex.Client([x.grpc for x in cluster.nodes if x is not leader])
    ids = sorted(acked)
    for i in range(0, len(ids), 5000):
        got = check.get(ids[i : i + 5000], consistency="linearizable")
        assert len(got) == len(ids[i : i + 5000])
    # ...and, once the killed node is back and caught up, stored on every replica
    # (same live count and the same content checksum on all three).
    leader.start()
    st = wait_for("all replicas hold every point", lambda: _acked_everywhere(cluster, ROWS), timeout=120, nodes=tuple(cluster.nodes))
    assert len(st) == 3
    print(f"kill at {killed_at}/{ROWS} acknowledged; {r.retries} retries; load {r.seconds:.1f}s")
