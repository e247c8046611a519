"""Declarative registry: which architectures and tasks onnxguard builds, and how.

Adding an architecture is one ``ArchitectureSpec`` line here plus a tiny-model test
(``tests/unit/test_tasks.py`` fails if a registered architecture has none).  Everything that
differs between architectures (inputs, config field names, optimizer model type) lives here,
never as ``if model_type == ...`` branches in the stages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from onnxguard.errors import PromptConfigError, TaskMismatchError, UnsupportedModelError


class Task(StrEnum):
    TEXT_CLASSIFICATION = "text-classification"
    FEATURE_EXTRACTION = "feature-extraction"
    TOKEN_CLASSIFICATION = "token-classification"  # noqa: S105 (not a password)
    RERANKING = "reranking"
    """A cross-encoder: a sequence-classification head fed (query, document) pairs."""
    QUESTION_ANSWERING = "question-answering"
    """Extractive: start/end logits over (question, context) tokens; the answer is a span."""

    @property
    def output_name(self) -> str:
        return self.output_names[0]

    @property
    def output_names(self) -> tuple[str, ...]:
        """The graph's outputs, in order (question answering has two)."""
        if self is Task.FEATURE_EXTRACTION:
            return ("sentence_embedding",)
        if self is Task.QUESTION_ANSWERING:
            return ("start_logits", "end_logits")
        return ("logits",)

    @property
    def per_token(self) -> bool:
        """Whether the output has a row per token (not one per sequence)."""
        return self in (Task.TOKEN_CLASSIFICATION, Task.QUESTION_ANSWERING)


class Pooling(StrEnum):
    MEAN = "mean"
    CLS = "cls"
    MAX = "max"


@dataclass(frozen=True)
class ArchitectureSpec:
    """How one ``model_type`` is exported and optimized."""

    model_type: str
    token_type_ids: bool
    """Whether the model takes token_type_ids (from the tokenizer's type ids)."""
    optimizer_model_type: str = "bert"
    """``model_type`` for onnxruntime.transformers.optimizer (its fusion patterns)."""
    heads_field: str = "num_attention_heads"
    hidden_field: str = "hidden_size"
    position_offset: int = 0
    """Positions reserved before the first token (RoBERTa-style padding_idx offset)."""

    def uses_token_type_ids(self, config: dict[str, Any]) -> bool:
        # DeBERTa-v2 only embeds token types when type_vocab_size > 0.
        if self.model_type == "deberta-v2":
            return int(config.get("type_vocab_size", 0)) > 0
        return self.token_type_ids

    def num_heads(self, config: dict[str, Any]) -> int:
        return int(config[self.heads_field])

    def hidden_size(self, config: dict[str, Any]) -> int:
        return int(config[self.hidden_field])


ARCHITECTURES: dict[str, ArchitectureSpec] = {
    spec.model_type: spec
    for spec in (
        ArchitectureSpec("bert", token_type_ids=True),
        ArchitectureSpec(
            "distilbert", token_type_ids=False, heads_field="n_heads", hidden_field="dim"
        ),
        ArchitectureSpec("roberta", token_type_ids=False, position_offset=2),
        ArchitectureSpec("xlm-roberta", token_type_ids=False, position_offset=2),
        ArchitectureSpec("albert", token_type_ids=True),
        ArchitectureSpec("electra", token_type_ids=True),
        ArchitectureSpec("mpnet", token_type_ids=False, position_offset=2),
        ArchitectureSpec("deberta-v2", token_type_ids=False),
    )
}

TASKS: tuple[Task, ...] = tuple(Task)


def architecture_for(config: dict[str, Any]) -> ArchitectureSpec:
    """The registry entry for a config, or an error that lists what is supported."""
    model_type = str(config.get("model_type", ""))
    spec = ARCHITECTURES.get(model_type)
    if spec is None:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise UnsupportedModelError(
            f"architecture {model_type or '(config.json has no model_type)'!r} is not supported",
            hint=f"supported model types: {supported}",
            model_type=model_type,
        )
    return spec


def parse_task(name: str) -> Task:
    try:
        return Task(name)
    except ValueError:
        raise TaskMismatchError(
            f"unknown task {name!r}",
            hint=f"choose one of: {', '.join(t.value for t in Task)}",
        ) from None


def detect_task(model_dir: Path, config: dict[str, Any]) -> Task:
    """Task from sentence-transformers files, then the config's ``architectures``.

    Unlike optimum, this works for local and offline models: it needs no Hub metadata.
    Reranking is detected only from sentence-transformers' CrossEncoder marks (see
    ``is_cross_encoder``): a plain 1-label classifier may be a regressor, not a reranker.
    """
    if is_cross_encoder(model_dir, config):
        return Task.RERANKING
    if _sentence_transformers_modules(model_dir):
        return Task.FEATURE_EXTRACTION
    for arch in config.get("architectures") or ():
        if arch.endswith("ForSequenceClassification"):
            return Task.TEXT_CLASSIFICATION
        if arch.endswith("ForTokenClassification"):
            return Task.TOKEN_CLASSIFICATION
        if arch.endswith("ForQuestionAnswering"):
            return Task.QUESTION_ANSWERING
    return Task.FEATURE_EXTRACTION


_HEADS = {
    Task.TEXT_CLASSIFICATION: "ForSequenceClassification",
    Task.TOKEN_CLASSIFICATION: "ForTokenClassification",
    Task.RERANKING: "ForSequenceClassification",
    Task.QUESTION_ANSWERING: "ForQuestionAnswering",
}


def is_cross_encoder(model_dir: Path, config: dict[str, Any]) -> bool:
    """Whether sentence-transformers saved this model as a CrossEncoder.

    The rule is conservative: a *ForSequenceClassification head and one of the marks a
    CrossEncoder save writes (``sentence_transformers`` or ``sbert_ce_default_activation_function``
    in config.json, or ``config_sentence_transformers.json`` with ``model_type: CrossEncoder``).
    Any other classifier stays text-classification unless ``--task reranking`` is passed.
    """
    architectures = [str(a) for a in config.get("architectures") or ()]
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        return False
    if "sbert_ce_default_activation_function" in config:
        return True
    if isinstance(config.get("sentence_transformers"), dict):
        return True
    st_config = model_dir / "config_sentence_transformers.json"
    if st_config.is_file():
        data = _read_json(st_config)
        return isinstance(data, dict) and data.get("model_type") == "CrossEncoder"
    return False


def resolve_task(model_dir: Path, config: dict[str, Any], requested: str | None) -> Task:
    """The detected task, or ``requested`` once ``config.json`` shows the model has its head.

    Checked before export: a classification task on a model without that head would export a
    randomly initialised head (or fail deep in the exporter), which no later check explains.
    Feature extraction works on every supported model (the encoder's hidden states).
    """
    detected = detect_task(model_dir, config)
    if requested is None:
        return detected
    task = parse_task(requested)
    suffix = _HEADS.get(task)
    if suffix is None:
        return task
    architectures = [str(a) for a in config.get("architectures") or ()]
    if any(a.endswith(suffix) for a in architectures):
        return task
    if not architectures and config.get("id2label") and task is not Task.QUESTION_ANSWERING:
        return task  # an old config without `architectures`: its labels show a classifier head
    has = ", ".join(architectures) or "no `architectures` entry"
    raise TaskMismatchError(
        f"--task {task.value} needs a model with a *{suffix} head, but config.json of "
        f"{model_dir.name} declares {has}",
        hint=f"this model is detected as {detected.value}: pass --task {detected.value} (or "
        "leave --task out), or build a checkpoint fine-tuned for the task",
        requested=task.value, detected=detected.value, architectures=architectures,
    )


@dataclass(frozen=True)
class PoolingSpec:
    mode: Pooling
    normalize: bool
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode.value, "normalize": self.normalize, "source": self.source}

    @classmethod
    def from_dict(cls, data: Any) -> PoolingSpec:
        """From a manifest; KeyError/TypeError/ValueError when it is malformed."""
        return cls(Pooling(data["mode"]), bool(data["normalize"]),
                   str(data.get("source", "manifest")))


def detect_pooling(model_dir: Path) -> PoolingSpec:
    """The model's own pooling (sentence-transformers 1_Pooling + Normalize), else mean."""
    modules = _sentence_transformers_modules(model_dir)
    if not modules:
        return PoolingSpec(Pooling.MEAN, normalize=False, source="default (no pooling config)")
    normalize = any(str(m.get("type", "")).endswith(".Normalize") for m in modules)
    pooling_dirs = [m for m in modules if str(m.get("type", "")).endswith(".Pooling")]
    if not pooling_dirs:
        return PoolingSpec(Pooling.MEAN, normalize=normalize, source="modules.json (no Pooling)")
    cfg_path = model_dir / str(pooling_dirs[0].get("path", "")) / "config.json"
    cfg = _read_json(cfg_path)
    modes = [
        mode
        for key, mode in (
            ("pooling_mode_mean_tokens", Pooling.MEAN),
            ("pooling_mode_cls_token", Pooling.CLS),
            ("pooling_mode_max_tokens", Pooling.MAX),
        )
        if cfg.get(key)
    ]
    unsupported = [
        k for k, v in cfg.items() if k.startswith("pooling_mode_") and v and
        k not in ("pooling_mode_mean_tokens", "pooling_mode_cls_token", "pooling_mode_max_tokens")
    ]
    if unsupported or len(modes) != 1:
        raise UnsupportedModelError(
            f"pooling configuration in {cfg_path} is not supported: "
            f"{', '.join(unsupported) or 'none or several modes set'}",
            hint="onnxguard supports exactly one of mean, cls or max pooling",
        )
    return PoolingSpec(modes[0], normalize=normalize, source=str(cfg_path.relative_to(model_dir)))


ST_CONFIG_NAME = "config_sentence_transformers.json"
MAX_PROMPTS = 64
MAX_PROMPT_NAME_CHARS = 128
MAX_PROMPT_CHARS = 4096
"""Bounds on what a model file may ask the server to prefix to every text (real prompts are a
few words; instruction-style ones a sentence or two)."""


@dataclass(frozen=True)
class PromptSpec:
    """sentence-transformers prompts: a name → the text prefixed to each input.

    ``default`` is applied when no prompt is named, as ``SentenceTransformer.encode`` does.
    """

    prompts: dict[str, str]
    default: str | None = None
    source: str = ST_CONFIG_NAME

    def to_dict(self) -> dict[str, Any]:
        return {"prompts": dict(self.prompts), "default_prompt_name": self.default,
                "source": self.source}

    @classmethod
    def from_dict(cls, data: Any) -> PromptSpec:
        """From a manifest; KeyError/TypeError/ValueError when it is malformed."""
        if not isinstance(data, dict):
            raise TypeError("prompts must be an object")
        prompts, default = data["prompts"], data.get("default_prompt_name")
        try:
            check_prompts(prompts, default, "the manifest")
        except PromptConfigError as exc:
            raise ValueError(exc.message) from exc
        return cls(dict(prompts), default, str(data.get("source", "manifest")))


def check_prompts(prompts: Any, default: Any, where: str) -> None:
    """Strict shape: a bounded dict of non-empty names to strings; the default one of them.

    Raises PromptConfigError (a ValueError is not enough: the fix names the file).
    """
    fix = (f"fix `prompts` in {where}: an object of prompt names to the text put before each "
           f"input, e.g. {{\"query\": \"query: \"}}, with `default_prompt_name` null or one "
           "of its names")
    if not isinstance(prompts, dict):
        raise PromptConfigError(f"{where}: `prompts` is {type(prompts).__name__}, not an object",
                                hint=fix)
    if len(prompts) > MAX_PROMPTS:
        raise PromptConfigError(f"{where}: {len(prompts)} prompts (at most {MAX_PROMPTS})",
                                hint=fix)
    for name, text in prompts.items():
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_PROMPT_NAME_CHARS:
            raise PromptConfigError(
                f"{where}: prompt name {str(name)[:40]!r} must be non-empty text of at most "
                f"{MAX_PROMPT_NAME_CHARS} characters", hint=fix)
        if not isinstance(text, str) or len(text) > MAX_PROMPT_CHARS:
            raise PromptConfigError(
                f"{where}: prompt {name!r} must be text of at most {MAX_PROMPT_CHARS} "
                "characters", hint=fix)
    if default is not None and (not isinstance(default, str) or default not in prompts):
        known = ", ".join(sorted(prompts)) or "none"
        raise PromptConfigError(
            f"{where}: `default_prompt_name` {str(default)[:40]!r} is not one of the prompts "
            f"({known})", hint=fix)


def detect_prompts(model_dir: Path) -> PromptSpec | None:
    """The prompts of ``config_sentence_transformers.json``; None when it defines none.

    Prompts are prefixed to the text, so their tokens are pooled with it; a Pooling module with
    ``include_prompt: false`` pools without them, which the exported graph cannot do, so such a
    model is refused rather than embedded differently.
    """
    path = model_dir / ST_CONFIG_NAME
    if not path.is_file():
        return None
    data = _read_json(path)
    if not isinstance(data, dict):
        raise PromptConfigError(f"{ST_CONFIG_NAME} is not a JSON object",
                                hint=f"fix or remove {ST_CONFIG_NAME}")
    prompts, default = data.get("prompts"), data.get("default_prompt_name")
    if prompts is None and default is None:
        return None
    check_prompts({} if prompts is None else prompts, default, ST_CONFIG_NAME)
    if not prompts:
        return None
    if any(prompts.values()) and _pooling_config(model_dir).get("include_prompt") is False:
        raise PromptConfigError(
            f"the Pooling module of {model_dir.name} excludes prompt tokens "
            "(include_prompt: false); onnxguard pools every token of the prefixed text",
            hint="build a model whose pooling includes the prompt, or remove `prompts` from "
            f"{ST_CONFIG_NAME} and prefix texts yourself",
        )
    return PromptSpec(dict(prompts), default, ST_CONFIG_NAME)


def _pooling_config(model_dir: Path) -> dict[str, Any]:
    modules = [m for m in _sentence_transformers_modules(model_dir)
               if str(m.get("type", "")).endswith(".Pooling")]
    if not modules:
        return {}
    path = model_dir / str(modules[0].get("path", "")) / "config.json"
    data = _read_json(path) if path.is_file() else {}
    return data if isinstance(data, dict) else {}


def _sentence_transformers_modules(model_dir: Path) -> list[dict[str, Any]]:
    path = model_dir / "modules.json"
    if not path.is_file():
        return []
    data = _read_json(path)
    return [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnsupportedModelError(
            f"cannot read {path}: {exc}", hint="the file must be valid UTF-8 JSON"
        ) from exc
