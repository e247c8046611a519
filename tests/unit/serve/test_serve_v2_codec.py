"""KServe V2 request/response encoding, checked against tritonclient's own codec."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from tritonclient.http import InferInput, InferRequestedOutput, InferResult
from tritonclient.http._utils import _get_inference_request

from onnxguard.serve._http import ApiError
from onnxguard.serve.v2 import (
    OutputTensor,
    RequestedOutput,
    encode_response,
    parse_infer_request,
    serialize_bytes,
)


def triton_body(
    texts: list[str],
    binary: bool,
    shape: list[int] | None = None,
    outputs: list[InferRequestedOutput] | None = None,
) -> tuple[bytes, str | None]:
    array = np.array([t.encode() for t in texts], dtype=object).reshape(shape or [len(texts)])
    tensor = InferInput("text", list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array, binary_data=binary)
    body, json_size = _get_inference_request(
        inputs=[tensor],
        request_id="req-1",
        outputs=outputs,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        custom_parameters=None,
    )
    return body, (str(json_size) if json_size is not None else None)


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("shape", [None, [3, 1]])
def test_tritonclient_requests_parse(binary: bool, shape: list[int] | None) -> None:
    texts = ["héllo", "", "a longer text, with punctuation!"]
    body, header = triton_body(texts, binary, shape)
    parsed = parse_infer_request(body, header)
    assert parsed.texts == texts and parsed.id == "req-1"
    assert parsed.outputs is None and parsed.binary_default is True


def test_requested_outputs_parse() -> None:
    body, header = triton_body(
        ["x"],
        False,
        outputs=[
            InferRequestedOutput("label", binary_data=False),
            InferRequestedOutput("logits", binary_data=True, class_count=2),
        ],
    )
    parsed = parse_infer_request(body, header)
    assert parsed.outputs == [
        RequestedOutput("label", False, 0),
        RequestedOutput("logits", True, 2),
    ]


def _request(**changes: object) -> dict:
    base: dict = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}
    base.update(changes)
    return base


@pytest.mark.parametrize(
    ("body", "header"),
    [
        (b"{not json", None),
        (b"[]", None),
        (json.dumps(_request(extra=1)).encode(), None),
        (json.dumps(_request(inputs=[])).encode(), None),
        (
            json.dumps(
                {"inputs": [{"name": "ids", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
            ).encode(),
            None,
        ),
        (
            json.dumps(
                {"inputs": [{"name": "text", "shape": [1], "datatype": "INT64", "data": [1]}]}
            ).encode(),
            None,
        ),
        (
            json.dumps(
                {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["x"]}]}
            ).encode(),
            None,
        ),
        (
            json.dumps(
                {
                    "inputs": [
                        {"name": "text", "shape": [1, 1, 1], "datatype": "BYTES", "data": ["x"]}
                    ]
                }
            ).encode(),
            None,
        ),
        (
            json.dumps(
                {"inputs": [{"name": "text", "shape": [-1], "datatype": "BYTES", "data": ["x"]}]}
            ).encode(),
            None,
        ),
        (
            json.dumps(
                {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [3]}]}
            ).encode(),
            None,
        ),
        (json.dumps(_request(parameters={"sequence_id": 4})).encode(), None),
        (
            json.dumps(
                _request(outputs=[{"name": "x", "parameters": {"shared_memory_region": "r"}}])
            ).encode(),
            None,
        ),
        (json.dumps(_request(outputs="all")).encode(), None),
        (json.dumps(_request(id=5)).encode(), None),
        (b'{"inputs": []}', "999"),
        (b'{"inputs": []}', "abc"),
    ],
)
def test_malformed_requests_are_400(body: bytes, header: str | None) -> None:
    with pytest.raises(ApiError) as caught:
        parse_infer_request(body, header)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("blob", "size", "message"),
    [
        (b"\x09\x00\x00\x00abc", 7, "truncated"),
        (b"\x04\x00\x00\x00\xff\xfe\xfd\xfc", 8, "UTF-8"),
        (serialize_bytes([b"hello"]) + b"trailing", 9, "does not belong"),
        (serialize_bytes([b"a", b"b"]), 10, "elements"),
        (serialize_bytes([b"hello"]), 100, "does not match"),
    ],
)
def test_binary_input_errors(blob: bytes, size: int, message: str) -> None:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    ).encode()
    with pytest.raises(ApiError, match=message) as caught:
        parse_infer_request(head + blob, str(len(head)))
    assert caught.value.status == 400


def test_binary_response_decodes_with_tritonclient() -> None:
    logits = np.array([[0.5, -1.0], [2.0, 3.0]], dtype=np.float32)
    outputs = [
        (OutputTensor("logits", "FP32", [2, 2], logits), True),
        (OutputTensor("label", "BYTES", [2], [b"NEG", b"POS"]), True),
    ]
    body, header_length = encode_response(
        "m", "1", "id-7", outputs, binary_default=False, explicit=True
    )
    assert header_length is not None
    result = InferResult.from_response_body(body, header_length=header_length)
    np.testing.assert_array_equal(result.as_numpy("logits"), logits)
    assert list(result.as_numpy("label")) == [b"NEG", b"POS"]
    assert result.get_response()["id"] == "id-7"


def test_json_response_decodes_with_tritonclient() -> None:
    logits = np.array([[0.25, 1.5]], dtype=np.float32)
    outputs = [
        (OutputTensor("logits", "FP32", [1, 2], logits), False),
        (OutputTensor("label", "BYTES", [1], [b"POS"]), False),
    ]
    body, header_length = encode_response(
        "m", "1", None, outputs, binary_default=False, explicit=True
    )
    assert header_length is None
    result = InferResult.from_response_body(body)
    np.testing.assert_allclose(result.as_numpy("logits"), logits)
    assert result.as_numpy("label").tolist() == ["POS"] or result.as_numpy("label").tolist() == [
        b"POS"
    ]
    assert SimpleNamespace(**json.loads(body)).model_name == "m"
