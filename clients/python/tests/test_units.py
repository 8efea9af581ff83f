"""Pieces that need no node: wire encoding, filters, error mapping, retries, batching."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

import kindex
from kindex import errors, filters
from kindex._batch import batches, encode_upsert, encode_upsert_json, make_batch
from kindex._retry import RetryPolicy, next_node
from kindex._transport import grpc_error
from kindex.v1 import points_pb2 as pb


def test_upsert_bytes_parse_as_the_protobuf_message() -> None:
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(3, 300)).astype(np.float32)  # > 127 floats: multi-byte lengths
    ids = ["a", "é" * 100, "x" * 256]
    b = make_batch(0, ids, vecs, [{"lang": "en", "n": 3}, None, {"t": "ü"}])
    m = pb.UpsertRequest.FromString(encode_upsert("docs", b))
    assert m.index == "docs"
    assert [p.id for p in m.points] == ids
    for p, v in zip(m.points, vecs):
        assert np.array_equal(np.asarray(p.vector, dtype=np.float32), v)
    assert json.loads(m.points[0].payload_json) == {"lang": "en", "n": 3}
    assert not m.points[1].HasField("payload_json")
    assert json.loads(m.points[2].payload_json) == {"t": "ü"}
    # And the same bytes as protobuf's own encoder, for the message protobuf builds.
    ref = pb.UpsertRequest(
        index="docs",
        points=[
            pb.Point(id=i, vector=v.tolist(), payload_json=p) if p else pb.Point(id=i, vector=v.tolist())
            for i, v, p in zip(ids, vecs, b.payloads)
        ],
    )
    assert encode_upsert("docs", b) == ref.SerializeToString()
    assert pb.UpsertRequest.FromString(encode_upsert("", b)).index == ""


def test_upsert_json_body() -> None:
    b = make_batch(5, ["a", "b"], [[1, 2], [3, 4.5]], [{"k": [1, {"x": None}]}, None])
    body = json.loads(encode_upsert_json(b))
    assert body == {
        "points": [
            {"id": "a", "vector": [1.0, 2.0], "payload": {"k": [1, {"x": None}]}},
            {"id": "b", "vector": [3.0, 4.5]},
        ]
    }


@pytest.mark.parametrize(
    "payload,why",
    [([1], "must be a dict"), ({"x": float("nan")}, "not JSON"), ({"x": object()}, "not JSON")],
)
def test_bad_payloads_are_refused_before_sending(payload: Any, why: str) -> None:
    with pytest.raises(kindex.InvalidArgumentError, match=why):
        make_batch(0, ["a"], [[1.0]], [payload])


def test_batch_check_names_the_row() -> None:
    b = make_batch(10, ["a", "b"], [[1.0, 2.0], [np.nan, 0.0]])
    with pytest.raises(kindex.InvalidArgumentError, match=r"row 11 \(id 'b'\)"):
        b.check()
    with pytest.raises(kindex.InvalidArgumentError, match="dimension 2, the index has dimension 3"):
        make_batch(0, ["a"], [[1.0, 2.0]]).check(3)
    with pytest.raises(kindex.InvalidArgumentError, match="id must be"):
        make_batch(0, [""], [[1.0]]).check()
    with pytest.raises(kindex.InvalidArgumentError, match="id must be"):
        make_batch(0, ["x" * 257], [[1.0]]).check()


def test_batches_from_arrays_and_iterables() -> None:
    arr = np.arange(14, dtype=np.float32).reshape(7, 2)
    bs = list(batches(arr, batch_size=3, id_prefix="r"))
    assert [(b.start, b.ids) for b in bs] == [(0, ["r0", "r1", "r2"]), (3, ["r3", "r4", "r5"]), (6, ["r6"])]
    assert np.array_equal(np.concatenate([b.vectors for b in bs]), arr)
    bs = list(batches(arr, ids=(f"x{i}" for i in range(7)), payloads=[{"i": i} for i in range(7)], batch_size=4))
    assert bs[1].ids == ["x4", "x5", "x6"] and json.loads(bs[1].payloads[0] or "") == {"i": 4}
    pts = [kindex.Point("a", [1, 2]), {"id": "b", "vector": [3, 4], "payload": {"p": 1}}, ("c", [5, 6])]
    bs = list(batches(iter(pts), batch_size=2))
    assert [b.ids for b in bs] == [["a", "b"], ["c"]] and bs[0].payloads[1] == '{"p":1}'
    with pytest.raises(kindex.InvalidArgumentError, match="3 ids for 7 rows"):
        list(batches(arr, ids=["a", "b", "c"], batch_size=2))
    with pytest.raises(kindex.InvalidArgumentError, match="2-D"):
        list(batches(np.zeros(3), batch_size=2))
    with pytest.raises(kindex.InvalidArgumentError, match="row 1"):
        list(batches([("a", [1.0]), 42], batch_size=5))


def test_filters_short_and_full_forms() -> None:
    full = {
        "must": [
            {"field": "lang", "match": "en"},
            {"field": "n", "match": 3},
            {"field": "ok", "match": True},
            {"field": "year", "range": {"gte": 2000.0, "lt": 2010.0}},
        ]
    }
    short = {"lang": "en", "n": 3, "ok": True, "year": {"gte": 2000, "lt": 2010}}
    assert filters.normalize(short) == full
    assert filters.normalize(full) == full
    assert filters.normalize(None) is None and filters.normalize({}) is None
    f = filters.to_proto(short, pb)
    assert f.must[0].match.text == "en"
    assert f.must[1].match.WhichOneof("value") == "integer"
    assert f.must[2].match.WhichOneof("value") == "boolean"  # bool is not taken for an int
    assert f.must[3].range.gte == 2000 and f.must[3].range.HasField("lt") and not f.must[3].range.HasField("gt")


@pytest.mark.parametrize(
    "f,msg",
    [
        ({"x": 1.5}, "use a range for floats"),
        ({"x": [1, 2]}, "match takes"),
        ({"x": {}}, "needs one of"),
        ({"x": {"gte": float("inf")}}, "finite"),
        ({"x": {"between": 1}}, "unknown range keys"),
        ({"must": [{"field": "", "match": 1}]}, "non-empty"),
        ({"must": [{"field": "a", "match": 1, "range": {"gt": 1}}]}, "exactly one"),
        ({"must": [{"field": "a", "equals": 1}]}, "unknown keys"),
        ({f"f{i}": 1 for i in range(65)}, "limit is 64"),
        ({"x": 2**63}, "i64"),
    ],
)
def test_bad_filters(f: Any, msg: str) -> None:
    with pytest.raises(kindex.InvalidArgumentError, match=msg):
        filters.normalize(f)


class FakeRpcError(Exception):
    def __init__(self, code: Any, details: str, md: list[tuple[str, str]]) -> None:
        self._c, self._d, self._md = code, details, md

    def code(self) -> Any:
        return self._c

    def details(self) -> str:
        return self._d

    def trailing_metadata(self) -> list[tuple[str, str]]:
        return self._md


def test_grpc_errors_map_to_classes() -> None:
    import grpc

    e = grpc_error(
        FakeRpcError(
            grpc.StatusCode.FAILED_PRECONDITION,
            "not the leader",
            [("kindex-leader", "127.0.0.3:7070"), ("kindex-leader-id", "2")],
        ),  # type: ignore[arg-type]
        "127.0.0.1:7070",
    )
    assert isinstance(e, kindex.NotLeaderError) and e.retryable and e.leader == "127.0.0.3:7070"
    plain = grpc_error(FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "other", []), "n")  # type: ignore[arg-type]
    assert type(plain) is kindex.FailedPreconditionError and not plain.retryable
    for code, cls in [
        (grpc.StatusCode.INVALID_ARGUMENT, kindex.InvalidArgumentError),
        (grpc.StatusCode.NOT_FOUND, kindex.NotFoundError),
        (grpc.StatusCode.UNAVAILABLE, kindex.UnavailableError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, kindex.ResourceExhaustedError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, kindex.DeadlineExceededError),
        (grpc.StatusCode.INTERNAL, kindex.InternalError),
    ]:
        assert type(grpc_error(FakeRpcError(code, "m", []), "n")) is cls  # type: ignore[arg-type]
    quota = grpc_error(
        FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, 'quota policy "cap"', [("kindex-quota-exceeded", "1")]),  # type: ignore[arg-type]
        "n",
    )
    assert type(quota) is kindex.QuotaExceededError and not quota.retryable
    broken = grpc_error(FakeRpcError(grpc.StatusCode.UNKNOWN, "transport error", []), "n")  # type: ignore[arg-type]
    assert isinstance(broken, kindex.UnavailableError)


def test_http_errors_map_to_classes() -> None:
    e = errors.from_http(400, {"error": {"code": "invalid_argument", "message": "k must be"}}, node="h")
    assert isinstance(e, kindex.InvalidArgumentError) and isinstance(e, ValueError)
    assert str(e) == "invalid_argument on h: k must be"
    assert isinstance(errors.from_http(503, {"error": {"code": "unavailable", "message": "x"}}), kindex.UnavailableError)
    assert isinstance(errors.from_http(502, "bad gateway"), kindex.UnavailableError)
    assert isinstance(errors.from_http(507, None), kindex.ResourceExhaustedError)
    quota = errors.from_http(429, {"error": {"code": "quota_exceeded", "message": 'quota policy "cap"'}})
    assert type(quota) is kindex.QuotaExceededError and not quota.retryable
    assert type(errors.from_http(429, None)) is kindex.QuotaExceededError
    assert isinstance(errors.from_http(404, {"error": {"code": "not_found", "message": "x"}}), kindex.NotFoundError)


def test_backoff_and_node_choice() -> None:
    p = RetryPolicy()
    assert [round(p.delay(r), 3) for r in range(1, 8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    assert p.give_up(30, 0, 0.1) and p.give_up(2, 119.95, 0.1) and not p.give_up(2, 1, 0.1)
    nodes = ["127.0.0.1:7070", "127.0.0.2:7070", "127.0.0.3:7070"]
    hinted = kindex.NotLeaderError("x", leader="127.0.0.3:7070")
    assert next_node(nodes, 0, hinted) == 2
    assert next_node(nodes, 0, kindex.NotLeaderError("x", leader="http://127.0.0.2:7070")) == 1
    assert next_node(nodes, 1, kindex.NotLeaderError("x", leader="10.0.0.9:7070")) == 2
    assert next_node(nodes, 2, kindex.UnavailableError("x")) == 0


class FakeTransport:
    def __init__(self, name: str, fail: list[errors.KindexError]) -> None:
        self.node, self.fail, self.calls = name, fail, 0

    def count(self, index: str, c: Any, t: Any) -> int:
        self.calls += 1
        if self.fail:
            raise self.fail.pop(0)
        return 7


def test_client_follows_the_leader_hint_and_gives_up_on_permanent_errors() -> None:
    c = kindex.Client(["127.0.0.1:1", "127.0.0.2:1", "127.0.0.3:1"], retry=RetryPolicy(first_delay=0.001))
    t = [
        FakeTransport("a", [kindex.NotLeaderError("not leader", code="failed_precondition", leader="127.0.0.3:1")]),
        FakeTransport("b", [kindex.InvalidArgumentError("never called")]),
        FakeTransport("c", []),
    ]
    c._t = t  # type: ignore[assignment]
    assert c.count() == 7
    assert [x.calls for x in t] == [1, 0, 1] and c.retries == 1
    # Not retryable: raised at once.
    t[2].fail = [kindex.InvalidArgumentError("bad", code="invalid_argument")]
    with pytest.raises(kindex.InvalidArgumentError):
        c.count()
    assert t[2].calls == 2 and c.retries == 1
    # Retryable until the attempts run out; the error says how many were made.
    c.retry = RetryPolicy(attempts=4, first_delay=0.001)
    for x in t:
        x.fail = [kindex.UnavailableError("down", code="unavailable") for _ in range(5)]
    with pytest.raises(kindex.UnavailableError) as ei:
        c.count()
    assert ei.value.attempts == 4 and "gave up after 4 attempts" in str(ei.value)


class RecordingTransport:
    """Answers writes with a token and records what reads were sent."""

    node = "fake"

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.applied = 0

    def delete(self, index: str, ids: list[str]) -> kindex.WriteResult:
        self.applied += 10
        return kindex.WriteResult(len(ids), kindex.ConsistencyToken({0: self.applied, 1: 3}))

    def count(self, index: str, c: Any, t: Any) -> int:
        self.seen.append((c, t))
        return 0


def test_session_reads_carry_the_clients_token() -> None:
    c = kindex.Client("127.0.0.1:1")
    rec = RecordingTransport()
    c._t = [rec]  # type: ignore[list-item]
    c.count(consistency="session")
    assert rec.seen[-1] == (kindex.Consistency.SESSION, kindex.ConsistencyToken())
    c.delete(["a"])
    c.delete(["b"])
    assert c.token == kindex.ConsistencyToken({0: 20, 1: 3})  # merged: the later per shard
    c.count(consistency="session")
    assert rec.seen[-1] == (kindex.Consistency.SESSION, kindex.ConsistencyToken({0: 20, 1: 3}))
    explicit = kindex.ConsistencyToken({0: 1})
    c.count(consistency="session", token=explicit)
    assert rec.seen[-1][1] == explicit
    c.count()  # default: no token sent (the node reads from the leader)
    assert rec.seen[-1] == (None, None)
    assert kindex.ConsistencyToken({0: 5}).merge(kindex.ConsistencyToken({0: 2, 2: 1})).shards == {0: 5, 2: 1}
