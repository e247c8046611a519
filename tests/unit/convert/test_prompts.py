"""sentence-transformers prompts at build time: read strictly from the model's files, recorded in
the manifest, and old manifests without them still load with the same digest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from onnxguard.bundle import Manifest
from onnxguard.errors import PromptConfigError
from onnxguard.scan import scan_path
from onnxguard.tasks import MAX_PROMPT_CHARS, ST_CONFIG_NAME, PromptSpec, detect_prompts


def _model(tmp_path: Path, st_config: Any, include_prompt: bool | None = None) -> Path:
    (tmp_path / ST_CONFIG_NAME).write_text(
        st_config if isinstance(st_config, str) else json.dumps(st_config))
    if include_prompt is not None:
        (tmp_path / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling",
             "type": "sentence_transformers.models.Pooling"}]))
        (tmp_path / "1_Pooling").mkdir()
        (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
            {"pooling_mode_mean_tokens": True, "include_prompt": include_prompt}))
    return tmp_path


def test_prompts_are_read_with_their_default(tmp_path: Path) -> None:
    spec = detect_prompts(_model(tmp_path, {
        "prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": "query",
        "similarity_fn_name": "cosine"}))
    assert spec == PromptSpec({"query": "query: ", "passage": "passage: "}, "query",
                              ST_CONFIG_NAME)


@pytest.mark.parametrize("st_config", [
    {"similarity_fn_name": "cosine"},
    {"prompts": {}, "default_prompt_name": None},
    {"prompts": None},
])
def test_no_prompts_is_none(tmp_path: Path, st_config: dict[str, Any]) -> None:
    assert detect_prompts(_model(tmp_path, st_config)) is None


def test_no_file_is_none(tmp_path: Path) -> None:
    assert detect_prompts(tmp_path) is None


@pytest.mark.parametrize(("st_config", "says"), [
    ({"prompts": ["query: "]}, "not an object"),
    ({"prompts": {"query": 3}}, "prompt 'query' must be text"),
    ({"prompts": {"": "x: "}}, "prompt name ''"),
    ({"prompts": {"query": "q" * (MAX_PROMPT_CHARS + 1)}}, f"at most {MAX_PROMPT_CHARS}"),
    ({"prompts": {f"p{i}": "" for i in range(65)}}, "65 prompts"),
    ({"prompts": {"query": "query: "}, "default_prompt_name": "passage"},
     "`default_prompt_name` 'passage' is not one of the prompts (query)"),
    ({"default_prompt_name": "query"}, "is not one of the prompts (none)"),
    ("[1, 2]", "not a JSON object"),
    ("{not json", "cannot read"),
])
def test_malformed_prompts_name_the_file_and_the_fix(tmp_path: Path, st_config: Any,
                                                      says: str) -> None:
    from onnxguard.errors import SourceError

    with pytest.raises(SourceError) as info:
        detect_prompts(_model(tmp_path, st_config))
    assert says in info.value.message
    assert ST_CONFIG_NAME in info.value.message + str(info.value.hint)


def test_pooling_without_the_prompt_is_refused(tmp_path: Path) -> None:
    """include_prompt: false pools without the prompt tokens; the graph cannot, so no build."""
    model = _model(tmp_path, {"prompts": {"query": "query: "}}, include_prompt=False)
    with pytest.raises(PromptConfigError, match="include_prompt: false"):
        detect_prompts(model)


def test_pooling_with_the_prompt_is_accepted(tmp_path: Path) -> None:
    model = _model(tmp_path, {"prompts": {"query": "query: "}}, include_prompt=True)
    assert detect_prompts(model) is not None


def _manifest_dict(**extra: Any) -> dict[str, Any]:
    return {"format": "onnxguard-bundle/1", "name": "m", "task": "feature-extraction",
            "inputs": ["input_ids"], "outputs": ["sentence_embedding"], "max_length": 8,
            "model": {"file": "model.onnx"}, "files": {}} | extra


def test_manifest_round_trip_and_old_manifests() -> None:
    spec = {"prompts": {"query": "query: "}, "default_prompt_name": None,
            "source": ST_CONFIG_NAME}
    manifest = Manifest.from_dict(_manifest_dict(prompts=spec))
    assert manifest.prompts == PromptSpec({"query": "query: "}, None, ST_CONFIG_NAME)
    assert Manifest.from_dict(manifest.to_dict()) == manifest
    old = _manifest_dict()
    loaded = Manifest.from_dict(old)
    assert loaded.prompts is None
    assert "prompts" not in loaded.to_dict()  # its digest (bound to signatures) is unchanged


def test_manifest_with_malformed_prompts_is_a_bundle_error() -> None:
    from onnxguard.errors import BundleError

    with pytest.raises(BundleError, match="malformed"):
        Manifest.from_dict(_manifest_dict(prompts={"prompts": {"q": 1}}))


def test_the_scanner_covers_the_prompts_file(tmp_path: Path) -> None:
    """The file is a model file like any other: scanned (as JSON) before the build reads it."""
    model = _model(tmp_path, {"prompts": {"query": "query: "},
                              "chat_template": "{{ ''.__class__.__mro__ }}"})
    report = scan_path(model)
    assert [(f.file, f.kind) for f in report.files] == [(ST_CONFIG_NAME, "json")]
    assert any(f.file == ST_CONFIG_NAME for f in report.findings)
