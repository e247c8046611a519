#!/usr/bin/env bash
# Regenerate docs/BENCHMARKS.md on this machine, in one command:
#   1. the bundle `onnxguard build` ships for minilm-sst2 (built with --validation-data SST-2 dev,
#      so its accuracy gate is the 0.5-point drop), batch 1 and 8, padded to 128 and real text;
#   2. the bundle it ships for the default embedding model (all-MiniLM-L6-v2) on the same sentences;
#   3. minilm-sst2 from its directory: every graph the build's stages make, int8 candidates apart.
# Each run takes minutes (the whole script ~15-25 min on 2 cores, more when the machine is busy).
# Environment: SHARED (default ../shared), THREADS (default 2), OUT (default docs/BENCHMARKS.md),
# BENCH_OUT (where JSON and HTML reports are kept; default a temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
THREADS=${THREADS:-2}
OUT=${OUT:-docs/BENCHMARKS.md}
if [[ -n "${BENCH_OUT:-}" ]]; then
  mkdir -p "$BENCH_OUT"
  work=$BENCH_OUT
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi
if [[ -f .venv/bin/activate ]]; then
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
MODEL=$SHARED/models/minilm-sst2
DATA=$SHARED/data/sst2/dev.tsv

run() {  # name, then the bench arguments
  local name=$1; shift
  echo "== $name: onnxguard bench $*" >&2
  onnxguard bench "$@" --threads "$THREADS" --profile \
    --report "$work/$name.json" --report "$work/$name.md" --report "$work/$name.html"
}

echo "== onnxguard build $MODEL --validation-data $DATA (the bundle a build ships)" >&2
onnxguard build "$MODEL" -o "$work/sst2-bundle" --force --keep-fp32 --validation-data "$DATA" \
  > "$work/sst2-bundle.build.txt"
run sst2-bundle "$work/sst2-bundle" --data "$DATA"
echo "== onnxguard build (the default embedding model's bundle)" >&2
onnxguard build -o "$work/embedding-bundle" --force --keep-fp32 > "$work/embedding-bundle.build.txt"
run default-embedding-bundle "$work/embedding-bundle" --data "$DATA"
run sst2-candidates "$MODEL" --data "$DATA" --batch 8

python - "$OUT" "$work/sst2-bundle.json" "$work/default-embedding-bundle.json" \
  "$work/sst2-candidates.json" <<'PY'
import json
import sys
from pathlib import Path

from onnxguard.bench import report

out, *paths = sys.argv[1:]
runs = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
intro = """
What you get from `onnxguard build` on this machine, measured with `onnxguard bench` against
PyTorch: the bundle built from `minilm-sst2` (BertForSequenceClassification, 6 layers, hidden
384, fine-tuned on SST-2) with `--validation-data` SST-2 dev, on the 872 SST-2 dev sentences,
and the bundle of the default embedding model (sentence-transformers/all-MiniLM-L6-v2, mean
pooling + normalisation) on the same sentences. Each section's headline table holds PyTorch,
the fp32 graph (`--keep-fp32`) and exactly the graph the bundle ships; the build's own figures
on texts that did not choose its candidate are in the bundle's manifest
(`onnxguard inspect BUNDLE --json`, stages.quantization). Each model section is one run: every
ratio in it was measured in the same interleaved rounds. The last section builds every graph
from the model directory with the build's stages and shows the int8 candidates apart (not
gated: a build may ship another).
Where a target is missed, the notes under that run's Targets give the roofline and profiler
figures that explain why.
"""
report.write_text(Path(out), report.render_document(runs, "scripts/regen_benchmarks.sh", intro))
print(f"wrote {out}", file=sys.stderr)
PY
if [[ -n "${BENCH_OUT:-}" ]]; then
  echo "JSON, Markdown and HTML reports: $work" >&2
fi
