"""A LangChain ``VectorStore`` backed by kindex (needs ``langchain-core``).

Each document is one point: its id is the document id (a UUID when it has
none), its vector the embedding, and its payload the metadata with the text
added under ``text_key`` (default ``"page_content"``). Metadata keys are
top-level payload fields, so ``filter=`` takes the filters of
:mod:`kindex.filters` on them: ``{"lang": "en", "year": {"gte": 2000}}``.

Embeddings are computed by the ``Embeddings`` object you pass in; kindex
stores and searches vectors only.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

try:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import VectorStore
    from langchain_core.vectorstores.utils import maximal_marginal_relevance
except ImportError as e:  # pragma: no cover - import guard
    raise ImportError("kindex.langchain needs langchain-core: pip install 'kindex[langchain]'") from e

from .client import AsyncClient, Client
from .errors import InvalidArgumentError
from .filters import Filter
from .types import ConsistencyLike, Payload, ScoredPoint

__all__ = ["KindexVectorStore"]


def _relevance(metric: str) -> Callable[[float], float]:
    """Distance -> relevance in LangChain's sense (higher is closer); kindex
    distances: cosine 1 - cos, dot -dot, l2 squared euclidean."""
    if metric == "cosine":
        return VectorStore._cosine_relevance_score_fn
    if metric == "dot":
        return VectorStore._max_inner_product_relevance_score_fn
    if metric == "l2":
        return lambda d: VectorStore._euclidean_relevance_score_fn(float(np.sqrt(max(d, 0.0))))
    raise ValueError(f"unknown metric {metric!r}")


class KindexVectorStore(VectorStore):
    """LangChain vector store on a kindex index.

    >>> store = KindexVectorStore(embeddings, addrs="127.0.0.1:7070")
    >>> store.add_texts(["kindex is a vector index"], metadatas=[{"lang": "en"}])
    >>> store.similarity_search("vector index", k=1, filter={"lang": "en"})

    ``api_key`` (default: ``KINDEX_API_KEY``, as for :class:`~kindex.Client`)
    is used by the clients the store makes; ``client=`` / ``async_client=``
    bring their own. An async client the store makes carries the sync
    client's key.
    """

    def __init__(
        self,
        embedding: Embeddings,
        *,
        client: Optional[Client] = None,
        async_client: Optional[AsyncClient] = None,
        addrs: Any = None,
        protocol: str = "grpc",
        index: Optional[str] = None,
        text_key: str = "page_content",
        consistency: ConsistencyLike = None,
        batch_size: int = 256,
        api_key: Optional[str] = None,
    ) -> None:
        self._embedding = embedding
        self.client = client or Client(addrs, protocol=protocol, index=index, api_key=api_key)
        if async_client is None:
            async_client = AsyncClient(
                self.client.nodes,
                protocol=self.client.protocol,
                index=self.client.index,
                timeout=self.client.timeout,
                retry=self.client.retry,
                api_key="",
            )
            # The sync client's key, however it was given (argument, environment, none).
            async_client._key = self.client._key
        self.async_client = async_client
        self.text_key = text_key
        self.consistency = consistency
        self.batch_size = batch_size
        self._metric: Optional[str] = None

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    # ---------------------------------------------------------------- helpers

    def _points(
        self, texts: Sequence[str], metadatas: Optional[Sequence[Optional[dict[str, Any]]]], ids: Optional[Sequence[Optional[str]]]
    ) -> tuple[list[str], list[Payload]]:
        if metadatas is not None and len(metadatas) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(metadatas)} metadatas")
        if ids is not None and len(ids) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(ids)} ids")
        out_ids = [(i if i else str(uuid.uuid4())) for i in (ids or [None] * len(texts))]
        payloads: list[Payload] = []
        for n, text in enumerate(texts):
            meta = dict((metadatas[n] if metadatas else None) or {})
            if self.text_key in meta:
                raise InvalidArgumentError(
                    f"metadata of document {out_ids[n]!r} has the key {self.text_key!r}, "
                    "which holds the text; pass another text_key",
                    code="invalid_argument",
                )
            meta[self.text_key] = text
            payloads.append(meta)
        return out_ids, payloads

    def _doc(self, id_: str, payload: Optional[Payload]) -> Document:
        meta = dict(payload or {})
        text = meta.pop(self.text_key, "")
        return Document(page_content=str(text), metadata=meta, id=id_)

    def _docs_scores(self, hits: list[ScoredPoint]) -> list[tuple[Document, float]]:
        return [(self._doc(h.id, h.payload), float(h.distance)) for h in hits]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        if self._metric is None:
            self._metric = self.client.info().metric
        return _relevance(self._metric)

    def _mmr(
        self, query: Sequence[float], hits: list[ScoredPoint], k: int, lambda_mult: float
    ) -> list[Document]:
        if not hits:
            return []
        vecs = [h.vector or [] for h in hits]
        chosen = maximal_marginal_relevance(
            np.asarray(query, dtype=np.float32), vecs, lambda_mult=lambda_mult, k=k
        )
        return [self._doc(hits[i].id, hits[i].payload) for i in chosen]

    # ---------------------------------------------------------------- sync

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: Optional[list[dict[str, Any]]] = None,
        *,
        ids: Optional[list[Optional[str]]] = None,  # type: ignore[override]
        **kwargs: Any,
    ) -> list[str]:
        texts = list(texts)
        if not texts:
            return []
        out_ids, payloads = self._points(texts, metadatas, ids)
        vectors = np.asarray(self._embedding.embed_documents(texts), dtype=np.float32)
        self.client.upsert_many(
            vectors, ids=out_ids, payloads=payloads, batch_size=self.batch_size, progress=False
        )
        return out_ids

    def delete(self, ids: Optional[list[str]] = None, **kwargs: Any) -> Optional[bool]:
        """Deletes the given ids (missing ones are ignored). kindex has no
        "delete everything": ``ids=None`` raises ``ValueError``."""
        if ids is None:
            raise ValueError("KindexVectorStore.delete needs ids")
        self.client.delete(ids)
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        points = self.client.get(ids, consistency=self.consistency)
        return [self._doc(p.id, p.payload) for p in points]

    def similarity_search_with_score_by_vector(
        self, embedding: Sequence[float], k: int = 4, filter: Optional[Filter] = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Documents with their distance (smaller is closer)."""
        r = self.client.search(
            embedding,
            k,
            filter=filter,
            ef_search=kwargs.get("ef_search"),
            rescore=kwargs.get("rescore"),
            consistency=self.consistency,
        )
        return self._docs_scores(r.hits)

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: Optional[Filter] = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return self.similarity_search_with_score_by_vector(
            self._embedding.embed_query(query), k, filter=filter, **kwargs
        )

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: Optional[Filter] = None, **kwargs: Any
    ) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score_by_vector(embedding, k, filter, **kwargs)]

    def similarity_search(
        self, query: str, k: int = 4, filter: Optional[Filter] = None, **kwargs: Any
    ) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Optional[Filter] = None,
        **kwargs: Any,
    ) -> list[Document]:
        r = self.client.search(
            embedding, max(fetch_k, k), filter=filter, with_vectors=True, consistency=self.consistency
        )
        return self._mmr(embedding, r.hits, k, lambda_mult)

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Optional[Filter] = None,
        **kwargs: Any,
    ) -> list[Document]:
        return self.max_marginal_relevance_search_by_vector(
            self._embedding.embed_query(query), k, fetch_k, lambda_mult, filter, **kwargs
        )

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: Optional[list[dict[str, Any]]] = None,
        *,
        ids: Optional[list[str]] = None,
        **kwargs: Any,
    ) -> "KindexVectorStore":
        """A store on the node(s) given in ``kwargs`` (``addrs=``, ``index=``,
        ...), with ``texts`` added."""
        store = cls(embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)  # type: ignore[arg-type]
        return store

    # ---------------------------------------------------------------- async

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: Optional[list[dict[str, Any]]] = None,
        *,
        ids: Optional[list[Optional[str]]] = None,  # type: ignore[override]
        **kwargs: Any,
    ) -> list[str]:
        texts = list(texts)
        if not texts:
            return []
        out_ids, payloads = self._points(texts, metadatas, ids)
        vectors = np.asarray(await self._embedding.aembed_documents(texts), dtype=np.float32)
        await self.async_client.upsert_many(
            vectors, ids=out_ids, payloads=payloads, batch_size=self.batch_size, progress=False
        )
        return out_ids

    async def adelete(self, ids: Optional[list[str]] = None, **kwargs: Any) -> Optional[bool]:
        if ids is None:
            raise ValueError("KindexVectorStore.adelete needs ids")
        await self.async_client.delete(ids)
        return True

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        points = await self.async_client.get(ids, consistency=self.consistency)
        return [self._doc(p.id, p.payload) for p in points]

    async def asimilarity_search_with_score_by_vector(
        self, embedding: Sequence[float], k: int = 4, filter: Optional[Filter] = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        r = await self.async_client.search(
            embedding,
            k,
            filter=filter,
            ef_search=kwargs.get("ef_search"),
            rescore=kwargs.get("rescore"),
            consistency=self.consistency,
        )
        return self._docs_scores(r.hits)

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: Optional[Filter] = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        v = await self._embedding.aembed_query(query)
        return await self.asimilarity_search_with_score_by_vector(v, k, filter=filter, **kwargs)

    async def asimilarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: Optional[Filter] = None, **kwargs: Any
    ) -> list[Document]:
        pairs = await self.asimilarity_search_with_score_by_vector(embedding, k, filter, **kwargs)
        return [d for d, _ in pairs]

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: Optional[Filter] = None, **kwargs: Any
    ) -> list[Document]:
        return [d for d, _ in await self.asimilarity_search_with_score(query, k, filter, **kwargs)]

    async def amax_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Optional[Filter] = None,
        **kwargs: Any,
    ) -> list[Document]:
        r = await self.async_client.search(
            embedding, max(fetch_k, k), filter=filter, with_vectors=True, consistency=self.consistency
        )
        return self._mmr(embedding, r.hits, k, lambda_mult)

    async def amax_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Optional[Filter] = None,
        **kwargs: Any,
    ) -> list[Document]:
        v = await self._embedding.aembed_query(query)
        return await self.amax_marginal_relevance_search_by_vector(v, k, fetch_k, lambda_mult, filter, **kwargs)
