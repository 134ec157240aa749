#!/usr/bin/env bash
# The distributed runtime's cost and speedup on one machine, with real processes on
# loopback (`mesa coordinator`, `mesa worker`, `mesa submit/results`) against `mesa run`
# in one process, in alternating rounds (median and every round). Writes
# bench/results/runtime.md (machine, CPU model and ISA, date, commit, load, tables).
#
# 1. Overhead: the sample batch (scripts/make_sample_jobs.py: 5 documents of ~2k-8k
#    tokens) through `mesa run --threads 1 --placement whole` and through a coordinator
#    (--placement whole) + one `mesa worker --threads 1`, for every --model:
#      warm: the coordinator and the worker started once; per round `mesa submit --wait`
#            then `mesa results`, timed from the submit to the results file written;
#      cold: per round a fresh coordinator (new store) and worker started, then the same
#            submit and results (process start, model load and registration included;
#            shutdown is not).
#    Ratio cluster / mesa run (goal <= 1.10), and where the time goes: a split round
#    (submit alone, wait, results) with the coordinator's and worker's CPU seconds
#    (/proc) and the worker's compute (sum of the records' prefill_s + decode_s).
# 2. Scaling (first --model): two worker processes with one thread each against one,
#    on the batch repeated 4x (distinct custom_ids, --placement whole) and on one long
#    document built from ../shared/text (--placement spread); and in one process
#    `mesa run --workers 2 --threads 2` against `--workers 1 --threads 2`.
# 3. K/V moved in the 2-worker spread run: bytes received on the worker-to-worker
#    TCP connections (ss -ti; the final worker's FetchKv channel to the chunk holder),
#    and the coordinator-to-worker task traffic.
#
# Usage: bench/runtime_bench.sh [--rounds K] [--model PATH]... [--quick] [--max-tokens N]
#                               [--long-tokens N] [--batch-repeat R] [--build-dir DIR]
#                               [--out FILE] [--max-load L]
#   --rounds K        alternating rounds per measurement (default 5; --quick: 2)
#   --model PATH      a GGUF model; repeat for several (default: both shared TinyStories
#                     models); the first one is used for the scaling runs
#   --quick           smoke run: 2 rounds, a ~8k-token long document, batch x2, no cold
#                     rounds; the report goes to stdout unless --out is given
#   --max-tokens N    generation budget per document (default 64)
#   --long-tokens N   length of the long document in the first model's tokens (default 24000)
#   --batch-repeat R  copies of the sample batch in the scaling batch (default 4)
#   --max-load L      wait until the 1-minute load average is below L before starting
#                     (default: the core count + 1), at most --load-wait SECONDS
#   --load-wait S     (default 300; --quick: 0)
#   --keep-rows FILE  also append every measurement as a JSON line to FILE
# Environment: MESA_BUILD_DIR (default build/release), MESA_BIN (the mesa binary),
#   MESA_SHARED_DIR (default ../shared).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${MESA_BUILD_DIR:-$ROOT/build/release}"
SHARED="${MESA_SHARED_DIR:-$ROOT/../shared}"
K=5 QUICK=0 MAX_TOKENS=64 LONG_TOKENS=24000 REPEAT=4 COLD=1 LOAD_WAIT=300 LOAD_WAIT_SET=0
MODELS=()
OUT_MD="$ROOT/bench/results/runtime.md"
OUT_SET=0
MAX_LOAD=$(( $(nproc) + 1 ))
K_SET=0 LONG_SET=0 REPEAT_SET=0 KEEP_ROWS=""

say() { echo "runtime_bench: $*" >&2; }
die() { echo "runtime_bench: ERROR: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) K="$2"; K_SET=1; shift 2 ;;
    --model) MODELS+=("$(realpath "$2")"); shift 2 ;;
    --quick) QUICK=1; shift ;;
    --max-tokens) MAX_TOKENS="$2"; shift 2 ;;
    --long-tokens) LONG_TOKENS="$2"; LONG_SET=1; shift 2 ;;
    --batch-repeat) REPEAT="$2"; REPEAT_SET=1; shift 2 ;;
    --build-dir) BUILD_DIR="$2"; shift 2 ;;
    --out) OUT_MD="$2"; OUT_SET=1; shift 2 ;;
    --max-load) MAX_LOAD="$2"; shift 2 ;;
    --load-wait) LOAD_WAIT="$2"; LOAD_WAIT_SET=1; shift 2 ;;
    --keep-rows) KEEP_ROWS="$2"; shift 2 ;;
    -h|--help) sed -n '2,41p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
if [ "$QUICK" = 1 ]; then
  [ "$K_SET" = 1 ] || K=2
  [ "$LONG_SET" = 1 ] || LONG_TOKENS=8000
  [ "$REPEAT_SET" = 1 ] || REPEAT=2
  COLD=0
  [ "$OUT_SET" = 1 ] || OUT_MD=""
  [ "$LOAD_WAIT_SET" = 1 ] || LOAD_WAIT=0
fi
if [ ${#MODELS[@]} = 0 ]; then
  for m in stories260K-f32.gguf tinystories-656k-f32.gguf; do
    [ -f "$SHARED/models/$m" ] && MODELS+=("$(realpath "$SHARED/models/$m")")
  done
fi
[ ${#MODELS[@]} -gt 0 ] || die "no model: pass --model PATH or set MESA_SHARED_DIR"
for m in "${MODELS[@]}"; do [ -f "$m" ] || die "$m not found"; done
MESA="${MESA_BIN:-$BUILD_DIR/client/cli/mesa}"
[ -x "$MESA" ] || die "$MESA not found: ninja -C build/release mesa (or pass --build-dir)"
MESA="$(realpath "$MESA")"
command -v python3 >/dev/null || die "python3 is needed"
command -v ss >/dev/null || say "ss not found (iproute2): K/V bytes will not be measured"
[ -n "${EPOCHREALTIME:-}" ] || die "bash 5 is needed (EPOCHREALTIME)"

TMP="$(mktemp -d)"
PIDS=()
cleanup() {
  local rc=$? p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [ "$rc" = 0 ]; then rm -rf "$TMP"; else say "kept $TMP (logs of every process) for inspection"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- helpers ------------------------------------------------------------------------
now() { echo "$EPOCHREALTIME"; }
sub() { python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.4f}')" "$1" "$2"; }
proc_cpu() {  # PID -> user+system seconds of the whole process (all threads)
  awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0
}
cpu_diff() {  # FILE0 FILE1 (outputs of `times`) -> children's user+system seconds between
  python3 -c '
import re, sys
def children(path):  # the second line of `times`: children user, children system
    line = open(path).read().strip().splitlines()[-1]
    return sum(float(m) * 60 + float(s) for m, s in re.findall(r"(\d+)m([\d.]+)s", line))
print(f"{children(sys.argv[2]) - children(sys.argv[1]):.4f}")' "$1" "$2"
}
load1() { cut -d' ' -f1 /proc/loadavg; }
compute_of() {  # results.jsonl -> "compute_s prefill_s decode_s prompt_tokens generated_tokens ok"
  python3 - "$1" <<'PY'
import json, sys
p = d = 0.0; pt = gt = ok = 0
for line in open(sys.argv[1]):
    if not line.strip():
        continue
    r = json.loads(line)
    t = r.get("timings") or {}
    p += t.get("prefill_s", 0); d += t.get("decode_s", 0)
    pt += r.get("prompt_tokens", 0) or 0; gt += r.get("generated_tokens", 0) or 0
    ok += r.get("status") == "ok"
print(f"{p + d:.4f} {p:.4f} {d:.4f} {pt} {gt} {ok}")
PY
}
same_texts() {  # A B -> "yes" when every custom_id has the same text and token counts
  python3 - "$1" "$2" <<'PY'
import json, sys
def load(p):
    return {r["custom_id"]: (r.get("status"), r.get("text"), r.get("prompt_tokens"), r.get("generated_tokens"))
            for r in (json.loads(l) for l in open(p) if l.strip())}
a, b = load(sys.argv[1]), load(sys.argv[2])
print("yes" if a == b else "NO")
PY
}
record() {  # JSON fields as key=value pairs (numbers or quoted strings) -> rows.jsonl
  python3 - "$@" >>"$TMP/rows.jsonl" <<'PY'
import json, sys
row = {}
for kv in sys.argv[1:]:
    k, v = kv.split("=", 1)
    try:
        row[k] = float(v)
    except ValueError:
        row[k] = v
print(json.dumps(row))
PY
  [ -z "$KEEP_ROWS" ] || tail -n1 "$TMP/rows.jsonl" >>"$KEEP_ROWS"
}

wait_for_file() {  # FILE SECONDS
  local i
  for ((i = 0; i < $2 * 100; i++)); do [ -s "$1" ] && return 0; sleep 0.01; done
  return 1
}
# start_coordinator NAME MODEL PLACEMENT: sets COORD (host:port) and COORD_PID
start_coordinator() {
  local name="$1" model="$2" placement="$3"
  rm -rf "$TMP/$name.store" "$TMP/$name.addr"
  "$MESA" coordinator --listen 127.0.0.1:0 --store "$TMP/$name.store" --model "$model" \
    --placement "$placement" --address-file "$TMP/$name.addr" >>"$TMP/$name.log" 2>&1 &
  COORD_PID=$!
  PIDS+=("$COORD_PID")
  wait_for_file "$TMP/$name.addr" 30 || { tail "$TMP/$name.log" >&2; die "coordinator $name did not start"; }
  COORD="$(cat "$TMP/$name.addr")"
}
# start_worker NAME COORD MODEL: sets WORKER_PID, WORKER_PORT (its serving port, read later)
start_worker() {
  local name="$1" coord="$2" model="$3"
  rm -f "$TMP/$name.addr"
  "$MESA" worker --coordinator "$coord" --model "$model" --threads 1 --name "$name" \
    --address-file "$TMP/$name.addr" >>"$TMP/$name.log" 2>&1 &
  WORKER_PID=$!
  PIDS+=("$WORKER_PID")
}
wait_registered() {  # NAME: until the worker's log says it registered
  local i
  for ((i = 0; i < 3000; i++)); do grep -q "registered with" "$TMP/$1.log" 2>/dev/null && return 0; sleep 0.01; done
  tail "$TMP/$1.log" >&2; die "worker $1 did not register"
}
stop_pids() {  # PID...: SIGTERM (drain) and wait
  local p
  kill -TERM "$@" 2>/dev/null || true
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}
# cluster_job COORD INPUT OUT: submit --wait + results; prints the wall seconds
cluster_job() {
  local t0 t1 job
  t0=$(now)
  job=$("$MESA" submit --coordinator "$1" --input "$2" --max-tokens "$MAX_TOKENS" --wait 2>>"$TMP/client.log") ||
    die "submit --wait failed: $(tail -3 "$TMP/client.log")"
  "$MESA" results --coordinator "$1" "$job" --output "$3" 2>>"$TMP/client.log" ||
    die "results of $job failed: $(tail -3 "$TMP/client.log"; "$MESA" status --coordinator "$1" "$job" 2>&1 | head -5)"
  t1=$(now)
  sub "$t1" "$t0"
}
# local_run MODEL INPUT OUT WORKERS THREADS PLACEMENT: prints the wall seconds
local_run() {
  local t0 t1
  rm -f "$3"
  t0=$(now)
  "$MESA" run --model "$1" --input "$2" --output "$3" --max-tokens "$MAX_TOKENS" --workers "$4" \
    --threads "$5" --placement "$6" >>"$TMP/run.log" 2>&1 || die "mesa run failed: $(tail -3 "$TMP/run.log")"
  t1=$(now)
  sub "$t1" "$t0"
}
# K/V traffic: bytes received by worker A's sockets from worker B's serving port and the
# other way round (FetchKv channels are cached per address, so the connections outlive
# a job and the counters are cumulative), and bytes the coordinator sent to the workers.
# tcp_bytes "PID:PEERPORT:field ..." -> the sum of the field over the matching sockets
tcp_bytes() {
  command -v ss >/dev/null || { echo 0; return; }
  ss -tinpH 2>/dev/null | python3 -c '
import re, sys
specs = [s.split(":") for s in sys.argv[1:]]
total = 0
# Each socket: a line "STATE RECV-Q SEND-Q LOCAL PEER users:((...pid=N...))", then a
# tab-indented line of counters (bytes_sent:..., bytes_received:...).
for b in re.split(r"\n(?=\S)", sys.stdin.read()):
    first = b.split("\n", 1)[0].split()
    if not first or first[0] != "ESTAB" or len(first) < 5:
        continue
    peer = first[4].rsplit(":", 1)[-1]
    pids = set(re.findall(r"pid=(\d+)", b))
    for pid, port, field in specs:
        if pid in pids and port == peer:
            f = re.search(r"\b" + field + r":(\d+)", b)
            total += int(f.group(1)) if f else 0
print(total)' "$@"
}

# --- inputs -------------------------------------------------------------------------
if [ "$LOAD_WAIT" -gt 0 ] && [ "$(cut -d' ' -f1 /proc/loadavg | cut -d. -f1)" -ge "$MAX_LOAD" ]; then
  say "load average $(cut -d' ' -f1-3 /proc/loadavg) >= $MAX_LOAD: waiting up to ${LOAD_WAIT}s for it to drop"
  for ((i = 0; i < LOAD_WAIT; i += 5)); do
    [ "$(cut -d' ' -f1 /proc/loadavg | cut -d. -f1)" -lt "$MAX_LOAD" ] && break
    sleep 5
  done
fi
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
START_S=$(now)
: >"$TMP/rows.jsonl"
python3 "$ROOT/scripts/make_sample_jobs.py" --shared "$SHARED" --out "$TMP/sample.jsonl" 2>/dev/null ||
  die "make_sample_jobs.py failed (is $SHARED/text there? set MESA_SHARED_DIR)"
python3 - "$TMP/sample.jsonl" "$REPEAT" "$TMP/batch.jsonl" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
with open(sys.argv[3], "w") as f:
    for i in range(int(sys.argv[2])):
        for l in lines:
            l = dict(l, custom_id=f"{l['custom_id']}-{i}")
            f.write(json.dumps(l, ensure_ascii=False) + "\n")
PY
M0="${MODELS[0]}"
# The long document: TinyStories text from offset 200000 (past the sample batch's
# excerpts), cut at a paragraph end after about LONG_TOKENS tokens of the first model.
python3 - "$SHARED/text/tinystories_valid_part1.txt" "$LONG_TOKENS" "$TMP/long_probe.txt" <<'PY'
import sys
t = open(sys.argv[1], encoding="utf-8", errors="replace").read()
t = t + "\n\n" + t  # long enough for any length asked
s = t.find("\n\n", 200000) + 2
open(sys.argv[3], "w").write(t[s:s + 20000])
open(sys.argv[3] + ".full", "w").write(t[s:])
PY
probe_tokens=$("$MESA" tokenize --model "$M0" --file "$TMP/long_probe.txt" --json |
  python3 -c 'import json,sys; print(len(json.load(sys.stdin)["tokens"]))')
python3 - "$TMP/long_probe.txt.full" "$probe_tokens" "$LONG_TOKENS" "$TMP/long.jsonl" <<'PY'
import json, sys
t = open(sys.argv[1]).read()
chars = int(20000 / int(sys.argv[2]) * int(sys.argv[3]))
end = t.rfind("\n\n", 0, chars)
doc = t[:end if end > chars // 2 else chars].strip()
open(sys.argv[4], "w").write(json.dumps({"custom_id": "long", "document": doc}, ensure_ascii=False) + "\n")
PY
say "models: ${MODELS[*]}; $K rounds; batch $(wc -l <"$TMP/batch.jsonl") documents; long document ~$LONG_TOKENS tokens"

# --- 1. overhead --------------------------------------------------------------------
for model in "${MODELS[@]}"; do
  tag="$(basename "$model" .gguf)"
  start_coordinator "warm-$tag" "$model" whole
  WC="$COORD" WC_PID="$COORD_PID"
  start_worker "warm-$tag-w1" "$WC" "$model"
  WW_PID="$WORKER_PID"
  wait_registered "warm-$tag-w1"
  # One unmeasured job first (page cache, gRPC connections), as every later round has.
  cluster_job "$WC" "$TMP/sample.jsonl" "$TMP/warmup.jsonl" >/dev/null
  local_run "$model" "$TMP/sample.jsonl" "$TMP/ref-$tag.jsonl" 1 1 whole >/dev/null
  for ((k = 1; k <= K; k++)); do
    order="run warm cold split"
    [ $((k % 2)) = 0 ] && order="split cold warm run"
    for what in $order; do
      ld=$(load1)
      case "$what" in
        run)
          times >"$TMP/times0"
          w=$(local_run "$model" "$TMP/sample.jsonl" "$TMP/o.jsonl" 1 1 whole)
          times >"$TMP/times1"
          read -r comp pre dec pt gt ok < <(compute_of "$TMP/o.jsonl")
          record part=overhead model="$tag" variant=run round="$k" wall="$w" compute="$comp" prefill="$pre" \
            decode="$dec" prompt_tokens="$pt" generated="$gt" ok="$ok" load="$ld" \
            client_cpu="$(cpu_diff "$TMP/times0" "$TMP/times1")" same="$(same_texts "$TMP/ref-$tag.jsonl" "$TMP/o.jsonl")"
          ;;
        warm)
          cc0=$(proc_cpu "$WC_PID") wc0=$(proc_cpu "$WW_PID")
          times >"$TMP/times0"
          w=$(cluster_job "$WC" "$TMP/sample.jsonl" "$TMP/o.jsonl")
          times >"$TMP/times1"
          cc1=$(proc_cpu "$WC_PID") wc1=$(proc_cpu "$WW_PID")
          read -r comp pre dec pt gt ok < <(compute_of "$TMP/o.jsonl")
          record part=overhead model="$tag" variant=warm round="$k" wall="$w" compute="$comp" prefill="$pre" \
            decode="$dec" prompt_tokens="$pt" generated="$gt" ok="$ok" load="$ld" \
            coord_cpu="$(sub "$cc1" "$cc0")" worker_cpu="$(sub "$wc1" "$wc0")" client_cpu="$(cpu_diff "$TMP/times0" "$TMP/times1")" \
            same="$(same_texts "$TMP/ref-$tag.jsonl" "$TMP/o.jsonl")"
          ;;
        cold)
          [ "$COLD" = 1 ] || continue
          t0=$(now)
          start_coordinator "cold-$tag" "$model" whole
          cp="$COORD_PID"
          start_worker "cold-$tag-w1" "$COORD" "$model"
          wp="$WORKER_PID"
          w2=$(cluster_job "$COORD" "$TMP/sample.jsonl" "$TMP/o.jsonl")
          t1=$(now)
          stop_pids "$wp" "$cp"
          read -r comp pre dec pt gt ok < <(compute_of "$TMP/o.jsonl")
          record part=overhead model="$tag" variant=cold round="$k" wall="$(sub "$t1" "$t0")" compute="$comp" \
            prefill="$pre" decode="$dec" prompt_tokens="$pt" generated="$gt" ok="$ok" load="$ld" job_wall="$w2" \
            same="$(same_texts "$TMP/ref-$tag.jsonl" "$TMP/o.jsonl")"
          ;;
        split)
          # The same job in three client calls: where the wall time goes.
          cc0=$(proc_cpu "$WC_PID") wc0=$(proc_cpu "$WW_PID")
          t0=$(now)
          job=$("$MESA" submit --coordinator "$WC" --input "$TMP/sample.jsonl" --max-tokens "$MAX_TOKENS" 2>>"$TMP/client.log")
          t1=$(now); cc1=$(proc_cpu "$WC_PID")
          "$MESA" wait --coordinator "$WC" "$job" >/dev/null 2>>"$TMP/client.log" || die "wait failed"
          t2=$(now)
          "$MESA" results --coordinator "$WC" "$job" --output "$TMP/o.jsonl" 2>>"$TMP/client.log" || die "results failed"
          t3=$(now); cc3=$(proc_cpu "$WC_PID") wc3=$(proc_cpu "$WW_PID")
          read -r comp pre dec pt gt ok < <(compute_of "$TMP/o.jsonl")
          record part=overhead model="$tag" variant=split round="$k" wall="$(sub "$t3" "$t0")" \
            submit="$(sub "$t1" "$t0")" wait="$(sub "$t2" "$t1")" results="$(sub "$t3" "$t2")" compute="$comp" \
            coord_cpu_submit="$(sub "$cc1" "$cc0")" coord_cpu="$(sub "$cc3" "$cc0")" \
            worker_cpu="$(sub "$wc3" "$wc0")" load="$ld"
          ;;
      esac
    done
    say "[$tag] overhead round $k/$K done (load $(load1))"
  done
  stop_pids "$WW_PID" "$WC_PID"
done

# --- 2. scaling (first model) and 3. K/V traffic ------------------------------------
tag0="$(basename "$M0" .gguf)"
declare -A SC SC_PID
for setup in whole-1 whole-2 spread-1 spread-2; do
  placement="${setup%-*}" n="${setup#*-}"
  start_coordinator "sc-$setup" "$M0" "$placement"
  SC[$setup]="$COORD" SC_PID[$setup]="$COORD_PID"
  for ((i = 1; i <= n; i++)); do
    start_worker "sc-$setup-w$i" "$COORD" "$M0"
    SC_PID[$setup-w$i]="$WORKER_PID"
  done
done
for setup in whole-1 whole-2 spread-1 spread-2; do
  n="${setup#*-}"
  for ((i = 1; i <= n; i++)); do wait_registered "sc-$setup-w$i"; done
done
wait_for_file "$TMP/sc-spread-2-w1.addr" 10 && wait_for_file "$TMP/sc-spread-2-w2.addr" 10 ||
  die "the spread workers did not write their addresses"
P1="$(sed 's/.*://' "$TMP/sc-spread-2-w1.addr")" P2="$(sed 's/.*://' "$TMP/sc-spread-2-w2.addr")"
A1="${SC_PID[spread-2-w1]}" A2="${SC_PID[spread-2-w2]}" SPC="${SC_PID[spread-2]}"
kv_now() {  # "kv_bytes task_bytes_to_workers results_bytes_from_workers"
  echo "$(tcp_bytes "$A1:$P2:bytes_received" "$A2:$P1:bytes_received")" \
       "$(tcp_bytes "$SPC:$P1:bytes_sent" "$SPC:$P2:bytes_sent")" \
       "$(tcp_bytes "$SPC:$P1:bytes_received" "$SPC:$P2:bytes_received")"
}
# The references (one process, one engine thread) and one unmeasured job per setup.
local_run "$M0" "$TMP/batch.jsonl" "$TMP/ref-batch.jsonl" 1 2 whole >/dev/null
local_run "$M0" "$TMP/long.jsonl" "$TMP/ref-long.jsonl" 1 2 spread >/dev/null
# (the first sample document: ~2k tokens, enough to open every gRPC channel, the spread
# workers' FetchKv channels included)
head -n1 "$TMP/sample.jsonl" >"$TMP/one.jsonl"
for setup in whole-1 whole-2 spread-1 spread-2; do
  cluster_job "${SC[$setup]}" "$TMP/one.jsonl" "$TMP/warmup.jsonl" >/dev/null
done
for ((k = 1; k <= K; k++)); do
  order="c-whole-1 c-whole-2 l-whole-1 l-whole-2 c-spread-1 c-spread-2 l-spread-1 l-spread-2"
  [ $((k % 2)) = 0 ] && order="l-spread-2 l-spread-1 c-spread-2 c-spread-1 l-whole-2 l-whole-1 c-whole-2 c-whole-1"
  for what in $order; do
    kind="${what%%-*}" setup="${what#*-}" placement="${setup%-*}" n="${setup#*-}"
    input="$TMP/batch.jsonl" ref="$TMP/ref-batch.jsonl"
    [ "$placement" = spread ] && input="$TMP/long.jsonl" ref="$TMP/ref-long.jsonl"
    ld=$(load1)
    extra=()
    if [ "$kind" = c ]; then
      [ "$setup" = spread-2 ] && read -r kv0 tb0 rb0 < <(kv_now)
      w=$(cluster_job "${SC[$setup]}" "$input" "$TMP/o.jsonl")
      if [ "$setup" = spread-2 ]; then
        read -r kv1 tb1 rb1 < <(kv_now)
        extra=(kv_bytes="$((kv1 - kv0))" task_bytes="$((tb1 - tb0))" result_bytes="$((rb1 - rb0))")
      fi
      variant="cluster"
    else
      w=$(local_run "$M0" "$input" "$TMP/o.jsonl" "$n" 2 "$placement")
      variant="inproc"
    fi
    read -r comp pre dec pt gt ok < <(compute_of "$TMP/o.jsonl")
    record part=scaling model="$tag0" variant="$variant" placement="$placement" workers="$n" round="$k" \
      wall="$w" compute="$comp" prefill="$pre" decode="$dec" prompt_tokens="$pt" generated="$gt" ok="$ok" \
      load="$ld" same="$(same_texts "$ref" "$TMP/o.jsonl")" "${extra[@]}"
  done
  say "scaling round $k/$K done (load $(load1))"
done
# The long document's plan, for the K/V estimate.
python3 - "$TMP/ref-long.jsonl" "$M0" >"$TMP/plan.json" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).readline())
plan = r["plan"]["plan"]
print(json.dumps({"n": plan["n"], "middle": plan.get("middle", []), "anchor": plan.get("anchor")}))
PY
"$MESA" info "$M0" >"$TMP/model0.info" 2>/dev/null || true
LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)"
END_S=$(now)

# --- report -------------------------------------------------------------------------
CPU="$(lscpu | sed -n 's/^Model name: *//p' | head -n1)"
ISA="$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512[a-z_]*|amx[a-z_]*)$' | sort -u | tr '\n' ' ')"
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$ROOT" diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT + uncommitted changes"
export CPU ISA COMMIT LOAD_START LOAD_END K MAX_TOKENS REPEAT QUICK COLD
export CORES="$(nproc)" DATE="$(date -u '+%Y-%m-%d %H:%M UTC')" DURATION="$(sub "$END_S" "$START_S")"
export MODELS_LIST="${MODELS[*]}" MODEL0="$M0" LONG_TOKENS
export MESA_REL="$(realpath --relative-to="$ROOT" "$MESA")" MESA_MTIME="$(date -u -r "$MESA" '+%Y-%m-%d %H:%M UTC')"
REPORT="$TMP/runtime.md"
python3 - "$TMP/rows.jsonl" "$TMP/plan.json" "$TMP/model0.info" "$ROOT/bench/results/kv_transfer.md" >"$REPORT" <<'PY'
import json, os, re, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
plan = json.load(open(sys.argv[2]))
info = open(sys.argv[3]).read()
env = os.environ
K = int(env["K"])
med = statistics.median
def sel(**kw):
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]
def m(rs, f):
    v = [r[f] for r in rs if f in r]
    return med(v) if v else float("nan")
def rng(v):
    return f"{min(v):.2f}-{max(v):.2f}" if v else "-"
def by_round(rs):
    return {int(r["round"]): r for r in rs}
def mib(b):
    return b / 2**20

out = []
p = out.append
p("# Distributed runtime on one machine: overhead and speedup")
p("")
p(f"Written by bench/runtime_bench.sh on {env['DATE']} ({float(env['DURATION']):.0f} s)"
  + (" -- QUICK smoke run, not for quoting" if env["QUICK"] == "1" else "") + ".")
p("")
p(f"- Machine: {env['CPU']}, {env['CORES']} cores; ISA: {env['ISA'].strip()}")
p(f"- Commit: {env['COMMIT']}; binary {env['MESA_REL']} built {env['MESA_MTIME']}; everything on 127.0.0.1")
p(f"- Load average (1/5/15 min): {env['LOAD_START']} before, {env['LOAD_END']} after; the load at the"
  " start of each run is in the rounds below (other work shared the 2 cores: above ~2 the"
  " timings are slower and noisier)")
p(f"- {K} rounds, alternating (odd rounds in one order, even rounds reversed); median shown,"
  " every round listed below; one unmeasured job first on every setup")
p(f"- Generation budget: --max-tokens {env['MAX_TOKENS']} per document")
p("")

# ---- 1. overhead
p("## 1. Overhead: one worker process against `mesa run` in one process")
p("")
p("The sample batch (scripts/make_sample_jobs.py: 5 documents, ~2k-8k tokens), --threads 1,"
  " --placement whole everywhere. **run**: `mesa run --threads 1` (a fresh process each round:"
  " process start and model load included). **warm**: a coordinator and one `mesa worker"
  " --threads 1` started once; timed from `mesa submit --wait` to `mesa results` having"
  " written the file. **cold**: a fresh coordinator (new store) and worker each round, timed from"
  " launching the coordinator to the results written (process start, model load, registration"
  " included; shutdown not). compute = the records' prefill_s + decode_s summed (the engine's"
  " own time).")
p("")
p("| model | prompt tokens | generated | run s | warm s | warm / run | cold s | cold / run | per-round warm / run | goal warm <= 1.10 |")
p("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
models = []
for r in rows:
    if r["part"] == "overhead" and r["model"] not in models:
        models.append(r["model"])
for mod in models:
    run, warm, cold = sel(part="overhead", model=mod, variant="run"), sel(part="overhead", model=mod, variant="warm"), sel(part="overhead", model=mod, variant="cold")
    rr, wr = by_round(run), by_round(warm)
    ratios = [wr[k]["wall"] / rr[k]["wall"] for k in rr if k in wr]
    mr, mw = m(run, "wall"), m(warm, "wall")
    mc = m(cold, "wall") if cold else float("nan")
    ratio = mw / mr
    p(f"| {mod} | {int(m(run, 'prompt_tokens'))} | {int(m(run, 'generated'))} | {mr:.2f} | {mw:.2f} | **{ratio:.2f}** | "
      + (f"{mc:.2f} | {mc / mr:.2f}" if cold else "- | -")
      + f" | {rng(ratios)} | {'PASS' if ratio <= 1.10 else 'FAIL'} |")
p("")
p("The engine's compute (the same work in every variant) swings with the other load on the"
  " machine as much as the whole difference being measured, so the fixed costs are also"
  " shown apart: fixed = wall - compute per round (median), and the ratio the medians give"
  " when both sides do the median `mesa run` compute (derived, not measured):")
p("")
p("| model | compute run s | compute warm s | fixed run s | fixed warm s | fixed cold s | of it: coordinator start s | warm / run at equal compute | cold / run at equal compute |")
p("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for mod in models:
    run, warm, cold = sel(part="overhead", model=mod, variant="run"), sel(part="overhead", model=mod, variant="warm"), sel(part="overhead", model=mod, variant="cold")
    fx = lambda rs: med([r["wall"] - r["compute"] for r in rs]) if rs else float("nan")
    cr = m(run, "compute")
    base = cr + fx(run)
    p(f"| {mod} | {cr:.2f} | {m(warm, 'compute'):.2f} | {fx(run):.3f} | {fx(warm):.3f} | "
      + (f"{fx(cold):.3f} | {med([r['wall'] - r['job_wall'] for r in cold]):.3f}" if cold else "- | -")
      + f" | {(cr + fx(warm)) / base:.3f} | "
      + (f"{(cr + fx(cold)) / base:.3f}" if cold else "-") + " |")
p("")
p("(coordinator start = from launching `mesa coordinator` to its address file written, i.e."
  " serving; the worker is launched right after it and loads and registers while the job is"
  " being submitted.)")
p("")
p("Results equal to `mesa run`'s (text and token counts, every record, every round): "
  + ("yes" if all(r.get("same", "yes") == "yes" for r in rows) else "**NO** (see rounds)"))
p("")
p("### Where the time goes (warm setup; medians)")
p("")
p("`mesa run`: wall = compute + the rest (process start, model load, tokenize, template, plan,"
  " writing). Cluster (a split round: the same job as three client calls): submit (upload;"
  " the coordinator tokenizes, plans and stores every line before answering), wait (until"
  " the job is completed), results (download and write); the coordinator's and the worker's"
  " CPU seconds over the whole job from /proc.")
p("")
p("| model | run wall | run compute | run rest | run CPU (process) | cluster wall (split) | submit | wait | results | worker compute | wait - compute | coordinator CPU (of it in submit) | worker CPU |")
p("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for mod in models:
    run, split = sel(part="overhead", model=mod, variant="run"), sel(part="overhead", model=mod, variant="split")
    rest = [r["wall"] - r["compute"] for r in run]
    wmc = [r["wait"] - r["compute"] for r in split]
    p(f"| {mod} | {m(run, 'wall'):.3f} | {m(run, 'compute'):.3f} | {med(rest):.3f} | {m(run, 'client_cpu'):.3f} | "
      f"{m(split, 'wall'):.3f} | {m(split, 'submit'):.3f} | {m(split, 'wait'):.3f} | {m(split, 'results'):.3f} | "
      f"{m(split, 'compute'):.3f} | {med(wmc):.3f} | {m(split, 'coord_cpu'):.3f} ({m(split, 'coord_cpu_submit'):.3f}) | "
      f"{m(split, 'worker_cpu'):.3f} |")
p("")

# ---- 2. scaling
tag0 = os.path.basename(env["MODEL0"]).removesuffix(".gguf")
p(f"## 2. Two workers against one ({tag0})")
p("")
p(f"- batch: the sample batch repeated {env['REPEAT']}x (distinct custom_ids), --placement whole")
p(f"- long: one document of TinyStories text (~{env['LONG_TOKENS']} tokens asked), --placement spread"
  " (its middle chunks on every worker, their K/V gathered on the worker that runs the last"
  " chunk and decodes)")
p("- cluster: a coordinator with one or two `mesa worker --threads 1` processes (all four setups"
  " started once and left idle between their jobs); in-process: `mesa run --workers N --threads 2`"
  " (N=1: one engine with 2 threads; N=2: two in-process workers with 1 thread each)")
p("- speedup = 1 worker / 2 workers (wall, medians); the ideal on 2 cores is 2.00")
p("")
p("| input | prompt tokens | generated | placement | cluster 1 worker s | cluster 2 workers s | speedup | per-round speedup | in-process w1 t2 s | in-process w2 t2 s | w1t2 / w2t2 | per-round |")
p("|---|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---|")
for placement, name in (("whole", "batch"), ("spread", "long")):
    c1, c2 = sel(part="scaling", variant="cluster", placement=placement, workers=1.0), sel(part="scaling", variant="cluster", placement=placement, workers=2.0)
    l1, l2 = sel(part="scaling", variant="inproc", placement=placement, workers=1.0), sel(part="scaling", variant="inproc", placement=placement, workers=2.0)
    if not c1:
        continue
    def per(a, b):
        ra, rb = by_round(a), by_round(b)
        return [ra[k]["wall"] / rb[k]["wall"] for k in ra if k in rb]
    p(f"| {name} | {int(m(c1, 'prompt_tokens'))} | {int(m(c1, 'generated'))} | {placement} | {m(c1, 'wall'):.2f} | {m(c2, 'wall'):.2f} | "
      f"**{m(c1, 'wall') / m(c2, 'wall'):.2f}** | {rng(per(c1, c2))} | {m(l1, 'wall'):.2f} | {m(l2, 'wall'):.2f} | "
      f"**{m(l1, 'wall') / m(l2, 'wall'):.2f}** | {rng(per(l1, l2))} |")
p("")
p("Engine time inside those runs (medians of the records' sums; with 2 workers the sum"
  " counts both workers' time, so it can exceed the wall time). For the spread runs a record's"
  " prefill_s is the final task's alone (gathering the K/V, the last chunk), not the middle"
  " chunks computed as separate tasks: there wall - prefill - decode is mostly those chunks:")
p("")
p("| input | setup | wall s | prefill s (sum) | decode s (sum) |")
p("|---|---|---:|---:|---:|")
for placement, name in (("whole", "batch"), ("spread", "long")):
    for variant, label in (("cluster", "cluster"), ("inproc", "in-process t2")):
        for n in (1.0, 2.0):
            rs = sel(part="scaling", variant=variant, placement=placement, workers=n)
            if rs:
                p(f"| {name} | {label}, {int(n)} worker{'s' if n > 1 else ''} | {m(rs, 'wall'):.2f} | {m(rs, 'prefill'):.2f} | {m(rs, 'decode'):.2f} |")
p("")

# ---- 3. K/V
p("## 3. K/V moved in the 2-worker spread run")
p("")
kv = sel(part="scaling", variant="cluster", placement="spread", workers=2.0)
mcfg = {}
for key, pat in (("layers", r"layers:\s*(\d+)"), ("kv", r"\(kv (\d+)\)"), ("hd", r"head dim (\d+)")):
    mm = re.search(pat, info)
    if mm:
        mcfg[key] = int(mm.group(1))
middle = plan.get("middle", [])
mid_tokens = sum(b - a for a, b in middle)
per_tok = 2 * mcfg.get("layers", 0) * mcfg.get("kv", 0) * mcfg.get("hd", 0) * 4
gbps = None
try:
    t = open(sys.argv[4]).read()
    g = [float(x) for x in re.findall(r"^\| \d+ MiB \| [\d.]+ \| ([\d.]+) \|", t, re.M)]
    gbps = med(g) if g else None
except OSError:
    pass
if kv and "kv_bytes" in kv[0]:
    kvb = [r["kv_bytes"] for r in kv]
    p(f"- Plan of the long document: {plan['n']} prompt tokens, {len(middle)} middle chunks,"
      f" {mid_tokens} tokens in them; K/V per token {per_tok} bytes (2 x {mcfg.get('layers')} layers x"
      f" {mcfg.get('kv')} kv heads x {mcfg.get('hd')} head dim x 4 bytes, f32): all middle chunks"
      f" together {mib(mid_tokens * per_tok):.1f} MiB")
    p(f"- Measured (bytes received on the worker-to-worker TCP connections, `ss -ti` counters"
      f" before and after each job; gRPC framing included): median {mib(med(kvb)):.1f} MiB per job,"
      f" rounds {', '.join(f'{mib(b):.1f}' for b in kvb)} MiB; that is {med(kvb) / max(1, mid_tokens * per_tok):.2f}"
      " of all middle-chunk K/V (the rest was computed on the final worker itself)")
    p(f"- Coordinator to workers (task requests; each chunk task carries the whole prompt):"
      f" median {mib(m(kv, 'task_bytes')):.2f} MiB per job; workers to coordinator"
      f" {m(kv, 'result_bytes') / 1024:.1f} KiB")
else:
    p("- Not measured (ss unavailable)")
if gbps:
    p(f"- Transfer time: **not exposed**. The final worker measures kv_bytes_received and"
      f" kv_transfer_s and returns them in FinalResult, but the coordinator uses them only inside"
      f" the scheduler's cost model (coordinator/coordinator_core.cc RunTask -> TaskStats): neither"
      f" the result records, the job status nor any log carries them. Estimate at the gRPC FetchKv rate of"
      f" bench/results/kv_transfer.md ({gbps:.2f} GB/s, median of its sizes):"
      + (f" ~{med(kvb) / gbps / 1e9:.2f} s per job" if kv and 'kv_bytes' in kv[0] else ""))
p("")

# ---- notes
p("## Notes")
p("")
p("- Both processes of a cluster run and `mesa run` share the same 2 cores with whatever else"
  " runs on the machine; the load column below says how much. The engine's own compute varies"
  " from round to round by more than the runtime's fixed costs, hence the fixed-cost table.")
p("- tinystories-656k stops at its end-of-text token after a few tokens on most documents, so"
  " its batch is nearly all prefill; stories260K uses the whole --max-tokens budget.")
p("- Transfer time of the K/V: the worker measures kv_bytes_received and kv_transfer_s for"
  " every final task and returns them to the coordinator, which feeds them to the scheduler's"
  " cost model but does not put them in the result records, the job status or a log; the bytes above are measured from outside"
  " (TCP counters), the time is only estimated.")
p("- `mesa run` is itself the coordinator core with in-process workers (a fresh process per"
  " round); the cluster adds gRPC calls, the SQLite store on the coordinator and the client"
  " processes (submit, results).")
p("")

# ---- rounds
p("## Every round")
p("")
p("| part | model | variant | placement | workers | round | load | wall s | compute s | details |")
p("|---|---|---|---|---:|---:|---:|---:|---:|---|")
skip = {"part", "model", "variant", "placement", "workers", "round", "load", "wall", "compute", "prompt_tokens", "generated", "prefill", "decode"}
for r in sorted(rows, key=lambda r: (r["part"] != "overhead", r["model"], int(r["round"]))):
    det = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) and k not in ("kv_bytes", "task_bytes", "result_bytes", "ok")
                    else f"{k} {int(v) if isinstance(v, float) else v}" for k, v in r.items() if k not in skip)
    p(f"| {r['part']} | {r['model']} | {r['variant']} | {r.get('placement', 'whole')} | {int(r.get('workers', 1))} | "
      f"{int(r['round'])} | {r['load']:.2f} | {r['wall']:.3f} | {r['compute']:.3f} | {det} |")
print("\n".join(out))
PY
if [ -n "$OUT_MD" ]; then
  mkdir -p "$(dirname "$OUT_MD")"
  cp "$REPORT" "$OUT_MD"
  say "wrote $OUT_MD"
else
  cat "$REPORT"
fi
