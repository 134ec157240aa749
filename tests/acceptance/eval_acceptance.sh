#!/usr/bin/env bash
# Acceptance test of the method itself (ctest label "acceptance", in the default run;
# alone: `ctest --preset release -L acceptance`): on a real model trained on 512 tokens, perplexity
# at 4096 tokens must blow up with plain attention and stay near its 512-token value
# with Mesa-Extrapolation (the paper's claim, MESA_SPEC section 6).
#   eval_acceptance.sh MESA_BINARY SHARED_DIR
set -euo pipefail
MESA="$1"
SHARED="$2"
MODEL="$SHARED/models/stories260K-f32.gguf"
TEXT="$SHARED/text/tinystories_valid_part1.txt"
if [ ! -f "$MODEL" ] || [ ! -f "$TEXT" ]; then
  echo "SKIP: $MODEL or $TEXT not found (the shared data is not beside the checkout)"
  exit 77
fi
OUT=$("$MESA" eval ppl --model "$MODEL" --text "$TEXT" --lengths 512,4096 \
        --attention mesa,full --windows 2 --json)
echo "$OUT"
python3 - "$OUT" <<'PY'
import json, sys
pts = {(p["attention"], p["length"]): p["ppl"] for p in json.loads(sys.argv[1])}
full_ratio = pts[("full", 4096)] / pts[("full", 512)]
mesa_ratio = pts[("mesa", 4096)] / pts[("mesa", 512)]
print(f"full: ppl(4096)/ppl(512) = {full_ratio:.2f} (must be > 3)")
print(f"mesa: ppl(4096)/ppl(512) = {mesa_ratio:.2f} (must be < 1.3)")
assert pts[("mesa", 512)] == pts[("full", 512)], "inputs that fit must run the base model exactly"
assert full_ratio > 3, "plain attention did not break past the trained length"
assert mesa_ratio < 1.3, "Mesa-Extrapolation did not keep perplexity flat"
PY
