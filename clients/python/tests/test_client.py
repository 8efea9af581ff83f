"""The clients against a real standalone node, over gRPC and HTTP, sync and async."""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator

import numpy as np
import pytest

import kindex
import conftest
from conftest import Node

PROTOCOLS = ["grpc", "http"]


def addr(node: Node, protocol: str) -> str:
    return node.grpc if protocol == "grpc" else node.http


@pytest.fixture(params=PROTOCOLS)
def client(request: Any, node: Node) -> Iterator[kindex.Client]:
    with kindex.Client(addr(node, request.param), protocol=request.param) as c:
        yield c


def unique(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns()}"


def test_round_trip(client: kindex.Client) -> None:
    p = unique(client.protocol)
    info = client.info()
    assert (info.dimension, info.metric, info.shards) == (4, "l2", 1)
    assert info.limits.max_batch == 10_000 and info.limits.max_k == 1000
    w = client.upsert(
        [
            kindex.Point(f"{p}-a", [1, 0, 0, 0], {"lang": "en", "year": 2001, "ok": True}),
            {"id": f"{p}-b", "vector": [0, 1, 0, 0], "payload": {"lang": "de", "year": 1999}},
            (f"{p}-c", np.array([0, 0, 1, 0], dtype=np.float64)),
        ]
    )
    assert w.affected == 3 and w.token.shards and client.token.shards[0] >= w.token.shards[0]
    got = {x.id: x for x in client.get([f"{p}-a", f"{p}-b", f"{p}-missing"], with_vectors=True)}
    assert set(got) == {f"{p}-a", f"{p}-b"}
    assert got[f"{p}-a"].vector == [1, 0, 0, 0] and got[f"{p}-a"].payload == {"lang": "en", "year": 2001, "ok": True}
    r = client.search([0.9, 0.1, 0, 0], k=2)
    assert r.hits[0].id == f"{p}-a" and r.hits[0].distance == pytest.approx(0.02, abs=1e-5)
    assert r.hits[0].payload == {"lang": "en", "year": 2001, "ok": True} and r.failures == []
    # Filters, both spellings, through the node.
    hits = client.search([0, 1, 0, 0], k=10, filter={"lang": "en"}).hits
    assert [h.id for h in hits if h.id.startswith(p)] == [f"{p}-a"]
    hits = client.search([1, 0, 0, 0], k=10, filter={"must": [{"field": "year", "range": {"lt": 2000}}]}).hits
    assert [h.id for h in hits if h.id.startswith(p)] == [f"{p}-b"]
    hits = client.search([1, 0, 0, 0], k=10, filter={"ok": True, "year": {"gte": 2001}}).hits
    assert [h.id for h in hits if h.id.startswith(p)] == [f"{p}-a"]
    # Consistency levels and the session token are accepted by the node.
    n = client.count()
    for c in ["eventual", kindex.Consistency.SESSION, "linearizable"]:
        assert client.count(consistency=c) == n
        assert len(client.get([f"{p}-a"], consistency=c)) == 1
        assert client.search([1, 0, 0, 0], k=1, consistency=c, token=w.token).hits
    d = client.delete([f"{p}-a", f"{p}-nope"])
    assert d.affected == 1
    assert client.get([f"{p}-a"]) == [] and client.count() == n - 1


def test_errors_are_mapped(client: kindex.Client) -> None:
    with pytest.raises(kindex.InvalidArgumentError, match="dimension"):
        client.search([1, 0, 0], k=1)
    with pytest.raises(kindex.InvalidArgumentError, match="k must be"):
        client.search([1, 0, 0, 0], k=0)
    with pytest.raises(kindex.InvalidArgumentError, match=r"rescore must be in 1\.\.=100, got 0"):
        client.search([1, 0, 0, 0], k=1, rescore=0)
    with pytest.raises(kindex.InvalidArgumentError, match="got 101"):
        client.search([1, 0, 0, 0], k=1, rescore=101)
    # In range: accepted (and ignored: this index has no quantization).
    client.search([1, 0, 0, 0], k=1, rescore=100)
    with pytest.raises(kindex.InvalidArgumentError) as e:
        client.upsert([("x", [1, 2, 3, 4, 5])])  # wrong dimension: refused by the node
    assert e.value.node is not None and e.value.code == "invalid_argument"
    with pytest.raises(kindex.InvalidArgumentError, match="NaN"):
        client.upsert([("x", [1, 2, float("nan"), 4])])  # refused before sending
    with pytest.raises(ValueError, match="consistency must be"):
        client.count(consistency="strong")
    other = kindex.Client(client.nodes, protocol=client.protocol, index="no-such-index", retry=kindex.NO_RETRY)
    with pytest.raises(kindex.NotFoundError):
        other.count()


def test_unreachable_node_is_unavailable_after_retries() -> None:
    # An address of this test process's own range that no node uses.
    ip = f"127.{conftest._octet}.254.1"
    for protocol, a in [("grpc", f"{ip}:7070"), ("http", f"http://{ip}:7080")]:
        c = kindex.Client(a, protocol=protocol, timeout=2, retry=kindex.RetryPolicy(attempts=3, first_delay=0.01))
        t = time.monotonic()
        with pytest.raises(kindex.UnavailableError) as e:
            c.count()
        assert e.value.attempts == 3 and c.retries == 2 and time.monotonic() - t < 10


def test_bulk_from_numpy_with_payloads_and_callback(client: kindex.Client) -> None:
    p = unique("bulk")
    rng = np.random.default_rng(7)
    vecs = rng.normal(size=(2500, 4)).astype(np.float32)
    seen: list[tuple[int, int]] = []
    before = client.count()
    r = client.upsert_many(
        vecs,
        id_prefix=f"{p}-",
        payloads=({"row": i} for i in range(len(vecs))),
        batch_size=300,
        concurrency=3,
        on_batch=lambda start, ids: seen.append((start, len(ids))),
        progress=False,
    )
    assert (r.points, r.batches) == (2500, 9) and r.points_per_second > 0
    assert sorted(seen) == [(s, min(300, 2500 - s)) for s in range(0, 2500, 300)]
    assert client.count() == before + 2500
    pts = client.get([f"{p}-0", f"{p}-2499"], with_vectors=True)
    assert {x.id: x.payload for x in pts} == {f"{p}-0": {"row": 0}, f"{p}-2499": {"row": 2499}}
    assert np.allclose(pts[0].vector, vecs[0] if pts[0].id.endswith("-0") else vecs[2499])


def test_bulk_from_an_iterable_and_a_bad_row(client: kindex.Client) -> None:
    p = unique("iter")
    pts = ({"id": f"{p}-{i}", "vector": [i, 1, 0, 0]} for i in range(50))
    assert client.upsert_many(pts, batch_size=16, progress=False).points == 50
    bad = [(f"{p}-x{i}", [1, 1, 1, 1]) for i in range(20)] + [(f"{p}-nan", [0, float("nan"), 0, 0])]
    with pytest.raises(kindex.BulkUpsertError) as e:
        client.upsert_many(bad, batch_size=10, concurrency=1, progress=False)
    assert e.value.acknowledged == 20 and e.value.failed_rows == [(20, 21)]
    assert isinstance(e.value.cause, kindex.InvalidArgumentError) and "row 20" in str(e.value)


def test_bulk_applies_back_pressure(node: Node) -> None:
    """At most ``concurrency`` batches are in flight, and the input is read only
    as far as the batches in flight need."""
    c = kindex.Client(node.grpc)
    real = c._t[0].upsert
    lock = threading.Lock()
    state = {"now": 0, "max": 0, "read": 0, "read_at_first_ack": -1}

    def slow(index: str, batch: Any) -> Any:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.05)
        try:
            return real(index, batch)
        finally:
            with lock:
                state["now"] -= 1

    def rows() -> Iterator[tuple[str, list[float]]]:
        for i in range(400):
            state["read"] += 1
            yield (f"bp-{i}", [1.0, 0, 0, float(i)])

    def first_ack(start: int, ids: list[str]) -> None:
        if state["read_at_first_ack"] < 0:
            state["read_at_first_ack"] = state["read"]

    c._t[0].upsert = slow
    r = c.upsert_many(rows(), batch_size=20, concurrency=2, on_batch=first_ack, progress=False)
    assert r.points == 400 and state["max"] == 2
    # Two batches in flight plus the one being cut when the first came back.
    assert state["read_at_first_ack"] <= 3 * 20, state


def test_progress_bar_with_tqdm(node: Node, capsys: Any) -> None:
    pytest.importorskip("tqdm")  # installed by scripts/python-tests.sh; optional for users
    c = kindex.Client(node.grpc)
    c.upsert_many(np.ones((100, 4), dtype=np.float32), id_prefix="pb-", batch_size=30, progress=True)
    err = capsys.readouterr().err
    assert "100/100" in err and "vec" in err


async def test_async_client(node: Node) -> None:
    for protocol in PROTOCOLS:
        p = unique(f"async-{protocol}")
        async with kindex.AsyncClient(addr(node, protocol), protocol=protocol) as c:
            assert (await c.info()).dimension == 4
            w = await c.upsert([(f"{p}-a", [1, 0, 0, 0], {"t": "x"}), (f"{p}-b", [0, 0, 0, 1])])
            assert w.affected == 2 and c.token
            hits = (await c.search([1, 0, 0, 0], k=5, filter={"t": "x"})).hits
            assert [h.id for h in hits if h.id.startswith(p)] == [f"{p}-a"]
            got = await c.get([f"{p}-a"], consistency="session")
            assert got[0].payload == {"t": "x"}
            r = await c.upsert_many(np.ones((1000, 4), dtype=np.float32), id_prefix=f"{p}-m", batch_size=128, concurrency=3, progress=False)
            assert (r.points, r.batches) == (1000, 8)
            n = await c.count(consistency="linearizable")
            assert (await c.delete([f"{p}-a", f"{p}-b"])).affected == 2
            assert await c.count() == n - 2
            with pytest.raises(kindex.InvalidArgumentError):
                await c.search([1, 0], k=1)
            with pytest.raises(kindex.BulkUpsertError) as e:
                await c.upsert_many([(f"{p}-z", [1, 2, 3])], progress=False)
            assert e.value.acknowledged == 0
