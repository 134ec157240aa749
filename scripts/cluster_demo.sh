#!/usr/bin/env bash
# A cluster on one machine: a coordinator, two worker processes, a batch of long
# documents submitted and followed with a progress bar, the results fetched, then
# everything stopped (workers drain on SIGTERM). Works from a fresh clone:
#   bash scripts/cluster_demo.sh [MODEL.gguf]
# The same commands run a real cluster: start `mesa worker --coordinator HOST:PORT` on
# every machine instead of on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-../shared/models/stories260K-f32.gguf}"
if [ ! -e "$MODEL" ]; then
  echo "cluster_demo: model '$MODEL' not found; pass a GGUF path" >&2
  exit 2
fi
if [ ! -x build/release/client/cli/mesa ]; then
  bash scripts/setup.sh
  bash scripts/build.sh
fi
MESA=build/release/client/cli/mesa
DIR=build/cluster_demo
rm -rf "$DIR" && mkdir -p "$DIR"
PIDS=()
trap 'kill -TERM "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null' EXIT

# 1. The coordinator: job store in $DIR/store, any free port (written to coordinator.addr).
$MESA coordinator --listen 127.0.0.1:0 --store "$DIR/store" --model "$MODEL" \
  --address-file "$DIR/coordinator.addr" 2>"$DIR/coordinator.log" &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$DIR/coordinator.addr" ] && break; sleep 0.1; done
export MESA_COORDINATOR=$(cat "$DIR/coordinator.addr")
echo "coordinator at $MESA_COORDINATOR"

# 2. Two workers, one thread each (they register and beat on their own).
for name in w1 w2; do
  $MESA worker --model "$MODEL" --threads 1 --name "$name" 2>"$DIR/worker-$name.log" &
  PIDS+=($!)
done

# 3. A batch of long documents (2k-8k tokens), submitted and followed to the end.
python3 scripts/make_sample_jobs.py --out "$DIR/jobs.jsonl" >/dev/null
JOB=$($MESA submit --input "$DIR/jobs.jsonl" --task summarize --max-tokens 64 --json \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["job_id"])')
$MESA wait "$JOB"
$MESA status "$JOB"

# 4. Results in input order (the records of `mesa run`); --format openai for batch lines.
$MESA results "$JOB" --output "$DIR/results.jsonl"
$MESA results "$JOB" --output "$DIR/results.openai.jsonl" --format openai
echo "cluster_demo: results in $DIR/results.jsonl (OpenAI batch lines: $DIR/results.openai.jsonl)"
