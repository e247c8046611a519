"""Reranking over real HTTP: TEI ``/rerank`` and Cohere-style ``/v1/rerank`` equal the Engine.

A tiny cross-encoder bundle (task ``reranking``) is served on loopback behind the usual guard;
plain httpx calls the routes, and every score is compared with ``Engine.rerank``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from onnxguard.runtime import Engine
from onnxguard.serve.audit import hash_inputs, verify_chain
from onnxguard.serve.settings import AuditSettings, Limits
from onnxguard.serve.testing import BackgroundServer
from serving import serve_with_key

QUERY = "was the film good ?"
DOCS = ["the movie was good", "bad", "i love this film , it was great !", "it was fine",
        "slow and boring plot"]


def _serve(bundle: Path, tmp: Path) -> tuple[BackgroundServer, str]:
    return serve_with_key(bundle, tmp, audit=AuditSettings(path=tmp / "audit.log"),
                          limits=Limits(max_chars=100_000, max_texts=8))


AUDIT: list[Path] = []


@pytest.fixture(scope="module")
def reranker(tiny_bundle_factory: Callable[..., Path],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Engine]]:
    bundle = tiny_bundle_factory("bert", "reranking", "none")
    tmp = tmp_path_factory.mktemp("rerank")
    AUDIT[:] = [tmp / "audit.log"]
    server, secret = _serve(bundle, tmp)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {secret}"},
                      timeout=30) as client:
        yield client, Engine.from_bundle(bundle)
    server.stop()


def test_tei_rerank_equals_the_engine(reranker: tuple[httpx.Client, Engine]) -> None:
    client, engine = reranker
    expected = engine.rerank(QUERY, DOCS)
    got = client.post("/rerank", json={"query": QUERY, "texts": DOCS})
    assert got.status_code == 200, got.text
    assert [r["index"] for r in got.json()] == [r["index"] for r in expected]
    assert [r["score"] for r in got.json()] == pytest.approx([r["score"] for r in expected],
                                                             abs=1e-5)
    raw = client.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True,
                                       "return_text": True}).json()
    expected_raw = engine.rerank(QUERY, DOCS, raw_scores=True)
    assert [r["score"] for r in raw] == pytest.approx([r["score"] for r in expected_raw],
                                                      abs=1e-5)
    assert [r["text"] for r in raw] == [DOCS[r["index"]] for r in expected_raw]
    root = client.post("/", json={"query": QUERY, "texts": DOCS}).json()
    assert [r["index"] for r in root] == [r["index"] for r in expected]
    info = client.get("/info").json()
    assert "reranker" in info["model_type"]


def test_cohere_rerank_equals_the_engine(reranker: tuple[httpx.Client, Engine]) -> None:
    client, engine = reranker
    expected = engine.rerank(QUERY, DOCS)
    documents: list[object] = [DOCS[0], *({"text": d} for d in DOCS[1:])]
    got = client.post("/v1/rerank", json={"query": QUERY, "documents": documents, "top_n": 3,
                                          "return_documents": True})
    assert got.status_code == 200, got.text
    results = got.json()["results"]
    assert [r["index"] for r in results] == [r["index"] for r in expected[:3]]
    assert [r["relevance_score"] for r in results] == pytest.approx(
        [r["score"] for r in expected[:3]], abs=1e-5)
    assert [r["document"]["text"] for r in results] == [DOCS[r["index"]] for r in expected[:3]]
    plain = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}).json()
    assert len(plain["results"]) == len(DOCS) and "document" not in plain["results"][0]
    assert plain["meta"]["truncated_documents"] == 0


def test_rerank_truncation_is_the_callers_choice(reranker: tuple[httpx.Client, Engine]) -> None:
    client, engine = reranker
    long_doc = " ".join(["good"] * (engine.max_length + 20)) + " end"
    texts = ["bad", long_doc]
    refused = client.post("/rerank", json={"query": QUERY, "texts": texts})
    assert refused.status_code == 413 and "truncate" in refused.json()["error"]
    cut = client.post("/rerank", json={"query": QUERY, "texts": texts, "truncate": True})
    assert cut.status_code == 200 and cut.headers["x-truncated-inputs"] == "1"
    by_index = {r["index"]: r for r in cut.json()}
    assert by_index[1]["truncated"] is True and "truncated" not in by_index[0]
    assert by_index[1]["score"] == pytest.approx(
        {r["index"]: r["score"] for r in engine.rerank(QUERY, texts)}[1], abs=1e-5)
    # start and end of the document differ, so keeping its end changes the score
    long_doc = "bad slow and boring plot " * 20 + "i love this film it was great " * 20 + "end"
    left = client.post("/rerank", json={"query": QUERY, "texts": [long_doc], "raw_scores": True,
                                        "truncate": True, "truncation_direction": "Left"})
    assert left.status_code == 200
    kept = _left_cut(engine, QUERY, long_doc)
    assert kept.endswith(" end") and len(kept) < len(long_doc)
    expected = engine.rerank(QUERY, [kept], raw_scores=True)[0]
    assert "truncated" not in expected and "truncated" not in left.json()[0]
    assert left.json()[0]["score"] == pytest.approx(expected["score"], abs=1e-6)
    right = engine.rerank(QUERY, [long_doc], raw_scores=True)[0]["score"]
    assert abs(right - expected["score"]) > 1e-5  # so the comparison above tells them apart
    cohere = client.post("/v1/rerank", json={"query": QUERY, "documents": texts}).json()
    assert cohere["meta"]["truncated_documents"] == 1


def _left_cut(engine: Engine, query: str, document: str) -> str:
    """The end of ``document`` that fits next to the whole query (computed independently)."""
    from tokenizers import Tokenizer

    full = Tokenizer.from_str(engine.tokenizer.to_str())
    full.no_truncation()
    overhead = len(full.encode(query, "x").ids) - 1
    doc = full.encode(document, add_special_tokens=False)
    keep = engine.max_length - overhead
    return document[doc.offsets[len(doc.ids) - keep][0]:]


def test_rerank_errors(reranker: tuple[httpx.Client, Engine],
                       tiny_bundle_factory: Callable[..., Path],
                       tmp_path_factory: pytest.TempPathFactory) -> None:
    client, _ = reranker
    assert httpx.post(str(client.base_url) + "/rerank",
                      json={"query": QUERY, "texts": DOCS}).status_code == 401
    assert client.post("/rerank", json={"query": QUERY, "texts": []}).status_code == 422
    assert client.post("/rerank", json={"query": " ", "texts": DOCS}).status_code == 422
    assert client.post("/rerank", json={"query": QUERY, "texts": ["a", ""]}).status_code == 422
    assert client.post("/rerank", json={"query": QUERY, "texts": DOCS, "x": 1}).status_code == 422
    assert client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "top_n": 0}
                       ).status_code == 422
    assert client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "model": "other"}
                       ).status_code == 404
    too_many = client.post("/rerank", json={"query": QUERY, "texts": ["a"] * 8})
    assert too_many.status_code == 413  # the query counts as a text: 9 > 8
    assert client.post("/embed", json={"inputs": "x"}).status_code == 400
    bundle = tiny_bundle_factory("bert", "text-classification", "none")
    server, secret = _serve(bundle, tmp_path_factory.mktemp("not-a-reranker"))
    try:
        wrong = httpx.post(server.url + "/rerank", json={"query": QUERY, "texts": DOCS},
                           headers={"Authorization": f"Bearer {secret}"}, timeout=30)
        assert wrong.status_code == 400 and "reranking" in wrong.json()["error"]
    finally:
        server.stop()


def test_single_text_routes_score_texts_alone(reranker: tuple[httpx.Client, Engine]) -> None:
    """V2 gives a reranker's raw logits; /v1/classify its relevance score (no pair)."""
    client, engine = reranker
    logits = engine.predict_raw(DOCS[:2])
    v2 = client.post(f"/v2/models/{engine.name}/infer", json={
        "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": DOCS[:2]}]})
    assert v2.status_code == 200, v2.text
    (output,) = v2.json()["outputs"]
    assert output["name"] == "logits" and output["shape"] == [2, 1]
    assert output["data"] == pytest.approx([float(x[0]) for x in logits], abs=1e-5)
    classify = client.post("/v1/classify", json={"texts": DOCS[:2]}).json()["results"]
    assert [r["score"] for r in classify] == pytest.approx(
        [r["score"] for r in engine.predict(DOCS[:2])], abs=1e-6)


def test_tei_predict_takes_pairs_on_a_reranker(reranker: tuple[httpx.Client, Engine]) -> None:
    client, engine = reranker
    expected = {r["index"]: r["score"] for r in engine.rerank(QUERY, DOCS[:3])}
    batch = client.post("/predict", json={"inputs": [[QUERY, d] for d in DOCS[:3]]})
    assert batch.status_code == 200, batch.text
    assert [row[0]["score"] for row in batch.json()] == pytest.approx(
        [expected[i] for i in range(3)], abs=1e-5)
    one = client.post("/predict", json={"inputs": [QUERY, DOCS[0]]}).json()
    assert one[0]["score"] == pytest.approx(expected[0], abs=1e-5)
    assert client.post("/predict", json={"inputs": "alone"}).status_code == 422
    assert client.post("/predict", json={"inputs": [[QUERY]]}).status_code == 422
    assert client.post("/predict", json={"inputs": [[QUERY, ""]]}).status_code == 422


def test_rerank_requests_are_audited(reranker: tuple[httpx.Client, Engine]) -> None:
    client, engine = reranker
    ok = client.post("/rerank", json={"query": "an audited query", "texts": DOCS[:2]})
    cohere = client.post("/v1/rerank", json={"query": "an audited query", "documents": DOCS[:2]})
    records = {r.get("request_id"): r for r in map(json.loads,
                                                   AUDIT[0].read_text().splitlines())}
    for response, endpoint in ((ok, "/rerank"), (cohere, "/v1/rerank")):
        record = records[response.headers["x-request-id"]]
        assert (record["endpoint"], record["status"], record["key_id"]) == (endpoint, 200,
                                                                              "client")
        assert record["inputs"] == 2
        assert record["inputs_sha256"] == hash_inputs(
            [t for d in DOCS[:2] for t in ("an audited query", d)])
        assert record["bundle_digest"] == engine.digest
    assert "an audited query" not in AUDIT[0].read_text()
    assert verify_chain(AUDIT[0]).ok
