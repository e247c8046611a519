"""Question answering over real HTTP: ``POST /v1/answer`` and the Hugging Face payload on ``/``.

A tiny question-answering bundle is served on loopback behind the usual guard; plain httpx and
the unmodified ``huggingface_hub.InferenceClient`` ask questions, and every answer is compared
with ``Engine.answer``.  Long contexts go through the batcher window by window.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from onnxguard.runtime import Engine
from onnxguard.serve.audit import verify_chain
from onnxguard.serve.settings import AuditSettings, Limits
from serving import serve_with_key

CONTEXT = "the movie was good but the film was bad , i love this film"
LONG_CONTEXT = " ".join(
    f"{w} the movie was {a} and the film was {b} ."
    for w, a, b in [("i", "good", "bad"), ("it", "great", "slow"), ("the", "fine", "good")] * 6
)
MAX_TEXTS = 12


@pytest.fixture(scope="module")
def answerer(tiny_bundle_factory: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory,
             ) -> Iterator[tuple[httpx.Client, Engine, Path]]:
    bundle = tiny_bundle_factory("bert", "question-answering", "none")
    tmp = tmp_path_factory.mktemp("qa")
    server, secret = serve_with_key(bundle, tmp, audit=AuditSettings(path=tmp / "audit.log"),
                                    limits=Limits(max_chars=100_000, max_texts=MAX_TEXTS))
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {secret}"},
                      timeout=30) as client:
        yield client, Engine.from_bundle(bundle), tmp / "audit.log"
    server.stop()


def _same(got: list[dict[str, object]], expected: list[dict[str, object]]) -> None:
    assert [(a["answer"], a["start"], a["end"]) for a in got] == [
        (a["answer"], a["start"], a["end"]) for a in expected]
    assert [a["score"] for a in got] == pytest.approx([a["score"] for a in expected], rel=1e-5)


def test_answer_route_equals_the_engine(answerer: tuple[httpx.Client, Engine, Path]) -> None:
    client, engine, _ = answerer
    assert len(engine.windows.windows("what was great ?", LONG_CONTEXT, 128)) > 2
    items = [{"question": "what was good ?", "context": CONTEXT},
             {"question": "what was great ?", "context": LONG_CONTEXT, "top_k": 2},
             {"question": "which film ?", "context": CONTEXT, "max_answer_len": 2,
              "handle_impossible_answer": True}]
    got = client.post("/v1/answer", json=items)
    assert got.status_code == 200, got.text
    results = got.json()["results"]
    assert len(results) == 3 and got.json()["model"]
    _same(results[0]["answers"], engine.answer("what was good ?", CONTEXT))
    _same(results[1]["answers"], engine.answer("what was great ?", LONG_CONTEXT, top_k=2))
    _same(results[2]["answers"], engine.answer("which film ?", CONTEXT, max_answer_len=2,
                                               handle_impossible_answer=True))
    single = client.post("/v1/answer", json=items[1] | {"doc_stride": 5}).json()["results"]
    _same(single[0]["answers"], engine.answer("what was great ?", LONG_CONTEXT, top_k=2,
                                              doc_stride=5))


def test_hugging_face_payload_and_client(answerer: tuple[httpx.Client, Engine, Path],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants
    from huggingface_hub import InferenceClient

    client, engine, _ = answerer
    expected = engine.answer("what was great ?", LONG_CONTEXT)
    raw = client.post("/", json={"inputs": {"question": "what was great ?",
                                            "context": LONG_CONTEXT}})
    assert raw.status_code == 200, raw.text
    _same([raw.json()], expected)  # top_k 1: one object, as the Inference API answers
    several = client.post("/", json={"inputs": {"question": "what was good ?",
                                                "context": CONTEXT},
                                     "parameters": {"top_k": 3, "align_to_words": False}})
    _same(several.json(), engine.answer("what was good ?", CONTEXT, top_k=3))
    # the suite runs offline; this client only talks to 127.0.0.1
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    secret = client.headers["authorization"].removeprefix("Bearer ")
    hub = InferenceClient(model=str(client.base_url), token=secret)
    answer = hub.question_answering(question="what was great ?", context=LONG_CONTEXT)
    assert (answer.answer, answer.start, answer.end) == (
        expected[0]["answer"], expected[0]["start"], expected[0]["end"])
    assert answer.score == pytest.approx(expected[0]["score"], rel=1e-5)
    top = hub.question_answering(question="what was good ?", context=CONTEXT, top_k=2)
    assert isinstance(top, list) and len(top) == 2


def test_bad_requests_get_clear_errors(answerer: tuple[httpx.Client, Engine, Path]) -> None:
    client, engine, _ = answerer
    url = str(client.base_url)
    assert httpx.post(url + "/v1/answer", json={"question": "q", "context": CONTEXT}
                      ).status_code == 401
    cases: list[tuple[object, int, str]] = [
        ({"question": "what ?"}, 422, "context"),
        ({"question": "what ?", "context": CONTEXT, "x": 1}, 422, "x"),
        ({"question": "what ?", "context": CONTEXT, "top_k": 0}, 422, "top_k"),
        ({"question": 3, "context": CONTEXT}, 422, "question"),
        ({"question": " ", "context": CONTEXT}, 422, "non-space"),
        ([], 422, "at least one"),
        ({"question": "what ?", "context": "good " * 400}, 413, "windows"),
        ({"question": " ".join(["film"] * engine.max_length), "context": CONTEXT}, 413,
         "shorter question"),
        ([{"question": "q", "context": CONTEXT}] * (MAX_TEXTS + 1), 413, "too many"),
    ]
    for body, status, words in cases:
        got = client.post("/v1/answer", json=body)
        assert got.status_code == status, (body, got.text)
        assert words in got.json()["error"] and "Traceback" not in got.text
    assert client.post("/v1/answer", content=b"{", headers={"content-type": "application/json"}
                       ).status_code == 400
    hf = client.post("/", json={"inputs": {"question": "q", "context": CONTEXT},
                                "parameters": {"max_seq_len": 384}})
    assert hf.status_code == 422 and "max_seq_len" in hf.json()["error"]
    assert client.post("/", json={"inputs": "just text"}).status_code == 422
    wrong = client.post("/v1/classify", json={"texts": ["x"]})
    assert wrong.status_code == 400 and "/v1/answer" in wrong.json()["error"]
    v2 = client.post(f"/v2/models/{engine.name}/infer", json={
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]})
    assert v2.status_code in (400, 404) and "error" in v2.json()


def test_answers_are_audited_and_the_route_is_documented(
    answerer: tuple[httpx.Client, Engine, Path],
) -> None:
    client, engine, audit = answerer
    context = " ".join([CONTEXT] * 4)
    got = client.post("/v1/answer", json={"question": "an audited question ?",
                                          "context": context})
    windows = len(engine.windows.windows("an audited question ?", context, 128))
    assert 1 < windows <= MAX_TEXTS
    records = {r.get("request_id"): r for r in map(json.loads, audit.read_text().splitlines())}
    record = records[got.headers["x-request-id"]]
    assert (record["endpoint"], record["status"], record["key_id"]) == ("/v1/answer", 200,
                                                                          "client")
    assert record["inputs"] == windows and record["bundle_digest"] == engine.digest
    assert "an audited question" not in audit.read_text()
    assert verify_chain(audit).ok
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/answer" in paths and "/v1/classify" not in paths


def test_other_models_refuse_questions_and_keep_their_root_route(
    tiny_bundle_factory: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory,
) -> None:
    bundle = tiny_bundle_factory("bert", "text-classification", "none")
    server, secret = serve_with_key(bundle, tmp_path_factory.mktemp("not-qa"))
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {secret}"},
                          timeout=30) as client:
            wrong = client.post("/v1/answer", json={"question": "q", "context": CONTEXT})
            assert wrong.status_code == 400 and "question-answering" in wrong.json()["error"]
            root = client.post("/", json={"inputs": "the movie was good"})
            assert root.status_code == 200 and {"label", "score"} <= set(root.json()[0])
            assert "/v1/answer" not in client.get("/openapi.json").json()["paths"]
    finally:
        server.stop()
