#!/usr/bin/env bash
# Sets up, builds and runs the main job on a model:
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
