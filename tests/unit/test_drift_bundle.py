"""The build records a drift reference in the (hashed, signed) manifest; the one manifest reader
returns it typed; the Engine exposes it with the tokenizer's unknown-token id, and a window fed
the build's own texts through the Engine reproduces the reference exactly."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from onnxguard.bundle import MANIFEST_NAME, Manifest, read_manifest
from onnxguard.convert.validate import builtin_sentences
from onnxguard.drift import DriftWindow, Reference
from onnxguard.errors import BundleError
from onnxguard.runtime import Engine, rows_per_text


@pytest.mark.parametrize(("task", "features"), [
    ("text-classification", {"tokens", "unk_rate", "predicted_class", "confidence"}),
    ("feature-extraction", {"tokens", "unk_rate", "projection"}),
])
def test_built_bundle_carries_a_reference_the_engine_reproduces(
    tiny_bundle_factory: Callable[..., Path], task: str, features: set[str]
) -> None:
    bundle = tiny_bundle_factory("bert", task)
    manifest = read_manifest(bundle)
    ref = manifest.drift_reference
    assert isinstance(ref, Reference)
    assert features <= set(ref.features)
    assert ref.texts == len(builtin_sentences())
    raw = json.loads((bundle / MANIFEST_NAME).read_text())["drift_reference"]
    assert Reference.from_dict(raw) == ref
    assert Manifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest
    assert ref.summary().startswith(f"{ref.texts} texts; tokens (")  # onnxguard inspect's line

    engine = Engine.from_bundle(bundle)
    assert engine.drift_reference == ref
    assert engine.unk_id == ref.unk_id == engine.tokenizer.token_to_id("[UNK]")
    texts = builtin_sentences()
    encodings = engine.encode(texts)
    window = DriftWindow(ref, window=len(texts))
    window.observe(encodings, rows_per_text(engine.run_batch, encodings, 32, engine.task))
    assert window.scores() == {name: 0.0 for name in ref.features}


def test_bundle_without_reference_still_loads(
    tiny_bundle_factory: Callable[..., Path], tmp_path: Path
) -> None:
    data = json.loads((tiny_bundle_factory() / MANIFEST_NAME).read_text())
    del data["drift_reference"]
    manifest = Manifest.from_dict(data)
    assert manifest.drift_reference is None
    assert "drift_reference" not in manifest.to_dict()


def test_malformed_reference_refused_by_the_manifest_reader(
    tiny_bundle_factory: Callable[..., Path], tmp_path: Path
) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle_factory(), bundle)
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    data["drift_reference"]["features"]["tokens"]["proportions"] = [1.0]
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="drift_reference is malformed"):
        read_manifest(bundle)
