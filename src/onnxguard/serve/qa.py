"""Extractive question answering over HTTP: ``POST /v1/answer`` and the Hugging Face payload.

``POST /v1/answer`` takes ``{"question", "context", "top_k"?, "max_answer_len"?, "doc_stride"?,
"handle_impossible_answer"?}`` or a list of them and answers
``{"model", "results": [{"answers": [{"answer", "score", "start", "end"}]}]}``.  ``POST /`` on a
question-answering model takes the Hugging Face Inference API payload
(``{"inputs": {"question", "context"}, "parameters": {...}}``, what
``huggingface_hub.InferenceClient(url).question_answering`` sends) and answers as it does: one
``{"answer", "score", "start", "end"}``, or a list when ``top_k`` > 1.

Every window of every context is one (question, window) pair through ``Service.infer_pairs``:
the same keys, count/character/token limits, batching and audit as other routes.  A context is
tokenized into windows once, off the event loop, after the character limits pass; a request
whose windows exceed the per-request text limit is refused (413) before any model work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from starlette.responses import Response
from tokenizers import Encoding

from onnxguard._qa import ContextWindow, decode_answers
from onnxguard.errors import QuestionTooLongError
from onnxguard.serve._http import ApiError, context_of, json_response, parse_json
from onnxguard.serve.models import ModelSet
from onnxguard.serve.service import Service
from onnxguard.tasks import Task

Handler = Callable[[Request], Awaitable[Response]]
QA_PATHS = ("/v1/answer",)
"""Inference routes of this module (the guard gives them the infer scope); ``POST /`` is TEI's."""


class AnswerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    top_k: int = Field(default=1, ge=1, le=20)
    max_answer_len: int = Field(default=30, ge=1, le=512)
    doc_stride: int = Field(default=128, ge=0, le=512)
    handle_impossible_answer: bool = False


class AnswerItem(AnswerOptions):
    question: str
    context: str
    model: str | None = Field(default=None, max_length=256)
    """NAME or NAME/VERSION (a repository); every item of a request names the same one."""


class HFQuestion(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    question: str
    context: str


class HFParameters(AnswerOptions):
    align_to_words: bool = True
    max_question_len: int | None = None
    max_seq_len: int | None = None


class HFAnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    inputs: HFQuestion
    parameters: HFParameters | None = None


_ANSWER = TypeAdapter(AnswerItem | list[AnswerItem])
_HF = TypeAdapter(HFAnswerRequest)


def _windows(service: Service, items: list[AnswerItem]) -> list[list[Encoding]]:
    """Each context's windows (run in a thread: a long context is real tokenizing work)."""
    engine = service.engine
    try:
        return [engine.windows.windows(i.question, i.context, i.doc_stride) for i in items]
    except QuestionTooLongError as exc:
        raise ApiError(413, f"{exc.message}: {exc.hint}") from None


async def answer_items(
    service: Service, request: Request, items: list[AnswerItem], align_to_words: bool = True
) -> list[list[dict[str, Any]]]:
    """Answers per item, best first; every window through the shared checks and batcher."""
    if service.engine.task is not Task.QUESTION_ANSWERING:
        raise ApiError(400, f"this model is {service.engine.task.value}: question answering "
                       "needs a question-answering model")
    if not items:
        raise ApiError(422, "at least one question is needed")
    service.check_texts([t for i in items for t in (i.question, i.context)], len(items))
    for number, item in enumerate(items):
        if not item.question.strip() or not item.context.strip():
            raise ApiError(422, f"item {number}: question and context need a non-space "
                           "character")
    windows = await asyncio.to_thread(_windows, service, items)
    total, limit = sum(len(w) for w in windows), service.config.limits.max_texts
    if total > limit:
        raise ApiError(413, f"the contexts need {total} windows of "
                       f"{service.engine.max_length} tokens (limit {limit} per request): "
                       "shorten the contexts or send fewer questions")
    pairs: list[tuple[str, str]] = [(item.question, ContextWindow.of(item.context, window))
                                    for item, item_windows in zip(items, windows, strict=True)
                                    for window in item_windows]
    inference = await service.infer_pairs(pairs, context_of(request.scope), total)
    results, position = [], 0
    for item, item_windows in zip(items, windows, strict=True):
        rows = inference.rows[position:position + len(item_windows)]
        position += len(item_windows)
        results.append(decode_answers(
            item.context, item_windows, rows, top_k=item.top_k,
            max_answer_len=item.max_answer_len,
            handle_impossible_answer=item.handle_impossible_answer,
            align_to_words=align_to_words))
    return results


def add_qa_routes(app: FastAPI, models: ModelSet) -> Handler:
    """``POST /v1/answer``; returns the handler of the Hugging Face payload, which the TEI root
    route (``POST /``, ``compat.py``) calls for a question-answering model."""

    @app.post("/v1/answer", tags=["v1"], summary="Answer questions from a context (extractive)")
    async def answer(request: Request) -> Response:
        body = await parse_json(request, _ANSWER)
        items = body if isinstance(body, list) else [body]
        named = {item.model for item in items}
        if len(named) > 1:
            raise ApiError(422, "model: every item of a request must name the same model")
        service = models.lease(context_of(request.scope), next(iter(named), None))
        results = await answer_items(service, request, items)
        return json_response({"model": service.model_name,
                              "results": [{"answers": a} for a in results]})

    async def hf_answer(request: Request) -> Response:
        body: HFAnswerRequest = await parse_json(request, _HF)
        service = models.lease(context_of(request.scope))
        options = body.parameters or HFParameters()
        for name in ("max_question_len", "max_seq_len"):
            if getattr(options, name) is not None:
                raise ApiError(422, f"parameters.{name}: not supported; windows are the "
                               f"bundle's {service.engine.max_length} tokens")
        item = AnswerItem(question=body.inputs.question, context=body.inputs.context,
                          **options.model_dump(include=set(AnswerOptions.model_fields)))
        answers = (await answer_items(service, request, [item], options.align_to_words))[0]
        return json_response(answers[0] if options.top_k == 1 and answers else answers)

    return hf_answer
