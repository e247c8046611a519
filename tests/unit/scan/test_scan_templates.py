"""Chat-template injection (CVE-2024-34359 family): every carrier, every obfuscation, and the
real templates of Llama/Mistral/Qwen/Gemma-style tokenizer configs passing untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onnxguard.scan import Severity, scan_path
from onnxguard.scan._context import ScanConfig, Sink
from onnxguard.scan.templates import check_template
from unit.scan import format_samples as fs
from unit.scan._helpers import finding, rules_of
from unit.scan.chat_templates import BENIGN, injections


def _check(template: str) -> Sink:
    sink = Sink(ScanConfig())
    check_template(template, sink, "tokenizer_config.json", "key chat_template")
    return sink


@pytest.mark.parametrize("name", sorted(BENIGN))
def test_real_chat_templates_pass(name: str) -> None:
    sink = _check(BENIGN[name])
    assert sink.findings == [], [f.message for f in sink.findings]


@pytest.mark.parametrize("technique", sorted(injections()))
def test_template_injection_technique_is_reported(technique: str) -> None:
    template, rule = injections()[technique]
    found = {f.rule_id for f in _check(template).findings}
    assert rule in found, (technique, found)


def test_injection_findings_point_at_the_line(tmp_path: Path) -> None:
    template = "{% for m in messages %}{{ m.content }}\n{% endfor %}\n{{ cycler.__init__ }}"
    sink = _check(template)
    assert {f.location for f in sink.findings} == {"key chat_template, line 3"}


def test_unparseable_template_is_high() -> None:
    sink = _check("{% for m in messages %}{{ m.content }")
    assert [f.rule_id for f in sink.findings] == ["TPL003"]
    assert sink.findings[0].severity is Severity.HIGH


def test_tokenizer_config_chat_template_string(tmp_path: Path) -> None:
    fs.make_template_tokenizer_config(tmp_path / "m")
    hit = finding(scan_path(tmp_path / "m"), "TPL001")
    assert hit.severity is Severity.CRITICAL and hit.file == "tokenizer_config.json"
    assert hit.location.startswith("key chat_template, line 1")


def test_tokenizer_config_named_template_list(tmp_path: Path) -> None:
    fs.make_template_named_list(tmp_path / "m")
    report = scan_path(tmp_path / "m")
    locations = {f.location.split(",")[0] for f in report.findings}
    assert locations == {"key chat_template[tool_use]"}  # the benign "default" entry is clean


def test_standalone_jinja_file(tmp_path: Path) -> None:
    fs.make_template_jinja_file(tmp_path / "m")
    report = scan_path(tmp_path / "m")
    assert report.kind_of("chat_template.jinja") == "jinja"
    assert "TPL001" in rules_of(report)


def test_yaml_config_template(tmp_path: Path) -> None:
    fs.make_template_yaml(tmp_path / "m")
    report = scan_path(tmp_path / "m")
    assert report.kind_of("config.yaml") == "yaml"
    assert finding(report, "TPL001").location.startswith("key model.chat_template")


def test_gguf_metadata_template(tmp_path: Path) -> None:
    fs.make_template_gguf(tmp_path / "m")
    report = scan_path(tmp_path / "m")
    assert report.kind_of("model.gguf") == "gguf"
    assert finding(report, "TPL001").location.startswith("metadata tokenizer.chat_template")


def test_clean_tokenizer_config_and_gguf_pass(tmp_path: Path) -> None:
    fs.make_clean_tokenizer_config(tmp_path / "m")
    fs.make_clean_gguf(tmp_path / "m")
    report = scan_path(tmp_path / "m")
    assert report.findings == () and report.unscanned == ()


def test_truncated_gguf_is_unscanned(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    data = fs.gguf_bytes({"tokenizer.chat_template": "{{ messages }}"})
    (d / "model.gguf").write_bytes(data[:-5])
    report = scan_path(d)
    assert report.unscanned and "GGUF header" in report.unscanned[0].reason


def test_bert_and_roberta_tokenizer_configs_pass(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    bert = {
        "do_lower_case": True,
        "model_max_length": 512,
        "tokenizer_class": "BertTokenizer",
        "added_tokens_decoder": {"0": {"content": "[PAD]", "special": True}},
    }
    roberta = {"model_max_length": 512, "tokenizer_class": "RobertaTokenizer", "errors": "replace"}
    (d / "tokenizer_config.json").write_text(json.dumps(bert))
    (d / "roberta_tokenizer_config.json").write_text(json.dumps(roberta))
    report = scan_path(d)
    assert report.findings == () and report.unscanned == ()


def test_yaml_alias_bomb_is_walked_once(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    lines.append("chat_template: '{{ cycler.__init__ }}'")
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.yaml").write_text("\n".join(lines) + "\n")
    report = scan_path(d)  # 10**9 paths through the aliases; each list is visited once
    assert "TPL001" in rules_of(report)


def test_loop_helpers_and_filter_chains_pass() -> None:
    template = (
        "{% for m in messages %}{{ loop.cycle('odd', 'even') }}{{ loop.changed(m.role) }}"
        "{{ m.content | selectattr('type', 'equalto', 'text') | map(attribute='text') | join }}"
        "{% if m.content is iterable and m.content is not string %}{{ m.content | length }}"
        "{% endif %}{{ (m.tool_calls or []) | map(attribute='function') | list | tojson }}"
        "{% endfor %}"
    )
    assert _check(template).findings == []
