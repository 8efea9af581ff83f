"""API keys (docs/security.md): the clients send ``authorization: Bearer <key>``
on every call, take the key from ``api_key=`` or ``KINDEX_API_KEY``, never show
it, and raise ``UnauthenticatedError`` / ``PermissionDeniedError``, unretried,
when the node refuses it.

First without a node: a fake gRPC server and a fake HTTP server on 127.0.0.1
record what each call carried. Then against a real ``kindex-node`` started with
a read-write and a read-only key file, over gRPC and HTTP, sync and async.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import http.server
import json
import logging
import threading
import time
from typing import Any, Callable, Iterator

import grpc
import numpy as np
import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding

import kindex
from conftest import Node, NodeSet
from kindex import errors
from kindex._auth import ENV, ApiKey, resolve
from kindex._retry import RetryPolicy, retryable
from kindex._transport import grpc_error
from kindex.langchain import KindexVectorStore
from kindex.v1 import points_pb2 as pb

RW = "py-rw-key-0123456789abcdef"
RO = "py-ro-key-0123456789abcdef"
WRONG = "py-wrong-key-0123456789abc"
PROTOCOLS = ["grpc", "http"]


@pytest.fixture(autouse=True)
def no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts without ``KINDEX_API_KEY`` (and sets it when it wants one)."""
    monkeypatch.delenv(ENV, raising=False)


# ---------------------------------------------------------------- fake servers


class FakeGrpcNode:
    """Answers every Points RPC with an empty reply; records (method, metadata)."""

    REPLIES: dict[str, Any] = {
        "Upsert": pb.WriteResponse(affected=1),
        "Delete": pb.WriteResponse(affected=1),
        "Get": pb.GetResponse(),
        "Search": pb.SearchResponse(),
        "Count": pb.CountResponse(count=3),
        "Info": pb.InfoResponse(index="default", dimension=2, metric="l2", shards=1, limits=pb.Limits(max_batch=100)),
    }

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Handler(grpc.GenericRpcHandler):
            def service(self, details: Any) -> Any:
                method = details.method.rsplit("/", 1)[-1]
                outer.seen.append((method, {k: v for k, v in details.invocation_metadata}))
                reply = outer.REPLIES[method]
                return grpc.unary_unary_rpc_method_handler(
                    lambda req, ctx: reply, response_serializer=lambda m: m.SerializeToString()
                )

        self.server = grpc.server(cf.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((Handler(),))
        self.addr = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def close(self) -> None:
        self.server.stop(None)


class FakeHttpNode:
    """Answers the REST mirror with empty replies; records (method path, Authorization)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                if n:
                    self.rfile.read(n)
                path = self.path.split("?")[0]
                outer.seen.append((f"{self.command} {path}", self.headers.get("authorization")))
                if path.endswith("/points") or path.endswith("/delete"):
                    body: Any = {"affected": 1}
                elif path.endswith("/get"):
                    body = {"points": []}
                elif path.endswith("/search"):
                    body = {"hits": []}
                elif path.endswith("/count"):
                    body = {"count": 3}
                else:
                    body = {"index": "default", "dimension": 2, "metric": "l2", "shards": 1,
                            "vectors": 0, "limits": {"maxBatch": 100}}
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.addr = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake(request: Any) -> Iterator[Any]:
    f: Any = FakeGrpcNode() if request.param == "grpc" else FakeHttpNode()
    try:
        yield f
    finally:
        f.close()


def every_call(c: kindex.Client) -> None:
    c.info()
    c.count()
    c.get(["a"])
    c.search([1.0, 0.0], k=1)
    c.upsert([("a", [1.0, 0.0])])
    c.upsert_many(np.ones((3, 2), dtype=np.float32), progress=False)
    c.delete(["a"])


async def every_call_async(c: kindex.AsyncClient) -> None:
    await c.info()
    await c.count()
    await c.get(["a"])
    await c.search([1.0, 0.0], k=1)
    await c.upsert([("a", [1.0, 0.0])])
    await c.upsert_many(np.ones((3, 2), dtype=np.float32), progress=False)
    await c.delete(["a"])


def authorizations(fake: Any) -> list[str | None]:
    """The authorization value of every recorded call (None: none sent)."""
    return [md.get("authorization") if isinstance(md, dict) else md for _, md in fake.seen]


ALL_CALLS = 7  # info, count, get, search, upsert, upsert_many's one batch, delete


@pytest.mark.parametrize("fake", PROTOCOLS, indirect=True)
def test_every_call_carries_the_key(fake: Any) -> None:
    protocol = "grpc" if isinstance(fake, FakeGrpcNode) else "http"
    with kindex.Client(fake.addr, protocol=protocol, api_key=RW) as c:
        every_call(c)
    assert len(fake.seen) == ALL_CALLS, fake.seen
    assert authorizations(fake) == [f"Bearer {RW}"] * ALL_CALLS, fake.seen


@pytest.mark.parametrize("fake", PROTOCOLS, indirect=True)
async def test_every_async_call_carries_the_key(fake: Any) -> None:
    protocol = "grpc" if isinstance(fake, FakeGrpcNode) else "http"
    async with kindex.AsyncClient(fake.addr, protocol=protocol, api_key=RO) as c:
        await every_call_async(c)
    assert authorizations(fake) == [f"Bearer {RO}"] * ALL_CALLS, fake.seen


@pytest.mark.parametrize("fake", PROTOCOLS, indirect=True)
def test_the_key_comes_from_the_environment_unless_given(fake: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    protocol = "grpc" if isinstance(fake, FakeGrpcNode) else "http"

    def sent(**kw: Any) -> str | None:
        fake.seen.clear()
        with kindex.Client(fake.addr, protocol=protocol, **kw) as c:
            c.count()
        (value,) = authorizations(fake)
        return value

    assert sent() is None  # no argument, no variable: no header at all
    monkeypatch.setenv(ENV, f" {RO}\n")  # surrounding whitespace is dropped
    assert sent() == f"Bearer {RO}"
    assert sent(api_key=RW) == f"Bearer {RW}"  # the argument wins
    assert sent(api_key="") is None  # and "" turns the variable off
    monkeypatch.setenv(ENV, "")
    assert sent() is None  # an empty variable is no key


def test_resolve_precedence_and_bad_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve(None) is None and resolve("") is None and resolve("  ") is None
    k = resolve(f"  {RW} ")
    assert k is not None and k.authorization == f"Bearer {RW}"
    monkeypatch.setenv(ENV, RO)
    assert resolve(None).authorization == f"Bearer {RO}"  # type: ignore[union-attr]
    assert resolve(RW).authorization == f"Bearer {RW}"  # type: ignore[union-attr]
    assert resolve("") is None
    for bad in ["has space-0123456789", "tab\tinside-0123456789", "é-non-ascii-0123456789", "nul\x00-0123456789"]:
        with pytest.raises(ValueError, match="characters a header cannot carry") as e:
            kindex.Client("127.0.0.1:1", api_key=bad)
        assert bad not in str(e.value)
    monkeypatch.setenv(ENV, "bad key-0123456789")
    with pytest.raises(ValueError, match="KINDEX_API_KEY"):
        kindex.AsyncClient("127.0.0.1:1")


def test_the_key_is_not_shown(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    for protocol, a in [("grpc", "127.0.0.1:1"), ("http", "http://127.0.0.1:1")]:
        c = kindex.Client(a, protocol=protocol, api_key=RW, timeout=2)
        a_ = kindex.AsyncClient(a, protocol=protocol, api_key=RW)
        for obj in [c, a_, c._key, *c._t, *[getattr(t, "http", None) for t in c._t]]:
            assert RW not in repr(obj) and RW not in str(obj), obj
        assert repr(c) == f"Client([{a!r}], protocol={protocol!r}, index='', api_key=<redacted>)"
        assert "api_key=None" in repr(kindex.Client(a, protocol=protocol))
        if protocol == "http":  # httpx masks the header in its own reprs
            assert "[secure]" in repr(c._t[0].http.headers)
        # A retried call logs the error and the next node, not the key.
        c.retry = RetryPolicy(attempts=2, first_delay=0.01, timeout=5)
        with caplog.at_level(logging.DEBUG):
            with pytest.raises(kindex.UnavailableError) as e:
                c.count()
        assert RW not in caplog.text and RW not in str(e.value) and "retrying" in caplog.text
        caplog.clear()
        c.close()
    assert repr(ApiKey(RW)) == "ApiKey(<redacted>)"


def test_langchain_store_passes_the_key_on() -> None:
    emb = DeterministicFakeEmbedding(size=2)
    s = KindexVectorStore(emb, addrs="127.0.0.1:1", api_key=RW)
    assert s.client._key is not None and s.async_client._key is s.client._key
    own = kindex.Client("127.0.0.1:1", api_key=RO)
    s = KindexVectorStore(emb, client=own)
    assert s.async_client._key is own._key  # the async client follows the given sync one
    assert KindexVectorStore(emb, addrs="127.0.0.1:1").async_client._key is None


# ---------------------------------------------------------------- errors and retries


class FakeRpcError(Exception):
    def __init__(self, code: Any, details: str) -> None:
        self._c, self._d = code, details

    def code(self) -> Any:
        return self._c

    def details(self) -> str:
        return self._d


def test_refusals_map_to_their_own_classes() -> None:
    un = grpc_error(FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "invalid API key"), "n")  # type: ignore[arg-type]
    assert type(un) is kindex.UnauthenticatedError and un.code == "unauthenticated" and not un.retryable
    assert "api_key=" in str(un) and "KINDEX_API_KEY" in str(un)
    pd = grpc_error(FakeRpcError(grpc.StatusCode.PERMISSION_DENIED, "read-only"), "n")  # type: ignore[arg-type]
    assert type(pd) is kindex.PermissionDeniedError and pd.code == "permission_denied" and not pd.retryable
    assert not issubclass(kindex.UnauthenticatedError, kindex.PermissionDeniedError)
    assert not issubclass(kindex.PermissionDeniedError, kindex.UnauthenticatedError)
    # The node's JSON error bodies, and bare statuses (a proxy in front of it).
    body = {"error": {"code": "unauthenticated", "message": "invalid API key"}}
    assert type(errors.from_http(401, body, node="h")) is kindex.UnauthenticatedError
    body = {"error": {"code": "permission_denied", "message": "this API key is read-only"}}
    assert type(errors.from_http(403, body, node="h")) is kindex.PermissionDeniedError
    assert type(errors.from_http(401, "Unauthorized")) is kindex.UnauthenticatedError
    assert type(errors.from_http(403, None)) is kindex.PermissionDeniedError


class Refusing:
    def __init__(self, err: errors.KindexError) -> None:
        self.err, self.calls, self.node = err, 0, "fake"

    def count(self, index: str, c: Any, t: Any) -> int:
        self.calls += 1
        raise self.err


class AsyncRefusing(Refusing):
    async def count(self, index: str, c: Any, t: Any) -> int:  # type: ignore[override]
        return super().count(index, c, t)


REFUSALS = [
    pytest.param(lambda: kindex.UnauthenticatedError("invalid API key", code="unauthenticated"), id="unauthenticated"),
    pytest.param(lambda: kindex.PermissionDeniedError("read-only", code="permission_denied"), id="permission_denied"),
]


@pytest.mark.parametrize("make", REFUSALS)
async def test_refusals_are_not_retried(make: Callable[[], errors.KindexError]) -> None:
    e0 = make()
    assert not retryable(e0)
    # Even a refusal marked retryable (a subclass, say) is not retried.
    e0.retryable = True
    assert not retryable(e0)
    policy = RetryPolicy(attempts=5, first_delay=0.001)
    c = kindex.Client(["127.0.0.1:1", "127.0.0.2:1"], retry=policy)
    ts = [Refusing(make()), Refusing(make())]
    c._t = ts  # type: ignore[assignment]
    with pytest.raises(type(e0)) as e:
        c.count()
    assert e.value.attempts == 1 and c.retries == 0 and [t.calls for t in ts] == [1, 0]

    a = kindex.AsyncClient(["127.0.0.1:1", "127.0.0.2:1"], retry=policy)
    ats = [AsyncRefusing(make()), AsyncRefusing(make())]
    a._t, a._loop = ats, asyncio.get_running_loop()  # type: ignore[assignment]
    with pytest.raises(type(e0)):
        await a.count()
    assert a.retries == 0 and [t.calls for t in ats] == [1, 0]


# ---------------------------------------------------------------- a real node with keys


@pytest.fixture(scope="module")
def keyed(node_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A standalone node (4-d l2) with one read-write and one read-only key."""
    d = tmp_path_factory.mktemp("keys")
    (d / "rw").write_text(f"# read-write\n{RW}\n")
    (d / "ro").write_text(f"{RO}\n")
    s = NodeSet(1, 4, "l2", args=["--api-keys-file", str(d / "rw"), "--read-only-api-keys-file", str(d / "ro")])
    try:
        yield s.nodes[0]
    finally:
        s.close()


def addr(node: Node, protocol: str) -> str:
    return node.grpc if protocol == "grpc" else node.http


def unique(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns()}"


V = [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_node_refuses_a_missing_or_wrong_key(keyed: Node, protocol: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Callable[[kindex.Client], Any]] = [
        lambda c: c.count(),
        lambda c: c.info(),
        lambda c: c.search(V, k=1),
        lambda c: c.get(["x"]),
        lambda c: c.upsert([("x", V)]),
        lambda c: c.delete(["x"]),
    ]
    for how in ["no key", "wrong key", "wrong key from the environment"]:
        for call in calls:
            # A client per call: each call's first answer is the refusal. (After a
            # 401/403 to a request with a body, the node may close the HTTP
            # connection, and a next call on it is retried as unavailable.)
            if how == "wrong key from the environment":
                monkeypatch.setenv(ENV, WRONG)
            c = kindex.Client(addr(keyed, protocol), protocol=protocol, api_key=WRONG if how == "wrong key" else None)
            monkeypatch.delenv(ENV, raising=False)
            started = time.monotonic()
            with pytest.raises(kindex.UnauthenticatedError) as e:
                call(c)
            assert e.value.code == "unauthenticated" and e.value.node, (how, e.value)
            assert WRONG not in str(e.value)
            # The default policy would retry for up to 120 s: not retried.
            assert e.value.attempts == 1 and c.retries == 0 and time.monotonic() - started < 10, (how, c)
            c.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_read_only_key_reads_but_cannot_write(keyed: Node, protocol: str) -> None:
    p = unique(f"ro-{protocol}")
    with kindex.Client(addr(keyed, protocol), protocol=protocol, api_key=RW) as rw:
        rw.upsert([(f"{p}-a", [9.0, 9.0, 9.0, 9.0], {"who": p})])
    with kindex.Client(addr(keyed, protocol), protocol=protocol, api_key=RO) as ro:
        assert ro.info().dimension == 4
        n = ro.count()
        assert n >= 1
        assert ro.search([9.0, 9.0, 9.0, 9.0], k=1, filter={"who": p}).hits[0].id == f"{p}-a"
        assert [x.id for x in ro.get([f"{p}-a"])] == [f"{p}-a"]
        with pytest.raises(kindex.PermissionDeniedError) as e:
            ro.upsert([(f"{p}-b", V)])
        assert e.value.code == "permission_denied" and e.value.attempts == 1
        with pytest.raises(kindex.PermissionDeniedError) as e:
            ro.delete([f"{p}-a"])
        assert e.value.attempts == 1  # not retried (the default policy would, for 120 s)
        with pytest.raises(kindex.BulkUpsertError) as b:
            ro.upsert_many(np.ones((5, 4), dtype=np.float32), id_prefix=f"{p}-m", progress=False)
        assert isinstance(b.value.cause, kindex.PermissionDeniedError) and b.value.acknowledged == 0
        assert b.value.cause.attempts == 1
        # Nothing was written or deleted.
        assert ro.count() == n and ro.get([f"{p}-b", f"{p}-m0"]) == [] and len(ro.get([f"{p}-a"])) == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_read_write_key_works_from_the_argument_or_the_environment(
    keyed: Node, protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = unique(f"rw-{protocol}")
    with kindex.Client(addr(keyed, protocol), protocol=protocol, api_key=RW) as c:
        assert c.upsert([(f"{p}-a", V), (f"{p}-b", V)]).affected == 2
        assert c.upsert_many(np.ones((20, 4), dtype=np.float32), id_prefix=f"{p}-m", batch_size=8, progress=False).points == 20
        assert len(c.get([f"{p}-a", f"{p}-m19"])) == 2
        assert c.delete([f"{p}-a"]).affected == 1
    monkeypatch.setenv(ENV, RW)
    with kindex.Client(addr(keyed, protocol), protocol=protocol) as c:
        assert c.delete([f"{p}-b"]).affected == 1
        with pytest.raises(kindex.PermissionDeniedError):  # the argument wins over the variable
            kindex.Client(addr(keyed, protocol), protocol=protocol, api_key=RO).delete([f"{p}-m0"])
        with pytest.raises(kindex.UnauthenticatedError):  # "" sends no key
            kindex.Client(addr(keyed, protocol), protocol=protocol, api_key="").count()


async def test_async_clients_against_the_node(keyed: Node) -> None:
    for protocol in PROTOCOLS:
        p = unique(f"async-{protocol}")
        async with kindex.AsyncClient(addr(keyed, protocol), protocol=protocol) as none:
            with pytest.raises(kindex.UnauthenticatedError):
                await none.search(V, k=1)
        async with kindex.AsyncClient(addr(keyed, protocol), protocol=protocol, api_key=WRONG) as wrong:
            with pytest.raises(kindex.UnauthenticatedError):
                await wrong.upsert([(f"{p}-x", V)])
            assert wrong.retries == 0
        async with kindex.AsyncClient(addr(keyed, protocol), protocol=protocol, api_key=RW) as rw:
            assert (await rw.upsert([(f"{p}-a", V)])).affected == 1
        async with kindex.AsyncClient(addr(keyed, protocol), protocol=protocol, api_key=RO) as ro:
            assert [x.id for x in await ro.get([f"{p}-a"])] == [f"{p}-a"]
            assert await ro.count() >= 1
            with pytest.raises(kindex.PermissionDeniedError) as e:
                await ro.upsert([(f"{p}-b", V)])
            assert e.value.attempts == 1
            with pytest.raises(kindex.PermissionDeniedError) as e:
                await ro.delete([f"{p}-a"])
            assert e.value.attempts == 1
