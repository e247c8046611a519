"""The APIs clients already speak: OpenAI embeddings and text-embeddings-inference (TEI).

- ``POST /v1/embeddings`` (OpenAI): ``input`` (string or list), ``model``, ``encoding_format``
  (``float`` or ``base64`` of little-endian float32), ``dimensions`` (Matryoshka-style: the first
  N dimensions, renormalised), ``usage`` token counts.  Works with the unmodified ``openai`` client.
- TEI: ``POST /embed``, ``POST /predict``, ``POST /rerank``, ``POST /tokenize``, ``GET /info`` and
  ``POST /`` (the route of the model's kind), as ``huggingface_hub.InferenceClient`` calls them.
- Cohere-style ``POST /v1/rerank`` (``query``, ``documents``, ``top_n``, ``return_documents``).
  Reranking runs (query, document) pairs of a cross-encoder (task ``reranking``) through the
  batcher, tokenized together and truncated together at the model's maximum length.

Every route sits behind the same guard as ``/v1`` and ``/v2`` (keys, scopes, rate limits and
token budgets, body limits, audit) and runs through the same batcher.  Truncation is the
caller's choice: ``truncate: false`` (TEI's default; always for OpenAI, which has no such field)
refuses a text longer than the model's maximum length with a 413 that says so, instead of
silently cutting it; where it is allowed, a truncated text is reported.

Prompts (sentence-transformers ``prompts`` recorded in the bundle): ``/embed`` and ``/tokenize``
take ``prompt_name``; every embedding route applies the model's ``default_prompt_name`` when none
is named.  The prompt is part of the text: tokenized, truncated and counted with it (a left cut
keeps it).  TEI's ``/info`` has no prompts field, so none is added.
"""

from __future__ import annotations

import asyncio
import base64
import weakref
from collections.abc import Awaitable, Callable, Sequence
from enum import StrEnum
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from starlette.responses import Response
from tokenizers import Encoding, Tokenizer

from onnxguard import __version__
from onnxguard.runtime import rank_results, softmax
from onnxguard.serve._http import ApiError, context_of, json_response, parse_json
from onnxguard.serve.models import ModelSet
from onnxguard.serve.service import Inference, Service
from onnxguard.tasks import Task

COMPAT_PATHS = ("/v1/embeddings", "/embed", "/predict", "/rerank", "/v1/rerank", "/tokenize",
                "/info", "/")


class OpenAIEmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    input: str | list[str] = Field(description="A text or a list of texts.")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, max_length=256)


class TruncationDirection(StrEnum):
    RIGHT = "Right"
    LEFT = "Left"


class TEIEmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    inputs: str | list[str]
    normalize: bool = True
    truncate: bool = False
    truncation_direction: TruncationDirection = TruncationDirection.RIGHT
    prompt_name: str | None = None
    dimensions: int | None = Field(default=None, ge=1)


class PredictParameters(BaseModel):
    """The Hugging Face inference parameters ``InferenceClient.text_classification`` sends."""

    model_config = ConfigDict(extra="forbid", strict=True)
    top_k: int | None = Field(default=None, ge=1)
    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = None


class TEIPredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    inputs: str | list[str] | list[list[str]]
    """Texts, or (for a reranker) [query, document] pairs: ``[a, b]`` or ``[[a, b], ...]``."""
    parameters: PredictParameters | None = None
    raw_scores: bool = False
    truncate: bool = False
    truncation_direction: TruncationDirection = TruncationDirection.RIGHT


class TEITokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    inputs: str | list[str]
    add_special_tokens: bool = True
    prompt_name: str | None = None


class TEIRerankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    query: str
    texts: list[str]
    return_text: bool = False
    raw_scores: bool = False
    truncate: bool = False
    truncation_direction: TruncationDirection = TruncationDirection.RIGHT


class CohereDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str


class CohereRerankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    query: str
    documents: list[str | CohereDocument]
    model: str | None = None
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False


_OPENAI = TypeAdapter(OpenAIEmbeddingsRequest)
_RERANK = TypeAdapter(TEIRerankRequest)
Handler = Callable[[Request], Awaitable[Response]]
_COHERE_RERANK = TypeAdapter(CohereRerankRequest)
_EMBED = TypeAdapter(TEIEmbedRequest)
_PREDICT = TypeAdapter(TEIPredictRequest)
_TOKENIZE = TypeAdapter(TEITokenizeRequest)


def _texts(inputs: str | list[str]) -> list[str]:
    return [inputs] if isinstance(inputs, str) else list(inputs)


def _texts_or_pairs(inputs: str | list[str] | list[list[str]]) -> list[str | list[str]]:
    return [inputs] if isinstance(inputs, str) else list(inputs)


class _Truncation:
    """Apply a request's truncation choice before the texts reach the batcher."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._full: Tokenizer | None = None

    def full_tokenizer(self) -> Tokenizer:
        """The bundle's tokenizer without truncation (built once, on first use)."""
        if self._full is None:
            full = Tokenizer.from_str(self.service.engine.tokenizer.to_str())
            full.no_truncation()
            full.no_padding()
            self._full = full
        return self._full

    def prompt_tokens(self, prompt_name: str | None) -> int:
        """How many tokens the prompt put before each text takes (0 without one)."""
        prompt = self.service.prompted([""], prompt_name)[0]
        if not prompt:
            return 0
        return len(self.full_tokenizer().encode(prompt, add_special_tokens=False).ids)

    def left(self, texts: Sequence[str], reserve: int = 0) -> list[str]:
        """Keep the end of each over-long text: cut it where its last tokens begin.

        ``reserve`` tokens are left free for the prompt that is put before the text.
        """
        limit = self.service.engine.max_length - reserve
        out = []
        for text, encoding in zip(texts, self.full_tokenizer().encode_batch(list(texts)),
                                  strict=True):
            specials = sum(encoding.special_tokens_mask)
            words = [i for i, s in enumerate(encoding.special_tokens_mask) if not s]
            keep = limit - specials
            if len(words) <= keep:
                out.append(text)
                continue
            start = encoding.offsets[words[len(words) - keep]][0]
            out.append(text[start:])
        return out

    def left_documents(self, query: str, documents: Sequence[str]) -> list[str]:
        """Pairs: keep the end of each over-long document, the query whole.

        A query that alone leaves no room is left to the tokenizer's own (longest-first) cut.
        """
        limit = self.service.engine.max_length
        pairs = [(query, d) for d in documents]
        out = []
        for doc, encoding in zip(documents, self.full_tokenizer().encode_batch(pairs),
                                 strict=True):
            words = [i for i, s in enumerate(encoding.sequence_ids) if s == 1]
            keep = limit - (len(encoding.ids) - len(words))
            if len(words) <= keep or keep <= 0:
                out.append(doc)
                continue
            out.append(doc[encoding.offsets[words[len(words) - keep]][0]:])
        return out


def _check_length(inference: Inference, truncate: bool, max_length: int,
                  fix: str) -> list[bool]:
    """Which texts were cut; with ``truncate`` false a cut text is a 413 that says ``fix``."""
    cut = [bool(e.overflowing) for e in inference.encodings]
    if not truncate and any(cut):
        index = cut.index(True)
        raise ApiError(413, f"text {index} is longer than the model's maximum of {max_length} "
                       f"tokens; {fix}")
    return cut


def _embeddings(service: Service, inference: Inference, normalize: bool,
                dimensions: int | None) -> np.ndarray:
    vectors = np.stack(inference.rows).astype(np.float32)
    if dimensions is not None:
        if dimensions > vectors.shape[1]:
            raise ApiError(422, f"dimensions: the model has {vectors.shape[1]}, asked for "
                           f"{dimensions}")
        vectors = vectors[:, :dimensions]
        normalize = True  # a prefix of a unit vector is not one: renormalise
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
    return vectors


def _predict_inputs(
    service: Service, inputs: str | list[str] | list[list[str]]
) -> tuple[bool, list[tuple[str, str]] | None]:
    """Whether one input was sent, and the pairs when a reranker was sent pairs.

    A reranker scores pairs only: ``[a, b]`` is one pair (as TEI reads it), ``[[a, b], ...]``
    several; a classifier takes texts only.
    """
    is_reranker = service.engine.task is Task.RERANKING
    if isinstance(inputs, str) or not inputs or isinstance(inputs[0], str):
        if not is_reranker:
            return isinstance(inputs, str), None
        if isinstance(inputs, list) and len(inputs) == 2:
            return True, [(str(inputs[0]), str(inputs[1]))]
        raise ApiError(422, "inputs: a reranker scores [query, document] pairs")
    if not is_reranker:
        raise ApiError(400, f"this model is {service.engine.task.value}: pairs need a "
                       "reranking model")
    if any(len(pair) != 2 for pair in inputs):
        raise ApiError(422, "inputs: every pair needs exactly two texts")
    return False, [(str(p[0]), str(p[1])) for p in inputs if isinstance(p, list)]


def _require(service: Service, task: Task, route: str) -> None:
    if service.engine.task is not task:
        raise ApiError(400, f"this model is {service.engine.task.value}: {route} needs a "
                       f"{task.value} model")


def add_compat_routes(
    app: FastAPI, models: ModelSet, question_answering: Handler | None = None
) -> None:
    """Register the OpenAI and TEI routes on ``app`` (the guard already covers every path).

    Each handler leases its model version first (``model`` in the OpenAI and Cohere bodies;
    the TEI routes, which have no such field, use the server's default model).
    ``question_answering`` answers ``POST /`` for a question-answering model (``qa.py``)."""
    truncations: weakref.WeakKeyDictionary[Service, _Truncation] = weakref.WeakKeyDictionary()

    def truncation_for(service: Service) -> _Truncation:
        found = truncations.get(service)
        if found is None:
            found = truncations[service] = _Truncation(service)
        return found

    def lease(request: Request, model: str | None = None) -> Service:
        return models.lease(context_of(request.scope), model)

    async def run(service: Service, request: Request, texts: list[str], truncate: bool,
                  direction: TruncationDirection,
                  fix: str = "shorten it, or send truncate: true to cut it there",
                  prompt_name: str | None = None,
                  ) -> tuple[Inference, list[bool]]:
        if truncate and direction is TruncationDirection.LEFT:
            service.check_texts(texts)  # limits before any tokenizing work
            truncation = truncation_for(service)
            reserve = truncation.prompt_tokens(prompt_name)
            texts = await asyncio.to_thread(truncation.left, texts, reserve)
        inference = await service.infer(texts, context_of(request.scope), prompt_name)
        return inference, _check_length(inference, truncate, service.engine.max_length, fix)

    @app.post("/v1/embeddings", tags=["openai"], summary="OpenAI-compatible embeddings")
    async def openai_embeddings(request: Request) -> Response:
        body: OpenAIEmbeddingsRequest = await parse_json(request, _OPENAI)
        service = lease(request, body.model)
        _require(service, Task.FEATURE_EXTRACTION, "/v1/embeddings")
        inference, _ = await run(service, request, _texts(body.input), False,
                                 TruncationDirection.RIGHT,
                                 fix="shorten it (or use /embed with truncate: true)")
        vectors = _embeddings(service, inference, normalize=False, dimensions=body.dimensions)
        data = []
        for index, vector in enumerate(vectors):
            embedding: Any = (base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
                              if body.encoding_format == "base64" else vector.tolist())
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(len(e.ids) for e in inference.encodings)
        return json_response({"object": "list", "data": data, "model": service.model_name,
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def tei_embed(request: Request) -> Response:
        body: TEIEmbedRequest = await parse_json(request, _EMBED)
        service = lease(request)
        _require(service, Task.FEATURE_EXTRACTION, "/embed")
        inference, cut = await run(service, request, _texts(body.inputs), body.truncate,
                                   body.truncation_direction, prompt_name=body.prompt_name)
        vectors = _embeddings(service, inference, body.normalize, body.dimensions)
        headers = {"X-Truncated-Inputs": str(sum(cut))} if any(cut) else None
        return json_response(vectors.tolist(), headers=headers)

    async def tei_predict(request: Request) -> Response:
        body: TEIPredictRequest = await parse_json(request, _PREDICT)
        service = lease(request)
        single, pairs = _predict_inputs(service, body.inputs)
        if pairs is not None:
            if body.truncation_direction is TruncationDirection.LEFT and body.truncate:
                raise ApiError(422, "truncation_direction: Left is not supported for pairs "
                               "on /predict; use /rerank")
            inference = await service.infer_pairs(pairs, context_of(request.scope))
            cut = _check_length(inference, body.truncate, service.engine.max_length,
                                "shorten it, or send truncate: true to cut it there")
        else:
            _require(service, Task.TEXT_CLASSIFICATION, "/predict")
            texts = [t for t in _texts_or_pairs(body.inputs) if isinstance(t, str)]
            inference, cut = await run(service, request, texts, body.truncate,
                                       body.truncation_direction)
        engine = service.engine
        logits = np.stack(inference.rows).astype(np.float64)
        parameters = body.parameters or PredictParameters()
        default = "sigmoid" if logits.shape[1] == 1 else "softmax"  # one logit: a relevance
        function = parameters.function_to_apply or ("none" if body.raw_scores else default)
        scores = {"none": logits, "softmax": softmax(logits),
                  "sigmoid": 1.0 / (1.0 + np.exp(-logits))}[function]
        top = parameters.top_k or scores.shape[1]
        results = [[{"label": engine.label_of(int(i)), "score": float(row[i])}
                    for i in np.argsort(-row, kind="stable")[:top]]
                   for row in scores]
        headers = {"X-Truncated-Inputs": str(sum(cut))} if any(cut) else None
        payload: Any = results[0] if single else results
        return json_response(payload, headers=headers)

    async def rerank(service: Service, request: Request, query: str, documents: list[str],
                     truncate: bool, direction: TruncationDirection, raw_scores: bool, route: str,
                     ) -> tuple[list[dict[str, Any]], list[bool]]:
        """Ranked ``{"index", "score"}`` (``truncated`` when cut) and which documents were cut."""
        _require(service, Task.RERANKING, route)
        if not documents:
            raise ApiError(422, "at least one text is needed")
        if truncate and direction is TruncationDirection.LEFT:
            service.check_texts([query, *documents])  # limits before any tokenizing work
            documents = await asyncio.to_thread(
                truncation_for(service).left_documents, query, documents
            )
        inference = await service.infer_pairs([(query, d) for d in documents],
                                              context_of(request.scope), len(documents) + 1)
        cut = _check_length(inference, truncate, service.engine.max_length,
                            "shorten the query or the text, or send truncate: true")
        logits = np.stack(inference.rows) if inference.rows else np.zeros((0, 1))
        return rank_results(logits, cut, raw_scores), cut

    async def tei_rerank(request: Request) -> Response:
        body: TEIRerankRequest = await parse_json(request, _RERANK)
        ranked, cut = await rerank(lease(request), request, body.query, body.texts, body.truncate,
                                   body.truncation_direction, body.raw_scores, "/rerank")
        if body.return_text:
            for item in ranked:
                item["text"] = body.texts[item["index"]]
        headers = {"X-Truncated-Inputs": str(sum(cut))} if any(cut) else None
        return json_response(ranked, headers=headers)

    @app.post("/v1/rerank", tags=["cohere"], summary="Cohere-style reranking")
    async def cohere_rerank(request: Request) -> Response:
        """Cohere cuts over-long documents; here the cut is reported (meta and header)."""
        body: CohereRerankRequest = await parse_json(request, _COHERE_RERANK)
        service = lease(request, body.model)
        texts = [d if isinstance(d, str) else d.text for d in body.documents]
        ranked, cut = await rerank(service, request, body.query, texts, True,
                                   TruncationDirection.RIGHT, False, "/v1/rerank")
        results = []
        for item in ranked[:body.top_n]:
            result: dict[str, Any] = {"index": item["index"], "relevance_score": item["score"]}
            if body.return_documents:
                result["document"] = {"text": texts[item["index"]]}
            results.append(result)
        headers = {"X-Truncated-Inputs": str(sum(cut))} if any(cut) else None
        return json_response({"results": results, "model": service.model_name,
                              "meta": {"truncated_documents": sum(cut)}}, headers=headers)

    app.post("/embed", tags=["tei"], summary="TEI: embed texts")(tei_embed)
    app.post("/predict", tags=["tei"], summary="TEI: classify texts")(tei_predict)
    app.post("/rerank", tags=["tei"], summary="TEI: rerank texts for a query")(tei_rerank)

    @app.post("/", tags=["tei"], summary="TEI: the route of this model's kind")
    async def tei_root(request: Request) -> Response:
        service = models.lease(None)  # which route: the lease is taken by the route itself
        if service.engine.task is Task.FEATURE_EXTRACTION:
            return await tei_embed(request)
        if service.engine.task is Task.RERANKING:
            return await tei_rerank(request)
        if service.engine.task is Task.QUESTION_ANSWERING and question_answering is not None:
            return await question_answering(request)
        return await tei_predict(request)

    @app.post("/tokenize", tags=["tei"], summary="TEI: tokenize texts")
    async def tei_tokenize(request: Request) -> Response:
        body: TEITokenizeRequest = await parse_json(request, _TOKENIZE)
        service = lease(request)
        texts = service.prompted(_texts(body.inputs), body.prompt_name)  # what /embed runs
        service.check_texts(texts)
        tokenizer = service.engine.tokenizer
        encodings = tokenizer.encode_batch(texts, add_special_tokens=body.add_special_tokens)
        return json_response([_tokens(text, e) for text, e in zip(texts, encodings,
                                                                   strict=True)])

    @app.get("/info", tags=["tei"], summary="TEI: what is served")
    async def tei_info(request: Request) -> Response:
        service = lease(request)
        engine = service.engine
        kind: dict[str, Any]
        if engine.task is Task.FEATURE_EXTRACTION:
            pooling = engine.manifest.pooling
            kind = {"embedding": {"pooling": pooling.mode.value if pooling else "mean"}}
        elif engine.task is Task.RERANKING:
            kind = {"reranker": {"id2label": dict(enumerate(engine.labels))}}
        else:
            kind = {"classifier": {"id2label": dict(enumerate(engine.labels))}}
        limits = service.config.limits
        return json_response({
            "model_id": service.model_name, "model_sha": engine.digest,
            "model_dtype": engine.manifest.precision, "model_type": kind,
            "max_input_length": engine.max_length, "max_client_batch_size": limits.max_texts,
            "max_batch_tokens": service.config.batching.max_batch_tokens,
            "version": __version__, "router": "onnxguard",
        })


def _tokens(text: str, encoding: Encoding) -> list[dict[str, Any]]:
    return [{"id": token_id, "text": text[start:stop] if not special else token,
             "special": bool(special), "start": start if not special else None,
             "stop": stop if not special else None}
            for token_id, token, (start, stop), special in zip(
                encoding.ids, encoding.tokens, encoding.offsets, encoding.special_tokens_mask,
                strict=True)]
