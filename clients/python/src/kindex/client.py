"""The sync and async clients.

Both take a list of node endpoints. Any node coordinates any request (writes
are routed to the owning shard's leader, searches fan out to every shard), so
one endpoint is enough; more endpoints let retries move on when a node is down.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import sys
import threading
import time
from typing import Any, Awaitable, Callable, Iterable, Optional, Sequence, TypeVar, Union

import numpy as np

from . import errors
from ._batch import Batch, batches
from ._auth import ApiKey, resolve as resolve_api_key
from ._retry import RetryPolicy, log, next_node, retryable
from ._transport import (
    AsyncGrpcTransport,
    AsyncHttpTransport,
    GrpcTransport,
    HttpTransport,
    grpc_target,
    http_base,
)
from .filters import Filter, normalize
from .types import (
    BulkResult,
    Consistency,
    ConsistencyLike,
    ConsistencyToken,
    IndexInfo,
    Point,
    SearchResult,
    WriteResult,
    consistency_of,
)

T = TypeVar("T")
Addrs = Union[str, Sequence[str]]
#: Called after each acknowledged batch with (first row, ids of the batch).
OnBatch = Callable[[int, list[str]], None]

DEFAULT_GRPC = "127.0.0.1:7070"
DEFAULT_HTTP = "http://127.0.0.1:7080"


def _addrs(addrs: Optional[Addrs], protocol: str) -> list[str]:
    if protocol not in ("grpc", "http"):
        raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
    if addrs is None:
        addrs = DEFAULT_GRPC if protocol == "grpc" else DEFAULT_HTTP
    if isinstance(addrs, str):
        addrs = addrs.split(",")
    norm = grpc_target if protocol == "grpc" else http_base
    out = [norm(a.strip()) for a in addrs if a.strip()]
    if not out:
        raise ValueError("no node address given")
    return out


def _vector(v: Any) -> list[float]:
    a = np.asarray(v, dtype=np.float32)
    if a.ndim != 1:
        raise errors.InvalidArgumentError(
            f"a query vector must be 1-D, got shape {a.shape}", code="invalid_argument"
        )
    return a.tolist()  # type: ignore[no-any-return]


class _Progress:
    """tqdm when installed and wanted; ``progress=None`` means: when stderr is a terminal."""

    def __init__(self, total: Optional[int], enabled: Optional[bool]) -> None:
        self.bar: Any = None
        if enabled is False or (enabled is None and not sys.stderr.isatty()):
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, unit="vec", unit_scale=True, desc="upsert")

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _total(data: Any) -> Optional[int]:
    if isinstance(data, np.ndarray):
        return int(data.shape[0])
    return len(data) if hasattr(data, "__len__") else None


class _Base:
    def __init__(
        self,
        addrs: Optional[Addrs],
        protocol: str,
        index: Optional[str],
        timeout: float,
        retry: RetryPolicy,
        api_key: Optional[str],
    ) -> None:
        self.protocol = protocol
        self.nodes = _addrs(addrs, protocol)
        # Sent on every call; kept out of reprs and logs (see _auth.py).
        self._key: Optional[ApiKey] = resolve_api_key(api_key)
        self.index = index or ""
        self.timeout = timeout
        self.retry = retry
        self._current = 0
        self._lock = threading.Lock()
        self._token = ConsistencyToken()
        #: Retries made so far (all calls).
        self.retries = 0
        self._info: Optional[IndexInfo] = None

    def __repr__(self) -> str:
        key = "<redacted>" if self._key is not None else None
        return (
            f"{type(self).__name__}({self.nodes!r}, protocol={self.protocol!r}, "
            f"index={self.index!r}, api_key={key})"
        )

    @property
    def token(self) -> ConsistencyToken:
        """Covers every write this client made: pass to reads elsewhere as
        ``token=`` (``consistency="session"`` uses it by itself)."""
        return self._token

    def _saw(self, w: WriteResult) -> WriteResult:
        with self._lock:
            self._token = self._token.merge(w.token)
        return w

    def _read_args(
        self,
        consistency: ConsistencyLike,
        token: Optional[ConsistencyToken],
        with_vectors: bool,
        with_payload: bool,
    ) -> dict[str, Any]:
        c = consistency_of(consistency)
        if c is Consistency.SESSION and token is None:
            token = self._token
        return {
            "consistency": c,
            "token": token,
            "with_vectors": with_vectors,
            "with_payload": with_payload,
        }

    def _failed(self, cur: int, e: errors.KindexError, attempt: int, started: float) -> float:
        """After attempt ``attempt`` on node ``cur`` failed: the pause before the
        next one, having moved to the next node; raises when giving up."""
        if not retryable(e):
            raise e
        delay = self.retry.delay(attempt)
        if self.retry.give_up(attempt, time.monotonic() - started, delay):
            e.attempts = attempt
            raise e
        with self._lock:
            if self._current == cur:  # another thread may have moved on already
                self._current = next_node(self.nodes, cur, e)
            nxt = self.nodes[self._current]
            self.retries += 1
        log.warning("kindex: %s; retrying on %s in %.1fs (attempt %d)", e, nxt, delay, attempt + 1)
        return delay


class Client(_Base):
    """Blocking client.

    >>> c = Client("127.0.0.1:7070")                       # gRPC (default)
    >>> c = Client("http://127.0.0.1:7080", protocol="http")
    >>> c = Client("127.0.0.1:7070", api_key=key)          # a node with API keys on

    ``api_key``: sent as ``authorization: Bearer <key>`` on every call. When
    not given, ``KINDEX_API_KEY`` is used if set; ``api_key=""`` sends no key
    even then. A key the node refuses raises
    :class:`~kindex.errors.UnauthenticatedError`; a read-only key writing,
    :class:`~kindex.errors.PermissionDeniedError` (neither is retried).
    """

    def __init__(
        self,
        addrs: Optional[Addrs] = None,
        *,
        protocol: str = "grpc",
        index: Optional[str] = None,
        timeout: float = 30.0,
        retry: RetryPolicy = RetryPolicy(),
        api_key: Optional[str] = None,
    ) -> None:
        super().__init__(addrs, protocol, index, timeout, retry, api_key)
        cls = GrpcTransport if protocol == "grpc" else HttpTransport
        self._t: list[Any] = [cls(a, timeout, self._key) for a in self.nodes]

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for t in self._t:
            t.close()

    def _call(self, fn: Callable[[Any], T]) -> T:
        started = time.monotonic()
        attempt = 1
        while True:
            cur = self._current
            try:
                return fn(self._t[cur])
            except errors.KindexError as e:
                time.sleep(self._failed(cur, e, attempt, started))
                attempt += 1

    # -- reads

    def info(self) -> IndexInfo:
        """Dimension, metric, shards, live vectors and the node's limits."""
        info: IndexInfo = self._call(lambda t: t.info(self.index))
        self._info = info
        return info

    def count(self, *, consistency: ConsistencyLike = None, token: Optional[ConsistencyToken] = None) -> int:
        q = self._read_args(consistency, token, False, False)
        n: int = self._call(lambda t: t.count(self.index, q["consistency"], q["token"]))
        return n

    def get(
        self,
        ids: Iterable[str],
        *,
        with_vectors: bool = False,
        with_payload: bool = True,
        consistency: ConsistencyLike = None,
        token: Optional[ConsistencyToken] = None,
    ) -> list[Point]:
        """The points that exist among ``ids`` (missing ids are left out)."""
        ids = list(ids)
        if not ids:
            return []
        q = self._read_args(consistency, token, with_vectors, with_payload)
        return self._call(lambda t: t.get(self.index, ids, q))

    def search(
        self,
        vector: Any,
        k: int = 10,
        *,
        filter: Optional[Filter] = None,
        ef_search: Optional[int] = None,
        rescore: Optional[int] = None,
        with_vectors: bool = False,
        with_payload: bool = True,
        consistency: ConsistencyLike = None,
        token: Optional[ConsistencyToken] = None,
    ) -> SearchResult:
        """The ``k`` nearest points, closest first; ``filter`` is a dict (see
        :mod:`kindex.filters`). ``rescore`` (int8 and binary indexes, 1..=100): re-rank the
        best ``rescore × k`` graph candidates exactly instead of the index's
        runtime default; ignored by an index without quantization."""
        q = self._read_args(consistency, token, with_vectors, with_payload)
        q.update(vector=_vector(vector), k=k, ef_search=ef_search, rescore=rescore, filter=normalize(filter))
        r: SearchResult = self._call(lambda t: t.search(self.index, q))
        return r

    # -- writes

    def upsert(self, data: Any, *, ids: Optional[Iterable[Any]] = None, payloads: Optional[Iterable[Any]] = None) -> WriteResult:
        """One request: points (or an array with ``ids``/``payloads``), at most
        the node's batch limit. Use :meth:`upsert_many` for more."""
        bs = list(batches(data, ids=ids, payloads=payloads, batch_size=sys.maxsize))
        if not bs:
            return WriteResult(0, ConsistencyToken())
        bs[0].check()
        return self._saw(self._call(lambda t: t.upsert(self.index, bs[0])))

    def delete(self, ids: Iterable[str]) -> WriteResult:
        """Deletes by id; ``affected`` counts the ids that existed."""
        ids = list(ids)
        if not ids:
            return WriteResult(0, ConsistencyToken())
        return self._saw(self._call(lambda t: t.delete(self.index, ids)))

    def upsert_many(
        self,
        data: Any,
        *,
        ids: Optional[Iterable[Any]] = None,
        payloads: Optional[Iterable[Any]] = None,
        batch_size: int = 512,
        concurrency: int = 2,
        id_prefix: str = "",
        progress: Optional[bool] = None,
        on_batch: Optional[OnBatch] = None,
    ) -> BulkResult:
        """Bulk load: ``data`` is a 2-D array of vectors (ids default to the row
        number, prefixed with ``id_prefix``) or an iterable of points, read
        lazily. Batches of ``batch_size`` (lowered to the node's limit) are sent
        by ``concurrency`` workers; at most that many batches are in flight, so
        a slow node slows the reader instead of filling memory. Each batch is
        retried on its own (see :class:`~kindex.RetryPolicy`). A batch that is
        given up stops the load: :class:`~kindex.errors.BulkUpsertError` says
        how many points were acknowledged and which rows were not written.
        """
        info = self._info or self.info()
        size = min(batch_size, info.limits.max_batch or batch_size)
        concurrency = max(1, concurrency)
        bar = _Progress(_total(data), progress)
        started = time.monotonic()
        retries0 = self.retries
        acked = nbatches = 0
        failed: list[tuple[int, int]] = []
        first_error: Optional[errors.KindexError] = None

        def send(b: Batch) -> Batch:
            b.check(info.dimension)
            self._saw(self._call(lambda t: t.upsert(self.index, b)))
            return b

        pending: dict[cf.Future[Batch], Batch] = {}

        def reap(block: bool) -> None:
            nonlocal acked, nbatches, first_error
            if not pending:
                return
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED if block else cf.ALL_COMPLETED)
            for f in done:
                b = pending.pop(f)
                e = f.exception()
                if e is None:
                    acked += len(b)
                    nbatches += 1
                    bar.update(len(b))
                    if on_batch is not None:
                        on_batch(b.start, b.ids)
                else:
                    failed.append((b.start, b.start + len(b)))
                    if first_error is None:
                        first_error = e if isinstance(e, errors.KindexError) else errors.KindexError(str(e))
                    if not isinstance(e, errors.KindexError):
                        raise e

        try:
            with cf.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="kindex-upsert") as pool:
                try:
                    for b in batches(data, ids=ids, payloads=payloads, batch_size=size, id_prefix=id_prefix):
                        # Back-pressure: wait for a slot before reading further.
                        while len(pending) >= concurrency:
                            reap(block=True)
                        if first_error is not None:
                            break
                        pending[pool.submit(send, b)] = b
                finally:
                    while pending:
                        reap(block=False)
        finally:
            bar.close()
        if first_error is not None:
            failed.sort()
            raise errors.BulkUpsertError(
                f"bulk upsert stopped: {first_error}; {acked} points acknowledged, "
                f"rows not written: {failed}",
                acknowledged=acked,
                failed_rows=failed,
                cause=first_error,
            )
        return BulkResult(
            points=acked,
            batches=nbatches,
            retries=self.retries - retries0,
            seconds=time.monotonic() - started,
            token=self._token,
        )


class AsyncClient(_Base):
    """asyncio client; the same methods (and ``api_key``) as :class:`Client`, awaited.

    Connections belong to the event loop that first uses them; a client used
    from another loop later (as pytest-asyncio does per test) opens new ones.
    """

    def __init__(
        self,
        addrs: Optional[Addrs] = None,
        *,
        protocol: str = "grpc",
        index: Optional[str] = None,
        timeout: float = 30.0,
        retry: RetryPolicy = RetryPolicy(),
        api_key: Optional[str] = None,
    ) -> None:
        super().__init__(addrs, protocol, index, timeout, retry, api_key)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._t: list[Any] = []

    def _transports(self) -> list[Any]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            cls = AsyncGrpcTransport if self.protocol == "grpc" else AsyncHttpTransport
            self._t = [cls(a, self.timeout, self._key) for a in self.nodes]
            self._loop = loop
        return self._t

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._loop is asyncio.get_running_loop():
            for t in self._t:
                await t.close()
        self._t, self._loop = [], None

    async def _call(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        ts = self._transports()
        started = time.monotonic()
        attempt = 1
        while True:
            cur = self._current
            try:
                return await fn(ts[cur])
            except errors.KindexError as e:
                await asyncio.sleep(self._failed(cur, e, attempt, started))
                attempt += 1

    async def info(self) -> IndexInfo:
        info: IndexInfo = await self._call(lambda t: t.info(self.index))
        self._info = info
        return info

    async def count(self, *, consistency: ConsistencyLike = None, token: Optional[ConsistencyToken] = None) -> int:
        q = self._read_args(consistency, token, False, False)
        return await self._call(lambda t: t.count(self.index, q["consistency"], q["token"]))

    async def get(
        self,
        ids: Iterable[str],
        *,
        with_vectors: bool = False,
        with_payload: bool = True,
        consistency: ConsistencyLike = None,
        token: Optional[ConsistencyToken] = None,
    ) -> list[Point]:
        ids = list(ids)
        if not ids:
            return []
        q = self._read_args(consistency, token, with_vectors, with_payload)
        return await self._call(lambda t: t.get(self.index, ids, q))

    async def search(
        self,
        vector: Any,
        k: int = 10,
        *,
        filter: Optional[Filter] = None,
        ef_search: Optional[int] = None,
        rescore: Optional[int] = None,
        with_vectors: bool = False,
        with_payload: bool = True,
        consistency: ConsistencyLike = None,
        token: Optional[ConsistencyToken] = None,
    ) -> SearchResult:
        q = self._read_args(consistency, token, with_vectors, with_payload)
        q.update(vector=_vector(vector), k=k, ef_search=ef_search, rescore=rescore, filter=normalize(filter))
        return await self._call(lambda t: t.search(self.index, q))

    async def upsert(self, data: Any, *, ids: Optional[Iterable[Any]] = None, payloads: Optional[Iterable[Any]] = None) -> WriteResult:
        bs = list(batches(data, ids=ids, payloads=payloads, batch_size=sys.maxsize))
        if not bs:
            return WriteResult(0, ConsistencyToken())
        bs[0].check()
        return self._saw(await self._call(lambda t: t.upsert(self.index, bs[0])))

    async def delete(self, ids: Iterable[str]) -> WriteResult:
        ids = list(ids)
        if not ids:
            return WriteResult(0, ConsistencyToken())
        return self._saw(await self._call(lambda t: t.delete(self.index, ids)))

    async def upsert_many(
        self,
        data: Any,
        *,
        ids: Optional[Iterable[Any]] = None,
        payloads: Optional[Iterable[Any]] = None,
        batch_size: int = 512,
        concurrency: int = 2,
        id_prefix: str = "",
        progress: Optional[bool] = None,
        on_batch: Optional[OnBatch] = None,
    ) -> BulkResult:
        """As :meth:`Client.upsert_many`; ``concurrency`` batches in flight as tasks."""
        info = self._info or await self.info()
        size = min(batch_size, info.limits.max_batch or batch_size)
        concurrency = max(1, concurrency)
        bar = _Progress(_total(data), progress)
        started = time.monotonic()
        retries0 = self.retries
        acked = nbatches = 0
        failed: list[tuple[int, int]] = []
        first_error: Optional[errors.KindexError] = None

        async def send(b: Batch) -> Batch:
            b.check(info.dimension)
            self._saw(await self._call(lambda t: t.upsert(self.index, b)))
            return b

        pending: dict[asyncio.Task[Batch], Batch] = {}

        async def reap(block: bool) -> None:
            nonlocal acked, nbatches, first_error
            if not pending:
                return
            done, _ = await asyncio.wait(
                pending, return_when=asyncio.FIRST_COMPLETED if block else asyncio.ALL_COMPLETED
            )
            for f in done:
                b = pending.pop(f)
                e = f.exception()
                if e is None:
                    acked += len(b)
                    nbatches += 1
                    bar.update(len(b))
                    if on_batch is not None:
                        on_batch(b.start, b.ids)
                else:
                    failed.append((b.start, b.start + len(b)))
                    if first_error is None:
                        first_error = e if isinstance(e, errors.KindexError) else errors.KindexError(str(e))
                    if not isinstance(e, errors.KindexError):
                        raise e

        try:
            try:
                for b in batches(data, ids=ids, payloads=payloads, batch_size=size, id_prefix=id_prefix):
                    while len(pending) >= concurrency:
                        await reap(block=True)
                    if first_error is not None:
                        break
                    pending[asyncio.ensure_future(send(b))] = b
            finally:
                while pending:
                    await reap(block=False)
        finally:
            bar.close()
        if first_error is not None:
            failed.sort()
            raise errors.BulkUpsertError(
                f"bulk upsert stopped: {first_error}; {acked} points acknowledged, "
                f"rows not written: {failed}",
                acknowledged=acked,
                failed_rows=failed,
                cause=first_error,
            )
        return BulkResult(
            points=acked,
            batches=nbatches,
            retries=self.retries - retries0,
            seconds=time.monotonic() - started,
            token=self._token,
        )
