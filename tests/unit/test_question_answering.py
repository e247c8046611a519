"""Extractive question answering: detection, the span gate, and answers equal to transformers'.

transformers 5 removed ``pipeline("question-answering")``; ``pipeline_answers`` below is that
pipeline's preprocess/forward/postprocess (fast tokenizer with ``only_second`` truncation,
overflowing windows with stride, offsets; transformers' own ``select_starts_ends``, which the
document-QA pipeline keeps) run on the tiny PyTorch model.  The bundle's answers must equal it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxguard._qa import best_span, window_spans
from onnxguard.convert.gate import Split, measure_spans
from onnxguard.errors import QuestionTooLongError, TaskMismatchError, UsageError
from onnxguard.runtime import Engine
from onnxguard.tasks import ARCHITECTURES, Task, detect_task, resolve_task

CONTEXT = "the movie was good but the film was bad , i love this film"
LONG_CONTEXT = " ".join(
    f"{w} the movie was {a} and the film was {b} ."
    for w, a, b in [("i", "good", "bad"), ("it", "great", "slow"), ("the", "fine", "good")] * 6
)
QUESTIONS = [("what was good ?", CONTEXT), ("was the film bad ?", CONTEXT),
             ("what do i love ?", CONTEXT), ("what was great ?", LONG_CONTEXT),
             ("which film was slow ?", LONG_CONTEXT)]


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_every_registered_architecture_has_a_qa_head_detected_offline(
    tmp_path: Path, model_type: str
) -> None:
    import transformers

    from tiny_models import tiny_config

    config = tiny_config(model_type, 100, "question-answering")
    model = transformers.AutoModelForQuestionAnswering.from_config(config)
    arch = type(model).__name__
    assert arch.endswith("ForQuestionAnswering")
    saved = {"model_type": model_type, "architectures": [arch]}
    assert detect_task(tmp_path, saved) is Task.QUESTION_ANSWERING
    assert resolve_task(tmp_path, saved, "question-answering") is Task.QUESTION_ANSWERING


def test_task_needs_a_qa_head(tmp_path: Path) -> None:
    classifier = {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "A"}}
    with pytest.raises(TaskMismatchError, match="ForQuestionAnswering"):
        resolve_task(tmp_path, classifier, "question-answering")
    no_architectures = {"model_type": "bert", "id2label": {"0": "LABEL_0", "1": "LABEL_1"}}
    with pytest.raises(TaskMismatchError):  # default labels do not show a QA head
        resolve_task(tmp_path, no_architectures, "question-answering")


def test_span_decoding_rules() -> None:
    """Start <= end, at most max_answer_len tokens, only context tokens, best first."""
    allowed = np.array([False, False, False, True, True, True, True, False])
    logits = np.zeros((8, 2), dtype=np.float32)
    logits[1] = [9.0, 9.0]  # a question token: never part of an answer
    logits[5, 0] = 4.0  # best start ...
    logits[3, 1] = 5.0  # ... but this end is before it
    logits[6, 1] = 3.0
    spans, null = window_spans(logits, allowed, top_k=3, max_answer_len=2)
    assert (spans[0].start, spans[0].end) == (5, 6)
    assert all(s.start <= s.end <= s.start + 1 and allowed[s.start] and allowed[s.end]
               for s in spans)
    assert [s.score for s in spans] == sorted((s.score for s in spans), reverse=True)
    assert 0.0 < null < 1.0
    assert best_span(logits, allowed, max_answer_len=1) in {(5, 5), (3, 3), (6, 6)}


def test_span_gate_counts_rows_whose_best_span_moved() -> None:
    ref = np.zeros((2, 6, 2), dtype=np.float32)
    ref[:, 3, 0] = ref[:, 4, 1] = 5.0
    out = ref.copy()
    out[1, 2, 0] = 9.0  # the second row's answer starts elsewhere
    mask = np.array([[False, False, True, True, True, False]] * 2)
    metrics = measure_spans(Split.REPORT, [ref], [out], [mask])
    assert metrics.texts == 2 and metrics.agreement == 0.5
    assert metrics.agreement_lower95 is not None and metrics.agreement_lower95 < 0.5
    assert measure_spans(Split.REPORT, [ref], [ref], [mask]).agreement == 1.0


def pipeline_answers(model: Any, tokenizer: Any, input_names: list[str], question: str,
                     context: str, *, top_k: int = 1, max_answer_len: int = 30,
                     handle_impossible_answer: bool = False) -> list[dict[str, Any]]:
    """transformers' QuestionAnsweringPipeline (4.x) steps on a PyTorch model."""
    import torch
    from transformers.pipelines.document_question_answering import select_starts_ends

    max_seq_len = tokenizer.model_max_length
    encoded = tokenizer(text=question, text_pair=context, truncation="only_second",
                        max_length=max_seq_len, stride=min(max_seq_len // 2, 128),
                        return_token_type_ids=True, return_overflowing_tokens=True,
                        return_offsets_mapping=True, return_special_tokens_mask=True)
    answers: list[dict[str, Any]] = []
    min_null_score = 1000000.0
    for span in range(len(encoded["input_ids"])):
        ids = np.array(encoded["input_ids"][span])
        p_mask = np.array([s != 1 for s in encoded.sequence_ids(span)], dtype=np.int64)
        p_mask[ids == tokenizer.cls_token_id] = 0
        feed = {name: torch.tensor([encoded[name][span]]) for name in input_names}
        with torch.no_grad():
            out = model(**feed)
        starts, ends, scores, min_null_score = select_starts_ends(
            out.start_logits.numpy(), out.end_logits.numpy(), p_mask[None],
            np.array(encoded["attention_mask"][span])[None], min_null_score, top_k,
            handle_impossible_answer, max_answer_len)
        enc = encoded.encodings[span]
        for s, e, score in zip(starts, ends, scores, strict=True):
            first = enc.word_to_chars(enc.token_to_word(s), sequence_index=1)[0]
            last = enc.word_to_chars(enc.token_to_word(e), sequence_index=1)[1]
            answers.append({"score": float(score), "start": first, "end": last,
                            "answer": context[first:last]})
    if handle_impossible_answer:
        answers.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
    return sorted(answers, key=lambda a: a["score"], reverse=True)[:top_k]


@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert"])
def test_engine_answers_equal_the_transformers_pipeline(
    tiny_bundle_factory: Callable[..., Path], tiny_model_factory: Callable[..., Path],
    model_type: str,
) -> None:
    import transformers

    bundle = tiny_bundle_factory(model_type, "question-answering", "none")
    engine = Engine.from_bundle(bundle)
    source = tiny_model_factory(model_type, "question-answering")
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(
        source, attn_implementation="eager").eval()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(source / "tokenizer.json"), model_max_length=engine.max_length,
        cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]")
    long_windows = engine.windows.windows("what was great ?", LONG_CONTEXT, 128)
    assert len(long_windows) >= 3  # the long context needs stride windows
    for question, context in QUESTIONS:
        expected = pipeline_answers(model, tokenizer, engine.input_names, question, context)
        got = engine.answer(question, context)
        assert [(a["answer"], a["start"], a["end"]) for a in got] == [
            (a["answer"], a["start"], a["end"]) for a in expected], question
        assert got[0]["score"] == pytest.approx(expected[0]["score"], rel=1e-4)
    # several answers from one window (no duplicates possible there), and the null answer
    expected = pipeline_answers(model, tokenizer, engine.input_names, "what was good ?",
                                CONTEXT, top_k=3, max_answer_len=5,
                                handle_impossible_answer=True)
    got = engine.answer("what was good ?", CONTEXT, top_k=3, max_answer_len=5,
                        handle_impossible_answer=True)
    assert [(a["answer"], a["start"], a["end"]) for a in got] == [
        (a["answer"], a["start"], a["end"]) for a in expected]
    assert [a["score"] for a in got] == pytest.approx([a["score"] for a in expected], rel=1e-4)


def test_engine_refuses_what_it_cannot_answer(
    tiny_bundle_factory: Callable[..., Path],
) -> None:
    engine = Engine.from_bundle(tiny_bundle_factory("bert", "question-answering", "none"))
    with pytest.raises(TaskMismatchError, match="answer"):
        engine.predict(["a single text"])
    with pytest.raises(UsageError, match="empty"):
        engine.answer("what ?", "   ")
    with pytest.raises(UsageError, match="top_k"):
        engine.answer("what ?", CONTEXT, top_k=0)
    with pytest.raises(QuestionTooLongError, match="no room"):
        engine.answer(" ".join(["film"] * engine.max_length), CONTEXT)
    classifier = Engine.from_bundle(tiny_bundle_factory("bert", "text-classification", "none"))
    with pytest.raises(TaskMismatchError, match="not extractive question answering"):
        classifier.answer("what ?", CONTEXT)


def test_long_context_overlap_is_capped_so_windows_advance(
    tiny_bundle_factory: Callable[..., Path],
) -> None:
    engine = Engine.from_bundle(tiny_bundle_factory("bert", "question-answering", "none"))
    question = " ".join(["film"] * (engine.max_length - 8))  # leaves 5 context tokens
    assert engine.windows.stride_for(question, 128) == 4
    windows = engine.windows.windows(question, LONG_CONTEXT, 128)
    starts = [w.offsets[w.sequence_ids.index(1)][0] for w in windows]
    assert starts == sorted(set(starts)) and len(windows) > 10
    assert engine.answer(question, LONG_CONTEXT)[0]["answer"]


def _cli(*args: str, stdin: str | None = None) -> Any:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "onnxguard", *args], capture_output=True,
                          text=True, input=stdin, timeout=120)


def test_predict_cli_answers_questions(tiny_bundle_factory: Callable[..., Path]) -> None:
    import json

    bundle = tiny_bundle_factory("bert", "question-answering", "none")
    engine = Engine.from_bundle(bundle)
    one = _cli("predict", str(bundle), "--question", "what was good ?", "--context", CONTEXT,
               "--top-k", "2")
    assert one.returncode == 0, one.stderr
    line = json.loads(one.stdout)
    assert line["question"] == "what was good ?"
    assert line["answers"] == engine.answer("what was good ?", CONTEXT, top_k=2)
    stdin = "".join(json.dumps({"question": q, "context": c}) + "\n" for q, c in QUESTIONS[3:])
    piped = _cli("predict", str(bundle), stdin=stdin)
    assert piped.returncode == 0, piped.stderr
    assert [json.loads(x)["answers"] for x in piped.stdout.splitlines()] == [
        engine.answer(q, c) for q, c in QUESTIONS[3:]]
    for args, stdin, words in [
        (("some text",), None, "not TEXT arguments"),
        (("--question", "what ?"), None, "--question and --context go together"),
        ((), '{"text": "x"}\n', 'line 1 is not a JSON object with "question"'),
    ]:
        bad = _cli("predict", str(bundle), *args, stdin=stdin)
        assert bad.returncode == 2 and words in bad.stderr and "Traceback" not in bad.stderr
    classifier = tiny_bundle_factory("bert", "text-classification", "none")
    wrong = _cli("predict", str(classifier), "--question", "what ?", "--context", CONTEXT)
    assert wrong.returncode == 2 and "needs a question-answering bundle" in wrong.stderr
