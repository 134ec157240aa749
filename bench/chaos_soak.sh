#!/usr/bin/env bash
# Chaos soak of the distributed runtime: a real `mesa coordinator` and 3 real `mesa worker`
# processes on loopback; jobs of short and long documents (sliced from ../shared/text) are
# submitted one after another (two in flight) for --seconds while random workers are
# killed (-9) and restarted, and twice one is drained (SIGTERM: it must finish its task,
# deregister and exit 0) and restarted. At the end, after the last jobs finish:
#   - every input line of every job has exactly one result record, equal in status, text
#     and token counts to `mesa run`'s for that line (greedy decoding is deterministic);
#   - when `mesa worker --help` shows --metrics-listen: every worker's K/V in use is 0
#     and the coordinator's items-done counter equals the results read (scraped from
#     /metrics); otherwise these checks are skipped, and the script says so.
# Appends a row to bench/results/chaos_soak.md (--out). Exit 1 when a check fails, 77
# without the shared model.
#   bench/chaos_soak.sh [--seconds 300] [--mesa build/release/client/cli/mesa]
#                       [--shared ../shared] [--out bench/results/chaos_soak.md] [--seed N]
#                       [--kv-transport grpc|socket]   (the workers' K/V transport)
#                       [--kv-links N]                 (socket: each worker's link bound)
#                       [--placement auto|whole|spread] (the coordinator's; default auto)
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SECONDS_TOTAL=300
MESA="${MESA_BIN:-$ROOT/build/release/client/cli/mesa}"
SHARED="${MESA_SHARED_DIR:-$ROOT/../shared}"
OUT="$ROOT/bench/results/chaos_soak.md"
SEED=$$
KV_TRANSPORT=grpc
KV_LINKS=""
PLACEMENT=""
usage() {
  echo "usage: $0 [--seconds S] [--mesa BIN] [--shared DIR] [--out FILE] [--seed N] [--kv-transport T]" \
    "[--kv-links N] [--placement P]" >&2
  exit 2
}
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || usage
  case "$1" in
    --seconds) SECONDS_TOTAL="$2" ;;
    --mesa) MESA="$2" ;;
    --shared) SHARED="$2" ;;
    --out) OUT="$2" ;;
    --seed) SEED="$2" ;;
    --kv-transport) KV_TRANSPORT="$2" ;;
    --kv-links) KV_LINKS="$2" ;;
    --placement) PLACEMENT="$2" ;;
    *) usage ;;
  esac
  shift 2
done
[[ "$SECONDS_TOTAL" =~ ^[0-9]+$ ]] && [ "$SECONDS_TOTAL" -gt 0 ] || usage
[ -x "$MESA" ] || { echo "chaos_soak: $MESA is not an executable (build it, or pass --mesa)" >&2; exit 2; }
MODEL="$SHARED/models/stories260K-f32.gguf"
if [ ! -f "$MODEL" ]; then echo "SKIP: $MODEL not found"; exit 77; fi
RANDOM=$SEED
NWORKERS=3
# TMP, PIDS (killed on exit), fail, die, log_tail (tests/runtime/lib.sh).
source "$(dirname "$0")/../tests/runtime/lib.sh"
cleanup() {
  kill_started
  if [ "$fail" != 0 ]; then  # the whole logs of a failed soak, for the post-mortem
    local keep; keep=$(mktemp -d /tmp/chaos_soak_failed.XXXXXX)
    cp "$TMP"/*.log "$keep"/ 2>/dev/null; echo "logs of the failed soak kept in $keep"
  fi
  rm -rf "$TMP"
}

# ---- inputs: 24 lines, short (300-1500 chars) and long (8k-30k chars, chunked) ----
python3 - "$SHARED/text" "$TMP/in.jsonl" <<'PY' || exit 1
import json, os, random, sys
text_dir, out = sys.argv[1], sys.argv[2]
texts = []
for name in ("tinystories_valid_part1.txt", "alice_in_wonderland.txt", "frankenstein.txt", "pride_and_prejudice.txt"):
    p = os.path.join(text_dir, name)
    if os.path.exists(p):
        texts.append((name.split("_")[0], open(p, encoding="utf-8", errors="replace").read()))
if not texts:
    texts = [("synthetic", "Once upon a time there was a little dog who liked to run. " * 2000)]
rng = random.Random(7)
with open(out, "w") as f:
    for i in range(24):
        name, t = texts[i % len(texts)]
        size = rng.randint(300, 1500) if i % 3 else rng.randint(8000, 30000)
        start = rng.randint(0, max(0, len(t) - size - 1))
        start = t.find(" ", start) + 1
        doc = t[start:start + size].strip()
        f.write(json.dumps({"custom_id": f"{name}-{i}-{size}", "document": doc}) + "\n")
PY
# Jobs of 4-8 lines, cut from the input in turn.
python3 - "$TMP/in.jsonl" "$TMP" <<'PY'
import sys
lines = open(sys.argv[1]).read().splitlines()
i = k = 0
while i < len(lines):
    n = 4 + (k * 3) % 5
    open(f"{sys.argv[2]}/job{k}.jsonl", "w").write("\n".join(lines[i:i + n]) + "\n")
    i += n; k += 1
print(k, file=open(f"{sys.argv[2]}/njobs", "w"))
PY
NJOBFILES=$(cat "$TMP/njobs")
FLAGS=(--max-tokens 8)
echo "chaos_soak: ${SECONDS_TOTAL}s, $NWORKERS workers, 24 lines in $NJOBFILES job files, seed $SEED"
"$MESA" run --model "$MODEL" --input "$TMP/in.jsonl" --output "$TMP/ref.jsonl" "${FLAGS[@]}" --threads 2 \
  >"$TMP/reference.log" 2>&1 || { echo "FAIL: mesa run"; cat "$TMP/reference.log"; exit 1; }

# ---- metrics (when the binaries have them) ----
METRICS=0
# (The help is read whole first: `--help | grep -q` under pipefail fails when grep exits
# before mesa has written everything, which skipped these checks by chance.)
WORKER_HELP="$("$MESA" worker --help 2>&1 || true)"
case "$WORKER_HELP" in *--metrics-listen*) METRICS=1 ;; esac
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
declare -a WMETRICS
COORD_METRICS=""
if [ "$METRICS" = 1 ]; then
  COORD_METRICS="127.0.0.1:$(free_port)"
  for i in $(seq 0 $((NWORKERS - 1))); do WMETRICS[$i]="127.0.0.1:$(free_port)"; done
  echo "metrics: coordinator $COORD_METRICS, workers ${WMETRICS[*]}"
else
  echo "metrics: \`mesa worker --help\` has no --metrics-listen: the K/V-in-use and items-done checks are SKIPPED"
fi

# ---- processes ----
coord_flags=()
[ "$METRICS" = 1 ] && coord_flags+=(--metrics-listen "$COORD_METRICS")
[ -n "$PLACEMENT" ] && coord_flags+=(--placement "$PLACEMENT")
"$MESA" coordinator --listen 127.0.0.1:0 --store "$TMP/store" --model "$MODEL" --address-file "$TMP/coord.addr" \
  --heartbeat-timeout 2 --max-attempts 50 "${coord_flags[@]}" >>"$TMP/coordinator.log" 2>&1 &
COORD_PID=$!
PIDS+=("$COORD_PID")
for _ in $(seq 100); do [ -s "$TMP/coord.addr" ] && break; sleep 0.1; done
COORD=$(cat "$TMP/coord.addr" 2>/dev/null)
[ -n "$COORD" ] || { echo "FAIL: the coordinator did not start"; log_tail; exit 1; }

declare -a WPID
start_worker() {  # start_worker SLOT
  local extra=()
  [ "$METRICS" = 1 ] && extra+=(--metrics-listen "${WMETRICS[$1]}")
  [ "$KV_TRANSPORT" != grpc ] && extra+=(--kv-transport "$KV_TRANSPORT")
  [ -n "$KV_LINKS" ] && extra+=(--kv-links "$KV_LINKS")
  "$MESA" worker --coordinator "$COORD" --model "$MODEL" --threads 1 --name "w$1" "${extra[@]}" \
    >>"$TMP/worker-$1.log" 2>&1 &
  WPID[$1]=$!
  PIDS+=("${WPID[$1]}")
}
for i in $(seq 0 $((NWORKERS - 1))); do start_worker "$i"; done

# ---- jobs: two in flight, cycling through the job files ----
declare -a INFLIGHT_JOB INFLIGHT_FILE
JOBS=0; NEXT=0
submit_next() {
  local f="$TMP/job$((NEXT % NJOBFILES)).jsonl" id
  id=$("$MESA" submit --coordinator "$COORD" --input "$f" "${FLAGS[@]}" --json 2>>"$TMP/client.log" \
        | python3 -c "import json,sys; print(json.load(sys.stdin)['job_id'])" 2>/dev/null)
  if [ -z "$id" ]; then die "submit of $f failed: $(tail -2 "$TMP/client.log")"; return 1; fi
  INFLIGHT_JOB+=("$id"); INFLIGHT_FILE+=("$f")
  JOBS=$((JOBS + 1)); NEXT=$((NEXT + 1))
}
job_status() {
  "$MESA" status --coordinator "$COORD" "$1" --json 2>/dev/null \
    | python3 -c "import json,sys; print(json.load(sys.stdin)['status'])" 2>/dev/null
}
LINES=0; MISMATCHES=0; RESULTS=0
check_job() {  # check_job ID INPUT: results against the reference
  local out="$TMP/out-$1.jsonl"
  "$MESA" results --coordinator "$COORD" "$1" --output "$out" 2>>"$TMP/client.log" || { die "results of $1"; return; }
  local r
  r=$(python3 - "$TMP/ref.jsonl" "$2" "$out" <<'PY'
import json, sys
ref = {}
for l in open(sys.argv[1]):
    if l.strip():
        r = json.loads(l); ref[r["custom_id"]] = r
want = [json.loads(l)["custom_id"] for l in open(sys.argv[2]) if l.strip()]
got = [json.loads(l) for l in open(sys.argv[3]) if l.strip()]
bad = 0
ids = [g.get("custom_id") for g in got]
if sorted(ids) != sorted(want):
    print(f"records {ids} for lines {want}", file=sys.stderr)
    bad += max(1, abs(len(ids) - len(want)) + len(set(want) ^ set(ids)))
for g in got:
    w = ref.get(g.get("custom_id"))
    if w is None:
        continue
    for f in ("status", "text", "prompt_tokens", "generated_tokens", "error"):
        if g.get(f) != w.get(f):
            print(f"{g.get('custom_id')}.{f}: {g.get(f)!r} vs mesa run {w.get(f)!r}", file=sys.stderr)
            bad += 1
            break
print(len(want), len(got), bad)
PY
)
  [ -n "$r" ] || { die "checking $1 failed"; return; }
  set -- $r
  LINES=$((LINES + $1)); RESULTS=$((RESULTS + $2)); MISMATCHES=$((MISMATCHES + $3))
  [ "$3" = 0 ] || die "job results differ from mesa run ($3)"
}
reap_jobs() {  # checks finished jobs; keeps the rest in flight
  local keep_j=() keep_f=() i s
  for i in "${!INFLIGHT_JOB[@]}"; do
    s=$(job_status "${INFLIGHT_JOB[$i]}")
    case "$s" in
      completed) check_job "${INFLIGHT_JOB[$i]}" "${INFLIGHT_FILE[$i]}" ;;
      failed|cancelled|expired) die "job ${INFLIGHT_JOB[$i]} ended $s"; check_job "${INFLIGHT_JOB[$i]}" "${INFLIGHT_FILE[$i]}" ;;
      *) keep_j+=("${INFLIGHT_JOB[$i]}"); keep_f+=("${INFLIGHT_FILE[$i]}") ;;
    esac
  done
  INFLIGHT_JOB=("${keep_j[@]}"); INFLIGHT_FILE=("${keep_f[@]}")
}

# ---- the soak ----
KILLS=0; DRAINS=0; RESTARTS=0; DRAIN_FAILS=0
start=$(date +%s)
end=$((start + SECONDS_TOTAL))
drain_at1=$((start + SECONDS_TOTAL / 3)); drain_at2=$((start + 2 * SECONDS_TOTAL / 3))
next_chaos=$((start + 3 + RANDOM % 4))
while [ "$(date +%s)" -lt "$end" ]; do
  reap_jobs
  while [ "${#INFLIGHT_JOB[@]}" -lt 2 ]; do submit_next || break; done
  now=$(date +%s)
  if [ "$now" -ge "$next_chaos" ]; then
    slot=$((RANDOM % NWORKERS))
    if { [ "$now" -ge "$drain_at1" ] && [ "$DRAINS" = 0 ]; } || { [ "$now" -ge "$drain_at2" ] && [ "$DRAINS" = 1 ]; }; then
      kill -TERM "${WPID[$slot]}" 2>/dev/null
      rc=124
      for _ in $(seq 600); do kill -0 "${WPID[$slot]}" 2>/dev/null || { wait "${WPID[$slot]}"; rc=$?; break; }; sleep 0.1; done
      DRAINS=$((DRAINS + 1))
      echo "$(($(date +%s) - start))s: drained worker w$slot (SIGTERM), exit $rc"
      if [ "$rc" != 0 ]; then DRAIN_FAILS=$((DRAIN_FAILS + 1)); die "drained worker w$slot exited $rc"; fi
    else
      { kill -9 "${WPID[$slot]}"; wait "${WPID[$slot]}"; } 2>/dev/null
      KILLS=$((KILLS + 1))
      echo "$(($(date +%s) - start))s: killed worker w$slot (-9)"
      sleep "0.$((RANDOM % 9 + 1))"
    fi
    start_worker "$slot"; RESTARTS=$((RESTARTS + 1))
    next_chaos=$(($(date +%s) + 3 + RANDOM % 6))
  fi
  sleep 0.5
done
echo "chaos over after $(($(date +%s) - start))s: $KILLS kills, $DRAINS drains, $RESTARTS restarts; finishing $((${#INFLIGHT_JOB[@]})) jobs"
deadline=$(($(date +%s) + 300))
while [ "${#INFLIGHT_JOB[@]}" -gt 0 ] && [ "$(date +%s)" -lt "$deadline" ]; do reap_jobs; sleep 0.5; done
[ "${#INFLIGHT_JOB[@]}" = 0 ] || die "${#INFLIGHT_JOB[@]} jobs did not finish within 300 s after the chaos"
# Every job the coordinator has is one we submitted, and was checked.
n=$("$MESA" list --coordinator "$COORD" --json | python3 -c "import json,sys; print(len(json.load(sys.stdin)))")
[ "$n" = "$JOBS" ] || die "the coordinator lists $n jobs; $JOBS were submitted"

# ---- metric checks ----
METRIC_NOTE="skipped (no --metrics-listen)"
if [ "$METRICS" = 1 ]; then
  scrape() {  # scrape HOST:PORT REGEX: the sum of the samples whose name matches
    curl -fsS --max-time 5 "http://$1/metrics" 2>/dev/null | python3 -c "
import re, sys
pat = re.compile(sys.argv[1]); total = None; names = set()
for line in sys.stdin:
    if line.startswith('#') or not line.strip(): continue
    name = line.split('{')[0].split()[0]
    if pat.search(name):
        names.add(name); total = (total or 0) + float(line.rsplit(None, 1)[-1])
print('none' if total is None else int(total), ','.join(sorted(names)) or '-')
" "$2"
  }
  sleep 3  # releases of the last items' K/V are asynchronous
  kv_total=0; kv_note=""
  for i in $(seq 0 $((NWORKERS - 1))); do
    read -r v kv_names <<<"$(scrape "${WMETRICS[$i]}" '^mesa_worker_kv_bytes_in_use$')"
    kv_note="$kv_note w$i=$v"
    if [ "$v" = none ]; then die "worker w$i: no K/V-in-use metric at ${WMETRICS[$i]}/metrics"; else kv_total=$((kv_total + v)); fi
  done
  read -r done_items names <<<"$(scrape "$COORD_METRICS" '^mesa_items_done_total$')"
  read -r held _ <<<"$(scrape "$COORD_METRICS" '^mesa_scheduler_kv_bytes_held$')"
  [ "$held" = 0 ] || die "the coordinator's scheduler still accounts $held bytes of K/V held"
  echo "metrics: K/V in use:$kv_note ($kv_names); coordinator items done ($names): $done_items; scheduler K/V held: $held"
  [ "$kv_total" = 0 ] || die "workers still hold $kv_total bytes of K/V"
  [ "$done_items" = "$RESULTS" ] || die "coordinator items done = $done_items, results read = $RESULTS"
  METRIC_NOTE="K/V in use $kv_total; items done $done_items = results $RESULTS"
fi

echo "chaos_soak: $JOBS jobs, $LINES lines, $RESULTS results, $MISMATCHES mismatches; $KILLS kills, $DRAINS drains, $RESTARTS restarts"
mkdir -p "$(dirname "$OUT")"
if [ ! -f "$OUT" ]; then
  cat >"$OUT" <<'EOF'
# Chaos soak (`bench/chaos_soak.sh`)

A real `mesa coordinator` (`--heartbeat-timeout 2 --max-attempts 50`) and 3 `mesa worker`
processes (1 thread each) on loopback with stories260K. Jobs of 4-8 lines (24 lines in
all: short documents of 300-1500 characters and long ones of 8k-30k, chunked) are
submitted one after another, two in flight, for the soak's time, while every 3-8 s a
random worker is killed with SIGKILL and restarted, and twice one is drained with SIGTERM
(it must exit 0) and restarted. Checked: every line of every job has exactly one result,
equal (status, text, token counts) to `mesa run`'s; the coordinator lists exactly the jobs
submitted; and, when the binaries serve Prometheus metrics (`--metrics-listen`), no K/V is
left on any worker and the coordinator's items-done counter equals the results read.
`mismatches` must be 0. One row per run.

| date (UTC) | machine (CPU, cores, load avg) | s | kills | drains | restarts | jobs | lines | results | mismatches | metric checks | verdict | K/V transport |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
EOF
fi
if [ "$KV_TRANSPORT" != grpc ]; then
  echo "peer links ($KV_TRANSPORT): $(cat "$TMP"/worker-*.log | grep -c ' kv.link ') made," \
    "$(cat "$TMP"/worker-*.log | grep -c ' kv.link_lost ') lost mid-transfer," \
    "$(cat "$TMP"/worker-*.log | grep -c ' kv.link_fallback ') fell back to FetchKv," \
    "$(cat "$TMP"/worker-*.log | grep -c ' kv.link_closed_for_room ') closed to make room"
fi
cpu=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)
verdict=PASS; [ "$fail" = 0 ] || verdict=FAIL
echo "| $(date -u '+%Y-%m-%d %H:%M') | $cpu, $(nproc) cores, $(cut -d' ' -f1-3 /proc/loadavg) | $SECONDS_TOTAL | $KILLS | $DRAINS | $RESTARTS | $JOBS | $LINES | $RESULTS | $MISMATCHES | $METRIC_NOTE | $verdict | $KV_TRANSPORT${KV_LINKS:+, --kv-links $KV_LINKS}${PLACEMENT:+, --placement $PLACEMENT} |" >>"$OUT"
echo "appended a row to $OUT"
if [ "$fail" = 0 ]; then echo "PASS: chaos soak"; else log_tail; fi
exit "$fail"
