"""sentence-transformers prompts end to end: a tiny ST-layout model with prompts is built with the
real pipeline; the Engine, sentence-transformers itself, the TEI routes (httpx and
``InferenceClient``) and ``onnxguard predict`` agree on what a prompt does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from onnxguard.bundle import read_manifest
from onnxguard.errors import UnknownPromptError
from onnxguard.runtime import Engine
from serving import serve_with_key
from tiny_models import make_tiny_model

PROMPTS = {"query": "query: ", "passage": "passage: "}
TEXTS = ["a good movie", "the worst film ever", "slow and boring plot"]


def _build(root: Path, default: str | None) -> tuple[Path, Path]:
    from onnxguard.convert.pipeline import BuildConfig, build_bundle
    from onnxguard.convert.quantize import QuantizeMode
    from onnxguard.convert.validate import Tolerance

    model = make_tiny_model(root / "model", "bert", "feature-extraction",
                            sentence_transformers=True, prompts=PROMPTS,
                            default_prompt_name=default)
    out = root / "bundle"
    build_bundle(BuildConfig(out=out, source=str(model), quantize=QuantizeMode.NONE,
                             tolerance=Tolerance(min_agreement=0.0, min_cosine=0.0,
                                                 min_recall=0.0, min_speedup=0.0)))
    return model, out


@pytest.fixture(scope="module")
def prompted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _build(tmp_path_factory.mktemp("prompts"), None)


@pytest.fixture(scope="module")
def defaulted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _build(tmp_path_factory.mktemp("prompts-default"), "query")


def _vectors(results: list[dict[str, object]]) -> np.ndarray:
    return np.asarray([r["embedding"] for r in results], dtype=np.float32)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_manifest_records_the_prompts(prompted: tuple[Path, Path],
                                      defaulted: tuple[Path, Path]) -> None:
    spec = read_manifest(prompted[1]).prompts
    assert spec is not None and spec.prompts == PROMPTS and spec.default is None
    assert spec.source == "config_sentence_transformers.json"
    default_spec = read_manifest(defaulted[1]).prompts
    assert default_spec is not None and default_spec.default == "query"


def test_engine_prompt_is_the_prefixed_text_and_matches_sentence_transformers(
        prompted: tuple[Path, Path]) -> None:
    from sentence_transformers import SentenceTransformer

    model, bundle = prompted
    engine = Engine.from_bundle(bundle)
    assert engine.prompts == PROMPTS
    assert engine.apply_prompt(TEXTS, "query") == ["query: " + t for t in TEXTS]
    with_prompt = _vectors(engine.predict(TEXTS, prompt_name="query"))
    prefixed = _vectors(engine.predict(["query: " + t for t in TEXTS]))
    np.testing.assert_allclose(with_prompt, prefixed, atol=1e-6)
    plain = _vectors(engine.predict(TEXTS))  # no default: nothing is prefixed
    assert not np.allclose(with_prompt, plain, atol=1e-3)
    reference = SentenceTransformer(str(model), device="cpu")
    for name in ("query", "passage"):
        expected = reference.encode(TEXTS, prompt_name=name)
        got = _vectors(engine.predict(TEXTS, prompt_name=name))
        np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(plain, reference.encode(TEXTS), atol=1e-4)
    with pytest.raises(UnknownPromptError) as info:
        engine.apply_prompt(TEXTS, "search")
    assert "passage, query" in info.value.message


def test_default_prompt_applies_when_none_is_named(defaulted: tuple[Path, Path]) -> None:
    from sentence_transformers import SentenceTransformer

    model, bundle = defaulted
    engine = Engine.from_bundle(bundle)
    reference = SentenceTransformer(str(model), device="cpu")
    assert reference.default_prompt_name == "query"
    np.testing.assert_allclose(_vectors(engine.predict(TEXTS)), reference.encode(TEXTS),
                               atol=1e-4)
    np.testing.assert_allclose(_vectors(engine.predict(TEXTS, prompt_name="passage")),
                               reference.encode(TEXTS, prompt_name="passage"), atol=1e-4)


@pytest.fixture(scope="module")
def server(prompted: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[tuple[str, str, Engine]]:
    bundle = prompted[1]
    running, secret = serve_with_key(bundle, tmp_path_factory.mktemp("prompt-serve"))
    yield running.url, secret, Engine.from_bundle(bundle)
    running.stop()


def test_tei_embed_honours_prompt_name(server: tuple[str, str, Engine]) -> None:
    url, secret, engine = server
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {secret}"},
                      timeout=30) as client:
        got = client.post("/embed", json={"inputs": TEXTS, "prompt_name": "passage"})
        assert got.status_code == 200
        np.testing.assert_allclose(
            np.asarray(got.json(), dtype=np.float32),
            _unit(_vectors(engine.predict(TEXTS, prompt_name="passage"))), atol=1e-5)
        unknown = client.post("/embed", json={"inputs": TEXTS, "prompt_name": "search"})
        assert unknown.status_code == 422
        assert "passage, query" in unknown.json()["error"]
        tokens = client.post("/tokenize", json={"inputs": "a good movie",
                                                "prompt_name": "query"}).json()[0]
        expected = engine.encode(["query: a good movie"])[0]
        assert [t["id"] for t in tokens] == expected.ids
        assert client.get("/info").json().keys() >= {"model_id", "max_input_length"}


def test_prompt_tokens_count_against_the_length_limit(server: tuple[str, str, Engine]) -> None:
    """A text that fits alone no longer fits with its prompt; a left cut keeps the prompt."""
    url, secret, engine = server
    prompt_tokens = len(engine.tokenizer.encode("query: ", add_special_tokens=False).ids)
    assert prompt_tokens > 0
    fits = " ".join(["good"] * (engine.max_length - 2))
    assert not engine.encode([fits])[0].overflowing
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {secret}"},
                      timeout=30) as client:
        assert client.post("/embed", json={"inputs": fits}).status_code == 200
        refused = client.post("/embed", json={"inputs": fits, "prompt_name": "query"})
        assert refused.status_code == 413
        left = client.post("/embed", json={"inputs": fits + " movie", "prompt_name": "query",
                                           "truncate": True, "truncation_direction": "Left"})
        assert left.status_code == 200
        kept = " ".join(["good"] * (engine.max_length - 2 - prompt_tokens - 1) + ["movie"])
        expected = _unit(_vectors(engine.predict([kept], prompt_name="query")))
        np.testing.assert_allclose(np.asarray(left.json(), dtype=np.float32), expected,
                                   atol=1e-5)


@pytest.mark.usefixtures("loopback_hub_client")
def test_inference_client_prompt_name(server: tuple[str, str, Engine]) -> None:
    from huggingface_hub import InferenceClient

    url, secret, engine = server
    got = InferenceClient(model=url, token=secret).feature_extraction(TEXTS[0],
                                                                      prompt_name="query")
    expected = _unit(_vectors(engine.predict([TEXTS[0]], prompt_name="query")))
    np.testing.assert_allclose(np.asarray(got).reshape(1, -1), expected, atol=1e-5)


def test_every_route_applies_the_default_prompt(defaulted: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    """/v1/embed, OpenAI /v1/embeddings and TEI /embed embed a text the same way; the prompt's
    tokens are in the OpenAI usage count."""
    from openai import OpenAI

    bundle = defaulted[1]
    engine = Engine.from_bundle(bundle)
    expected = _vectors(engine.predict(TEXTS))  # default "query" applied
    running, secret = serve_with_key(bundle, tmp_path)
    try:
        headers = {"Authorization": f"Bearer {secret}"}
        native = httpx.post(running.url + "/v1/embed", json={"texts": TEXTS}, headers=headers)
        np.testing.assert_allclose(np.asarray(native.json()["embeddings"], dtype=np.float32),
                                   expected, atol=1e-5)
        tei = httpx.post(running.url + "/embed", json={"inputs": TEXTS, "normalize": False},
                         headers=headers)
        np.testing.assert_allclose(np.asarray(tei.json(), dtype=np.float32), expected,
                                   atol=1e-5)
        client = OpenAI(base_url=running.url + "/v1", api_key=secret, max_retries=0)
        openai = client.embeddings.create(input=TEXTS, model=engine.name,
                                          encoding_format="float")
        np.testing.assert_allclose(np.asarray([d.embedding for d in openai.data],
                                              dtype=np.float32), expected, atol=1e-5)
        prompted_ids = engine.encode(engine.apply_prompt(TEXTS))
        assert openai.usage.prompt_tokens == sum(len(e.ids) for e in prompted_ids)
        assert openai.usage.prompt_tokens > sum(len(e.ids) for e in engine.encode(TEXTS))
    finally:
        running.stop()


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from onnxguard import cli

    capsys.readouterr()
    try:
        cli.main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_predict_cli_prompt_name(prompted: tuple[Path, Path],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    bundle = prompted[1]
    engine = Engine.from_bundle(bundle)
    code, out, err = _cli(capsys, "predict", str(bundle), "--prompt-name", "query", TEXTS[0])
    assert code == 0, err
    line = json.loads(out.strip().splitlines()[-1])
    np.testing.assert_allclose(line["embedding"],
                               engine.predict([TEXTS[0]], prompt_name="query")[0]["embedding"],
                               atol=1e-5)
    code, out, err = _cli(capsys, "predict", str(bundle), "--prompt-name", "search", TEXTS[0])
    assert code == 2 and "passage, query" in err
