"""LangChain's own standard vector-store suite (langchain-tests), and what it
does not cover: filters, scores, MMR, the HTTP protocol, errors."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import VectorStoreIntegrationTests

import kindex
from conftest import Node, NodeSet
from kindex.langchain import KindexVectorStore

# DeterministicFakeEmbedding(size=6) is what the standard suite embeds with.
DIM = 6


@pytest.fixture(scope="module")
def lc_node(node_bin: str) -> Iterator[Node]:
    s = NodeSet(1, DIM, "cosine")
    try:
        yield s.nodes[0]
    finally:
        s.close()


def clear(c: kindex.Client) -> None:
    """Deletes every point: kindex has no "list all", but a search with the
    largest k returns up to 1000 live points, whatever their distance."""
    probe = np.ones(DIM, dtype=np.float32)
    for _ in range(100):
        hits = c.search(probe, k=1000, with_payload=False).hits
        if not hits:
            return
        c.delete([h.id for h in hits])
    raise AssertionError("could not empty the index")


class TestKindexStandard(VectorStoreIntegrationTests):
    """Every standard test runs (sync, async, get_by_ids): none is skipped."""

    @pytest.fixture()
    def vectorstore(self, lc_node: Node) -> Iterator[VectorStore]:  # type: ignore[override]
        store = KindexVectorStore(self.get_embeddings(), addrs=lc_node.grpc)
        clear(store.client)
        assert store.client.count() == 0
        try:
            yield store
        finally:
            clear(store.client)
            store.client.close()


@pytest.fixture(params=["grpc", "http"])
def store(request: pytest.FixtureRequest, lc_node: Node) -> Iterator[KindexVectorStore]:
    a = lc_node.grpc if request.param == "grpc" else lc_node.http
    s = KindexVectorStore(VectorStoreIntegrationTests.get_embeddings(), addrs=a, protocol=request.param)
    clear(s.client)
    yield s
    clear(s.client)


def docs() -> list[Document]:
    return [
        Document("kindex shards vectors", metadata={"lang": "en", "year": 2024, "tags": ["a"]}, id="d1"),
        Document("kindex repliziert", metadata={"lang": "de", "year": 2023}, id="d2"),
        Document("raft elects a leader", metadata={"lang": "en", "year": 2014}, id="d3"),
        Document("hnsw graph search", metadata={"lang": "en", "year": 2016, "draft": True}),
    ]


def test_metadata_filters_scores_and_mmr(store: KindexVectorStore) -> None:
    ids = store.add_documents(docs())
    assert ids[:3] == ["d1", "d2", "d3"] and len(ids[3]) == 36  # a UUID for the one without id
    got = store.similarity_search("kindex shards vectors", k=4, filter={"lang": "en"})
    assert got[0] == Document("kindex shards vectors", metadata={"lang": "en", "year": 2024, "tags": ["a"]}, id="d1")
    assert {d.id for d in got} == {"d1", "d3", ids[3]}
    got = store.similarity_search("x", k=4, filter={"lang": "en", "year": {"gte": 2015}})
    assert {d.id for d in got} == {"d1", ids[3]}
    got = store.similarity_search("x", k=4, filter={"must": [{"field": "draft", "match": True}]})
    assert [d.id for d in got] == [ids[3]]
    with_scores = store.similarity_search_with_score("raft elects a leader", k=4)
    assert with_scores[0][0].id == "d3" and with_scores[0][1] == pytest.approx(0.0, abs=1e-5)
    assert [s for _, s in with_scores] == sorted(s for _, s in with_scores)  # distances, closest first
    rel = store.similarity_search_with_relevance_scores("raft elects a leader", k=2)
    assert rel[0][0].id == "d3" and rel[0][1] == pytest.approx(1.0, abs=1e-5) and rel[1][1] < rel[0][1]
    v = store.embeddings.embed_query("hnsw graph search")
    assert store.similarity_search_by_vector(v, k=1)[0].id == ids[3]
    mmr = store.max_marginal_relevance_search("kindex shards vectors", k=2, fetch_k=4)
    assert mmr[0].id == "d1" and len(mmr) == 2 and mmr[1].id != "d1"
    assert store.get_by_ids(["d2", "nope"]) == [Document("kindex repliziert", metadata={"lang": "de", "year": 2023}, id="d2")]


async def test_async_filters_and_mmr(store: KindexVectorStore) -> None:
    ids = await store.aadd_documents(docs())
    got = await store.asimilarity_search("x", k=4, filter={"lang": "de"})
    assert [d.id for d in got] == ["d2"]
    pairs = await store.asimilarity_search_with_score("raft elects a leader", k=1, filter={"year": {"lt": 2020}})
    assert pairs[0][0].id == "d3"
    mmr = await store.amax_marginal_relevance_search("kindex shards vectors", k=2, fetch_k=4)
    assert mmr[0].id == "d1"
    await store.adelete([ids[3]])
    assert await store.aget_by_ids([ids[3]]) == []


def test_from_texts_and_errors(lc_node: Node) -> None:
    emb = VectorStoreIntegrationTests.get_embeddings()
    s = KindexVectorStore.from_texts(["a", "b"], emb, metadatas=[{"n": 1}, {"n": 2}], ids=["t1", "t2"], addrs=lc_node.grpc)
    try:
        assert [d.id for d in s.similarity_search("a", k=1, filter={"n": 1})] == ["t1"]
        with pytest.raises(kindex.InvalidArgumentError, match="page_content"):
            s.add_texts(["c"], metadatas=[{"page_content": "clash"}])
        with pytest.raises(ValueError, match="needs ids"):
            s.delete()
        with pytest.raises(kindex.InvalidArgumentError, match="use a range for floats"):
            s.similarity_search("a", filter={"n": 1.5})
        with pytest.raises(kindex.InvalidArgumentError, match="payload is not JSON"):
            s.add_texts(["c"], metadatas=[{"when": object()}])
    finally:
        clear(s.client)
