#!/usr/bin/env bash
# Sets up, builds and runs the main job on a model (a batch of long documents):
#   bash scripts/quickstart.sh [MODEL.gguf]
# Default model: ../shared/models/stories260K-f32.gguf (a tiny real story model).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-../shared/models/stories260K-f32.gguf}"
if [ ! -e "$MODEL" ]; then
  echo "quickstart: model '$MODEL' not found; pass a GGUF path: bash scripts/quickstart.sh MODEL.gguf" >&2
  exit 2
fi
bash scripts/setup.sh
bash scripts/build.sh
./build/release/client/cli/mesa info "$MODEL"
echo
./build/release/client/cli/mesa generate --model "$MODEL" --prompt "Once upon a time" -n 64
echo
# A batch of long documents (2k-8k tokens, far past the model's trained length) through
# `mesa run` with Mesa-Extrapolation, one result line per document.
OUT_DIR=build/quickstart
mkdir -p "$OUT_DIR"
python3 scripts/make_sample_jobs.py --out "$OUT_DIR/jobs.jsonl"
rm -f "$OUT_DIR/results.jsonl"
./build/release/client/cli/mesa run --model "$MODEL" --input "$OUT_DIR/jobs.jsonl" \
  --output "$OUT_DIR/results.jsonl" --task summarize --max-tokens 64
echo
echo "quickstart: results (one JSON line per document) are in $OUT_DIR/results.jsonl"
