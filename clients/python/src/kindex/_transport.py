"""One connection to one node, per protocol (gRPC, HTTP) and flavour (sync, async).

A transport sends one request and maps the answer or the failure; choosing
the node and retrying is the client's job (``_retry.py``).
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any, Optional

import grpc
import grpc.aio
import httpx

from . import errors, filters
from ._auth import AUTHORIZATION, ApiKey
from ._batch import Batch, encode_upsert, encode_upsert_json
from .types import (
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
from .v1 import points_pb2 as pb
from .v1 import points_pb2_grpc as pb_grpc

LEADER_HEADER = "kindex-leader"
LEADER_ID_HEADER = "kindex-leader-id"
# On a write a quota policy refused (docs/policies.md).
QUOTA_EXCEEDED_HEADER = "kindex-quota-exceeded"
#: Large enough for a batch of 10,000 vectors of a few thousand dimensions.
MAX_MESSAGE = 256 << 20
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    # Retries are ours (they follow leader hints); no hidden gRPC-level ones.
    ("grpc.enable_retries", 0),
    # A killed node should be tried again soon after it is back.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]

_CONSISTENCY_PB = {
    None: pb.CONSISTENCY_UNSPECIFIED,
    Consistency.EVENTUAL: pb.CONSISTENCY_EVENTUAL,
    Consistency.SESSION: pb.CONSISTENCY_SESSION,
    Consistency.LINEARIZABLE: pb.CONSISTENCY_LINEARIZABLE,
}


def grpc_target(addr: str) -> str:
    """``http://host:port`` (the CLI's spelling) or ``host:port`` -> ``host:port``."""
    for scheme in ("http://", "grpc://"):
        if addr.startswith(scheme):
            return addr[len(scheme) :].rstrip("/")
    return addr.rstrip("/")


def http_base(addr: str) -> str:
    return addr.rstrip("/") if "://" in addr else f"http://{addr.rstrip('/')}"


def grpc_metadata(key: Optional[ApiKey]) -> Optional[tuple[tuple[str, str], ...]]:
    """The metadata sent with every gRPC call: ``authorization: Bearer <key>``, or none."""
    return ((AUTHORIZATION, key.authorization),) if key is not None else None


def http_headers(key: Optional[ApiKey]) -> dict[str, str]:
    """The headers sent with every HTTP request: ``Authorization: Bearer <key>``, or none.
    (httpx shows ``Authorization`` as ``[secure]`` in reprs.)"""
    return {"Authorization": key.authorization} if key is not None else {}


# ---------------------------------------------------------------- gRPC mapping


def grpc_error(e: grpc.RpcError, node: str) -> errors.KindexError:
    code_obj = e.code() if hasattr(e, "code") else None
    code = code_obj.name.lower() if code_obj is not None else "unknown"
    details = (e.details() if hasattr(e, "details") else None) or str(e)
    md: dict[str, str] = {}
    for getter in ("initial_metadata", "trailing_metadata"):
        try:
            for k, v in getattr(e, getter)() or ():
                md[k] = v if isinstance(v, str) else v.decode(errors="replace")
        except Exception:  # noqa: BLE001 - metadata is best effort (not all errors carry it)
            pass
    if code == "resource_exhausted" and QUOTA_EXCEEDED_HEADER in md:
        code = "quota_exceeded"
    if code in ("unknown", "internal") and "transport error" in details:
        # The connection broke mid-request (how tonic reports it): like unavailable.
        code = "unavailable"
    return errors.from_code(
        code,
        details,
        node=node,
        leader=md.get(LEADER_HEADER),
        not_leader=LEADER_ID_HEADER in md,
    )


def _token_in(t: Optional[ConsistencyToken]) -> Optional[pb.ConsistencyToken]:
    if not t:
        return None
    return pb.ConsistencyToken(
        shards=[pb.ShardIndex(shard=s, applied_index=i) for s, i in sorted(t.shards.items())]
    )


def _token_out(t: Any) -> ConsistencyToken:
    return ConsistencyToken({s.shard: s.applied_index for s in t.shards})


def _payload_out(p: Any) -> Optional[dict[str, Any]]:
    if not p.HasField("payload_json"):
        return None
    v = json.loads(p.payload_json)
    return v if isinstance(v, dict) else None


def _write_out(r: Any) -> WriteResult:
    return WriteResult(affected=r.affected, token=_token_out(r.token))


def _search_req(index: str, q: dict[str, Any]) -> Any:
    req = pb.SearchRequest(
        index=index,
        vector=q["vector"],
        k=q["k"],
        with_vectors=q["with_vectors"],
        with_payload=q["with_payload"],
        consistency=_CONSISTENCY_PB[q["consistency"]],
    )
    if q["ef_search"] is not None:
        req.ef_search = q["ef_search"]
    if q.get("rescore") is not None:
        req.rescore = q["rescore"]
    f = filters.to_proto(q["filter"], pb)
    if f is not None:
        req.filter.CopyFrom(f)
    t = _token_in(q["token"])
    if t is not None:
        req.token.CopyFrom(t)
    return req


def _search_out(r: Any, with_vectors: bool) -> SearchResult:
    return SearchResult(
        hits=[
            ScoredPoint(
                id=h.id,
                distance=h.distance,
                vector=list(h.vector) if with_vectors else None,
                payload=_payload_out(h),
            )
            for h in r.hits
        ],
        failures=[ShardFailure(f.shard, f.message) for f in r.failures],
    )


def _get_req(index: str, ids: list[str], q: dict[str, Any]) -> Any:
    req = pb.GetRequest(
        index=index,
        ids=ids,
        with_vectors=q["with_vectors"],
        with_payload=q["with_payload"],
        consistency=_CONSISTENCY_PB[q["consistency"]],
    )
    t = _token_in(q["token"])
    if t is not None:
        req.token.CopyFrom(t)
    return req


def _get_out(r: Any, with_vectors: bool) -> list[Point]:
    return [
        Point(
            id=p.id,
            vector=list(p.vector) if with_vectors else None,
            payload=_payload_out(p),
        )
        for p in r.points
    ]


def _count_req(index: str, consistency: Optional[Consistency], token: Any) -> Any:
    req = pb.CountRequest(index=index, consistency=_CONSISTENCY_PB[consistency])
    t = _token_in(token)
    if t is not None:
        req.token.CopyFrom(t)
    return req


def _info_out(r: Any) -> IndexInfo:
    lim = r.limits
    return IndexInfo(
        index=r.index,
        dimension=r.dimension,
        metric=r.metric,
        shards=r.shards,
        vectors=r.vectors,
        limits=Limits(lim.max_batch, lim.max_id_bytes, lim.max_payload_bytes, lim.max_k),
    )


class GrpcTransport:
    def __init__(self, addr: str, timeout: float, key: Optional[ApiKey] = None) -> None:
        self.node = grpc_target(addr)
        self.timeout = timeout
        self._metadata = grpc_metadata(key)
        self.channel = grpc.insecure_channel(self.node, options=GRPC_OPTIONS)
        self.stub = pb_grpc.PointsStub(self.channel)  # type: ignore[no-untyped-call]
        # Upsert takes the bytes of encode_upsert (no message objects).
        self._upsert = self.channel.unary_unary(
            "/kindex.v1.Points/Upsert",
            request_serializer=None,
            response_deserializer=pb.WriteResponse.FromString,
        )

    def _call(self, fn: Any, req: Any) -> Any:
        try:
            return fn(req, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise grpc_error(e, self.node) from None

    def upsert(self, index: str, batch: Batch) -> WriteResult:
        return _write_out(self._call(self._upsert, encode_upsert(index, batch)))

    def delete(self, index: str, ids: list[str]) -> WriteResult:
        return _write_out(self._call(self.stub.Delete, pb.DeleteRequest(index=index, ids=ids)))

    def get(self, index: str, ids: list[str], q: dict[str, Any]) -> list[Point]:
        return _get_out(self._call(self.stub.Get, _get_req(index, ids, q)), q["with_vectors"])

    def search(self, index: str, q: dict[str, Any]) -> SearchResult:
        return _search_out(self._call(self.stub.Search, _search_req(index, q)), q["with_vectors"])

    def count(self, index: str, consistency: Optional[Consistency], token: Any) -> int:
        return int(self._call(self.stub.Count, _count_req(index, consistency, token)).count)

    def info(self, index: str) -> IndexInfo:
        return _info_out(self._call(self.stub.Info, pb.InfoRequest(index=index)))

    def close(self) -> None:
        self.channel.close()


class AsyncGrpcTransport:
    """Must be created inside the event loop that uses it (grpc.aio binds to it)."""

    def __init__(self, addr: str, timeout: float, key: Optional[ApiKey] = None) -> None:
        self.node = grpc_target(addr)
        self.timeout = timeout
        self._metadata = grpc_metadata(key)
        self.channel = grpc.aio.insecure_channel(self.node, options=GRPC_OPTIONS)
        self.stub = pb_grpc.PointsStub(self.channel)  # type: ignore[no-untyped-call]
        self._upsert = self.channel.unary_unary(
            "/kindex.v1.Points/Upsert",
            request_serializer=None,
            response_deserializer=pb.WriteResponse.FromString,
        )

    async def _call(self, fn: Any, req: Any) -> Any:
        try:
            return await fn(req, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise grpc_error(e, self.node) from None

    async def upsert(self, index: str, batch: Batch) -> WriteResult:
        return _write_out(await self._call(self._upsert, encode_upsert(index, batch)))

    async def delete(self, index: str, ids: list[str]) -> WriteResult:
        r = await self._call(self.stub.Delete, pb.DeleteRequest(index=index, ids=ids))
        return _write_out(r)

    async def get(self, index: str, ids: list[str], q: dict[str, Any]) -> list[Point]:
        r = await self._call(self.stub.Get, _get_req(index, ids, q))
        return _get_out(r, q["with_vectors"])

    async def search(self, index: str, q: dict[str, Any]) -> SearchResult:
        r = await self._call(self.stub.Search, _search_req(index, q))
        return _search_out(r, q["with_vectors"])

    async def count(self, index: str, consistency: Optional[Consistency], token: Any) -> int:
        r = await self._call(self.stub.Count, _count_req(index, consistency, token))
        return int(r.count)

    async def info(self, index: str) -> IndexInfo:
        return _info_out(await self._call(self.stub.Info, pb.InfoRequest(index=index)))

    async def close(self) -> None:
        await self.channel.close()


# ---------------------------------------------------------------- HTTP mapping

_JSON = {"content-type": "application/json"}


def _http_error(r: httpx.Response, node: str) -> errors.KindexError:
    try:
        body: Any = r.json()
    except ValueError:
        body = r.text
    return errors.from_http(r.status_code, body, node=node)


def _transport_error(e: httpx.HTTPError, node: str) -> errors.KindexError:
    if isinstance(e, httpx.TimeoutException):
        return errors.DeadlineExceededError(str(e) or "timed out", code="deadline_exceeded", node=node)
    return errors.UnavailableError(
        f"{type(e).__name__}: {e}", code="unavailable", node=node
    )


def _http_read_body(index: str, q: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"withVectors": q["with_vectors"], "withPayload": q["with_payload"]}
    if q["consistency"] is not None:
        body["consistency"] = q["consistency"].value
    if q["token"]:
        body["token"] = q["token"].to_json()
    return body


def _http_search_body(q: dict[str, Any]) -> dict[str, Any]:
    body = _http_read_body("", q)
    body["vector"] = [float(x) for x in q["vector"]]
    body["k"] = q["k"]
    if q["ef_search"] is not None:
        body["efSearch"] = q["ef_search"]
    if q.get("rescore") is not None:
        body["rescore"] = q["rescore"]
    f = filters.normalize(q["filter"])
    if f is not None:
        body["filter"] = f
    return body


def _http_points(v: dict[str, Any]) -> list[Point]:
    return [
        Point(id=p["id"], vector=p.get("vector"), payload=p.get("payload") or None)
        for p in v.get("points", [])
    ]


def _http_search_out(v: dict[str, Any]) -> SearchResult:
    return SearchResult(
        hits=[
            ScoredPoint(
                id=h["id"],
                distance=float(h["distance"]),
                vector=h.get("vector"),
                payload=h.get("payload") or None,
            )
            for h in v.get("hits", [])
        ],
        failures=[ShardFailure(int(f["shard"]), str(f["message"])) for f in v.get("failures", [])],
    )


def _http_write_out(v: dict[str, Any]) -> WriteResult:
    return WriteResult(affected=int(v["affected"]), token=ConsistencyToken.from_json(v.get("token")))


def _http_info_out(v: dict[str, Any]) -> IndexInfo:
    lim = v.get("limits", {})
    return IndexInfo(
        index=v["index"],
        dimension=int(v["dimension"]),
        metric=v["metric"],
        shards=int(v["shards"]),
        vectors=int(v["vectors"]),
        limits=Limits(
            int(lim.get("maxBatch", 0)),
            int(lim.get("maxIdBytes", 0)),
            int(lim.get("maxPayloadBytes", 0)),
            int(lim.get("maxK", 0)),
        ),
    )


def _path(index: str, rest: str = "") -> str:
    # The HTTP API always names the index; the node's default one is "default".
    return f"/v1/indexes/{urllib.parse.quote(index or 'default', safe='')}{rest}"


class HttpTransport:
    def __init__(self, addr: str, timeout: float, key: Optional[ApiKey] = None) -> None:
        self.node = http_base(addr)
        self.http = httpx.Client(base_url=self.node, timeout=timeout, headers=http_headers(key))

    def _req(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise _transport_error(e, self.node) from None
        if r.status_code >= 400:
            raise _http_error(r, self.node)
        return r.json()

    def upsert(self, index: str, batch: Batch) -> WriteResult:
        body = encode_upsert_json(batch)
        return _http_write_out(self._req("POST", _path(index, "/points"), content=body, headers=_JSON))

    def delete(self, index: str, ids: list[str]) -> WriteResult:
        return _http_write_out(self._req("POST", _path(index, "/points/delete"), json={"ids": ids}))

    def get(self, index: str, ids: list[str], q: dict[str, Any]) -> list[Point]:
        body = _http_read_body(index, q) | {"ids": ids}
        return _http_points(self._req("POST", _path(index, "/points/get"), json=body))

    def search(self, index: str, q: dict[str, Any]) -> SearchResult:
        return _http_search_out(self._req("POST", _path(index, "/search"), json=_http_search_body(q)))

    def count(self, index: str, consistency: Optional[Consistency], token: Any) -> int:
        params = {"consistency": consistency.value} if consistency else {}
        return int(self._req("GET", _path(index, "/count"), params=params)["count"])

    def info(self, index: str) -> IndexInfo:
        return _http_info_out(self._req("GET", _path(index)))

    def close(self) -> None:
        self.http.close()


class AsyncHttpTransport:
    def __init__(self, addr: str, timeout: float, key: Optional[ApiKey] = None) -> None:
        self.node = http_base(addr)
        self.http = httpx.AsyncClient(base_url=self.node, timeout=timeout, headers=http_headers(key))

    async def _req(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = await self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise _transport_error(e, self.node) from None
        if r.status_code >= 400:
            raise _http_error(r, self.node)
        return r.json()

    async def upsert(self, index: str, batch: Batch) -> WriteResult:
        body = encode_upsert_json(batch)
        r = await self._req("POST", _path(index, "/points"), content=body, headers=_JSON)
        return _http_write_out(r)

    async def delete(self, index: str, ids: list[str]) -> WriteResult:
        r = await self._req("POST", _path(index, "/points/delete"), json={"ids": ids})
        return _http_write_out(r)

    async def get(self, index: str, ids: list[str], q: dict[str, Any]) -> list[Point]:
        body = _http_read_body(index, q) | {"ids": ids}
        return _http_points(await self._req("POST", _path(index, "/points/get"), json=body))

    async def search(self, index: str, q: dict[str, Any]) -> SearchResult:
        r = await self._req("POST", _path(index, "/search"), json=_http_search_body(q))
        return _http_search_out(r)

    async def count(self, index: str, consistency: Optional[Consistency], token: Any) -> int:
        params = {"consistency": consistency.value} if consistency else {}
        return int((await self._req("GET", _path(index, "/count"), params=params))["count"])

    async def info(self, index: str) -> IndexInfo:
        return _http_info_out(await self._req("GET", _path(index)))

    async def close(self) -> None:
        await self.http.aclose()
