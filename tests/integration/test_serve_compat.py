"""OpenAI and TEI routes over real HTTP with the clients people use, unmodified.

The ``openai`` client (embeddings.create, float and base64) and ``huggingface_hub``'s
InferenceClient (feature_extraction, text_classification) talk to a real server on loopback;
their results equal the Engine's. Truncation is the caller's choice and never silent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from onnxguard.runtime import Engine
from onnxguard.serve.testing import BackgroundServer
from serving import serve_with_key

TEXTS = ["a good movie", "the worst film ever", "slow and boring plot", "great acting"]


def _serve(bundle: Path, tmp: Path) -> tuple[BackgroundServer, str]:
    return serve_with_key(bundle, tmp)


@pytest.fixture(scope="module")
def embedder(tiny_bundle_factory: Callable[..., Path],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Engine]]:
    bundle = tiny_bundle_factory("bert", "feature-extraction", "none")
    server, secret = _serve(bundle, tmp_path_factory.mktemp("embed"))
    yield server.url, secret, Engine.from_bundle(bundle)
    server.stop()


@pytest.fixture(scope="module")
def classifier(tiny_bundle_factory: Callable[..., Path],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Engine]]:
    bundle = tiny_bundle_factory("bert", "text-classification", "none")
    server, secret = _serve(bundle, tmp_path_factory.mktemp("classify"))
    yield server.url, secret, Engine.from_bundle(bundle)
    server.stop()


def _unit(rows: list[list[float]]) -> np.ndarray:
    vectors = np.asarray(rows, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_openai_client_embeddings_float_and_base64(embedder: tuple[str, str, Engine]) -> None:
    from openai import OpenAI

    url, secret, engine = embedder
    expected = np.asarray([r["embedding"] for r in engine.predict(TEXTS)], dtype=np.float32)
    client = OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0)
    floats = client.embeddings.create(input=TEXTS, model=engine.name)
    got = np.asarray([d.embedding for d in floats.data], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [d.index for d in floats.data] == [0, 1, 2, 3]
    assert floats.usage.prompt_tokens == sum(len(e.ids) for e in engine.encode(TEXTS))
    # The openai client asks for base64 by default when numpy is installed; ask explicitly too.
    b64 = client.embeddings.create(input=TEXTS[0], model=engine.name, encoding_format="base64")
    assert isinstance(b64.data[0].embedding, (list, str))
    short = client.embeddings.create(input=TEXTS, model=engine.name, dimensions=8)
    got8 = np.asarray([d.embedding for d in short.data], dtype=np.float32)
    np.testing.assert_allclose(got8, _unit(expected[:, :8].tolist()), atol=1e-5)
    with pytest.raises(Exception) as info:
        OpenAI(base_url=url + "/v1", api_key="ogk_wrong", max_retries=0).embeddings.create(
            input="x", model=engine.name)
    assert getattr(info.value, "status_code", None) == 401


@pytest.mark.usefixtures("loopback_hub_client")
def test_inference_client_feature_extraction(embedder: tuple[str, str, Engine]) -> None:
    from huggingface_hub import InferenceClient

    url, secret, engine = embedder
    client = InferenceClient(model=url, token=secret)
    got = client.feature_extraction(TEXTS[1])
    expected = np.asarray(engine.predict([TEXTS[1]])[0]["embedding"], dtype=np.float32)
    np.testing.assert_allclose(np.asarray(got).reshape(-1), _unit([expected.tolist()])[0],
                               atol=1e-5)


def test_tei_routes_and_truncation(embedder: tuple[str, str, Engine]) -> None:
    url, secret, engine = embedder
    headers = {"Authorization": f"Bearer {secret}"}
    long_text = " ".join(["word"] * (engine.max_length + 40))
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        assert httpx.post(url + "/embed", json={"inputs": "x"}).status_code == 401
        refused = client.post("/embed", json={"inputs": [TEXTS[0], long_text]})
        assert refused.status_code == 413 and "truncate" in refused.json()["error"]
        cut = client.post("/embed", json={"inputs": [TEXTS[0], long_text], "truncate": True})
        assert cut.status_code == 200 and cut.headers["x-truncated-inputs"] == "1"
        left = client.post("/embed", json={"inputs": long_text + " end", "truncate": True,
                                           "truncation_direction": "Left"})
        assert left.status_code == 200
        assert left.json() != client.post("/embed", json={"inputs": long_text + " end",
                                                          "truncate": True}).json()
        tokens = client.post("/tokenize", json={"inputs": "a good movie"}).json()[0]
        assert tokens[0]["special"] and not tokens[1]["special"]
        assert tokens[1]["text"] == "a" and tokens[1]["start"] == 0
        info = client.get("/info").json()
        assert info["max_input_length"] == engine.max_length and "embedding" in info["model_type"]
        assert client.post("/predict", json={"inputs": "x"}).status_code == 400
        assert client.post("/embed", json={"inputs": "x", "prompt_name": "query"}
                           ).status_code == 422
        assert client.post("/embed", json={"inputs": "x", "bogus": 1}).status_code == 422


@pytest.mark.usefixtures("loopback_hub_client")
def test_tei_predict_equals_the_engine(classifier: tuple[str, str, Engine]) -> None:
    from huggingface_hub import InferenceClient

    url, secret, engine = classifier
    expected = engine.predict(TEXTS)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {secret}"},
                      timeout=30) as client:
        rows = client.post("/predict", json={"inputs": TEXTS}).json()
        assert [r[0]["label"] for r in rows] == [e["label"] for e in expected]
        assert [r[0]["score"] for r in rows] == pytest.approx([e["score"] for e in expected],
                                                              abs=1e-5)
        raw = client.post("/predict", json={"inputs": TEXTS[0], "raw_scores": True}).json()
        assert {r["label"] for r in raw} == set(engine.labels)
        assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 400
    # TEI answers a single input with a flat list; this client then returns its first element.
    top = InferenceClient(model=url, token=secret).text_classification(TEXTS[0], top_k=1)
    assert top["label"] == expected[0]["label"]
