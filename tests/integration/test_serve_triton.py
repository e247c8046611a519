"""The unmodified ``tritonclient.http`` client against the server (KServe V2 + binary tensors)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from onnxguard.runtime import Engine
from onnxguard.serve.app import create_app
from onnxguard.serve.auth import generate_secret, key_line
from onnxguard.serve.settings import AuditSettings, ServeConfig
from onnxguard.serve.testing import BackgroundServer

TEXTS = ["a good movie", "the worst film ever", "i love it", "café, naïve — 😀"]


@pytest.fixture(scope="module")
def engine(tiny_bundle_factory: Callable[..., Path]) -> Engine:
    return Engine.from_bundle(tiny_bundle_factory("bert", "text-classification", "dynamic"))


@pytest.fixture(scope="module")
def secret() -> str:
    return generate_secret()


@pytest.fixture(scope="module")
def client(
    engine: Engine, secret: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[triton.InferenceServerClient]:
    tmp = tmp_path_factory.mktemp("triton")
    keys = tmp / "keys.txt"
    keys.write_text(key_line("triton", secret) + "\n")
    keys.chmod(0o600)
    config = ServeConfig(
        bundle=engine.bundle.path,
        api_keys_file=keys,
        model_name="sentiment",
        audit=AuditSettings(path=tmp / "audit.log"),
    )
    with BackgroundServer(create_app(config)) as server:
        server.wait_ready()
        with triton.InferenceServerClient(url=f"127.0.0.1:{server.port}") as c:
            yield c


def headers(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def text_input(texts: list[str], binary: bool, shape: list[int] | None = None) -> triton.InferInput:
    array = np.array([t.encode("utf-8") for t in texts], dtype=np.object_)
    array = array.reshape(shape or [len(texts)])
    tensor = triton.InferInput("text", list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def test_health_and_metadata(
    client: triton.InferenceServerClient, secret: str, engine: Engine
) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("sentiment", headers=headers(secret))
    assert not client.is_model_ready("other", headers=headers(secret))
    server = client.get_server_metadata(headers=headers(secret))
    assert "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata("sentiment", headers=headers(secret))
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "probabilities", "label"]
    config = client.get_model_config("sentiment", headers=headers(secret))
    assert config["input"][0]["data_type"] == "TYPE_STRING"
    assert config["parameters"]["bundle_digest"]["string_value"] == engine.digest


@pytest.mark.parametrize("binary", [False, True])
def test_infer_json_and_binary(
    client: triton.InferenceServerClient, secret: str, engine: Engine, binary: bool
) -> None:
    outputs = [
        triton.InferRequestedOutput(name, binary_data=binary)
        for name in ("logits", "probabilities", "label")
    ]
    result = client.infer(
        "sentiment",
        [text_input(TEXTS, binary)],
        outputs=outputs,
        headers=headers(secret),
        request_id="abc",
    )
    expected = engine.predict(TEXTS)
    labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
    assert labels == [r["label"] for r in expected]
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (len(TEXTS), len(engine.labels))
    assert probabilities.dtype == np.float32
    # Dynamic int8 quantizes activations with a scale per batch, so a text's scores move in the
    # 5th decimal with its batch-mates: the server batches across requests, the Engine did not.
    np.testing.assert_allclose(probabilities.max(axis=1), [r["score"] for r in expected], atol=1e-3)
    assert result.as_numpy("logits").shape == (len(TEXTS), len(engine.labels))
    assert result.get_response()["id"] == "abc"


def test_default_outputs_compression_versions_and_top_k(
    client: triton.InferenceServerClient, secret: str, engine: Engine
) -> None:
    # No outputs listed: tritonclient asks for all of them, binary.
    result = client.infer(
        "sentiment",
        [text_input(TEXTS, True, [len(TEXTS), 1])],
        headers=headers(secret),
        request_compression_algorithm="gzip",
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == [
        "logits",
        "probabilities",
        "label",
    ]
    assert result.as_numpy("label").shape == (len(TEXTS),)
    versioned = client.infer(
        "sentiment",
        [text_input(TEXTS[:1], False)],
        model_version="1",
        headers=headers(secret),
        request_compression_algorithm="deflate",
    )
    assert versioned.as_numpy("logits").shape == (1, len(engine.labels))
    top = client.infer(
        "sentiment",
        [text_input(TEXTS[:2], False)],
        headers=headers(secret),
        outputs=[triton.InferRequestedOutput("probabilities", binary_data=False, class_count=1)],
    )
    entries = [
        x.decode() if isinstance(x, bytes) else x for x in top.as_numpy("probabilities").ravel()
    ]
    labels = [e.split(":")[2] for e in entries]
    assert labels == [r["label"] for r in engine.predict(TEXTS[:2])]


def test_errors_reach_the_client_as_exceptions(
    client: triton.InferenceServerClient, secret: str
) -> None:
    with pytest.raises(InferenceServerException, match="API key") as info:
        client.infer("sentiment", [text_input(["x"], True)])
    assert info.value.status() == "401"
    with pytest.raises(InferenceServerException, match="unknown model") as info:
        client.infer("nope", [text_input(["x"], True)], headers=headers(secret))
    assert info.value.status() == "404"
    wrong = triton.InferInput("ids", [1], "BYTES")
    wrong.set_data_from_numpy(np.array([b"x"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="one input") as info:
        client.infer("sentiment", [wrong], headers=headers(secret))
    assert info.value.status() == "400"
    not_utf8 = triton.InferInput("text", [1], "BYTES")
    not_utf8.set_data_from_numpy(np.array([b"\xff\xfe"], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="UTF-8"):
        client.infer("sentiment", [not_utf8], headers=headers(secret))
    with pytest.raises(InferenceServerException, match="too many texts"):
        client.infer("sentiment", [text_input(["x"] * 65, True)], headers=headers(secret))
