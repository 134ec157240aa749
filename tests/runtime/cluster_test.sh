#!/usr/bin/env bash
# End-to-end checks of the distributed runtime with real processes on loopback: a
# `mesa coordinator`, `mesa worker` processes, the client commands (submit, status,
# wait, results, cancel, list), and the invariant of every scenario: each input line
# has exactly one result record, equal in text and token counts to `mesa run`'s.
#   cluster_test.sh MESA_BINARY SHARED_DIR SCENARIO
# Scenarios: equal (1/2/3 workers, each placement, both shared models), kill_worker,
# restart_coordinator, hang_worker, cancel, idempotent, bad_input, fingerprint, drain,
# local_workers, tls, metrics. Skips (exit 77) without the shared data.
set -uo pipefail
MESA="$(realpath "$1")"
SHARED="$2"
SCENARIO="$3"
MODEL="$SHARED/models/stories260K-f32.gguf"
MODEL2="$SHARED/models/tinystories-656k-f32.gguf"
if [ ! -f "$MODEL" ]; then echo "SKIP: $MODEL not found"; exit 77; fi
# TMP, PIDS (killed on exit), fail, die, log_tail, wait_for.
source "$(dirname "$0")/lib.sh"

# Documents of ~2k-16k tokens from the shared text, a short one, and a QA line; small
# generation budgets keep the run short.
python3 "$(dirname "$0")/../../scripts/make_sample_jobs.py" --shared "$SHARED" --out "$TMP/in.jsonl" >/dev/null || exit 1
echo '{"custom_id": "short", "document": "Once upon a time there was a little dog."}' >>"$TMP/in.jsonl"
python3 - "$SHARED/text/frankenstein.txt" >>"$TMP/in.jsonl" <<'PY'
import json, sys
text = open(sys.argv[1], encoding="utf-8").read()
start = text.find("\n\n", 20000) + 2
print(json.dumps({"custom_id": "frankenstein-16k", "document": text[start:start + 34000]}))
PY
FLAGS=(--max-tokens 12)

start_coordinator() {  # start_coordinator STORE [extra flags]: sets COORD and COORD_PID
  local store="$1"; shift
  rm -f "$TMP/coord.addr"
  "$MESA" coordinator --listen 127.0.0.1:0 --store "$store" --model "${COORD_MODEL:-$MODEL}" \
    --address-file "$TMP/coord.addr" --heartbeat-timeout 2 "$@" >>"$TMP/coordinator.log" 2>&1 &
  COORD_PID=$!
  PIDS+=("$COORD_PID")
  for _ in $(seq 100); do [ -s "$TMP/coord.addr" ] && break; sleep 0.1; done
  COORD=$(cat "$TMP/coord.addr" 2>/dev/null)
  [ -n "$COORD" ] || { die "coordinator did not start"; log_tail; exit 1; }
}
start_worker() {  # start_worker NAME [extra flags]: sets WORKER_PID
  local name="$1"; shift
  "$MESA" worker --coordinator "$COORD" --model "${WORKER_MODEL:-$MODEL}" --threads 1 --name "$name" "$@" \
    >>"$TMP/worker-$name.log" 2>&1 &
  WORKER_PID=$!
  PIDS+=("$WORKER_PID")
}
reference() {  # reference MODEL OUT: `mesa run` in one process
  "$MESA" run --model "$1" --input "$TMP/in.jsonl" --output "$2" "${FLAGS[@]}" --threads 2 \
    >"$TMP/reference.log" 2>&1 || { die "mesa run failed"; cat "$TMP/reference.log"; }
}
# same_results A B: one record per custom_id in B, equal to A's in text and token counts.
same_results() {
  python3 - "$1" "$2" <<'PY' || die "results differ ($1 vs $2)"
import json, sys
def load(p):
    recs = [json.loads(l) for l in open(p) if l.strip()]
    ids = [r.get("custom_id") for r in recs]
    assert len(ids) == len(set(ids)), f"{p}: duplicate custom_id records: {ids}"
    return {r.get("custom_id"): r for r in recs}
a, b = load(sys.argv[1]), load(sys.argv[2])
assert set(a) == set(b), f"custom_ids differ: {sorted(map(str, a))} vs {sorted(map(str, b))}"
for k in a:
    for f in ("status", "text", "prompt_tokens", "generated_tokens", "error"):
        assert a[k].get(f) == b[k].get(f), f"{k}.{f}: {a[k].get(f)!r} vs {b[k].get(f)!r}"
print(f"{len(a)} records equal")
PY
}
submit() {  # submit [flags]: prints the job id
  "$MESA" submit --coordinator "$COORD" --input "$TMP/in.jsonl" "${FLAGS[@]}" --json "$@" \
    | python3 -c "import json,sys; print(json.load(sys.stdin)['job_id'])"
}
status_field() {  # status_field JOB EXPR
  # Prints nothing while the coordinator is unreachable (a restart).
  "$MESA" status --coordinator "$COORD" "$1" --json 2>/dev/null \
    | python3 -c "import json,sys; d=json.load(sys.stdin); print($2)" 2>/dev/null
}
wait_status() {  # wait_status JOB STATUS SECONDS
  for _ in $(seq $(($3 * 10))); do
    [ "$(status_field "$1" "d['status']")" = "$2" ] && return 0; sleep 0.1
  done
  return 1
}
wait_progress() {  # wait_progress JOB N: until N items are settled
  for _ in $(seq 600); do
    local n; n=$(status_field "$1" "d['request_counts']['completed'] + d['request_counts']['failed']")
    [ "${n:-0}" -ge "$2" ] && return 0; sleep 0.1
  done
  return 1
}

# kv_moves JOB [all]: chunks' K/V moved ahead of the final (all: moves tried) from the
# coordinator's job.completed line (text log format).
kv_moves() {
  local line; line=$(grep " job.completed job=$1 " "$TMP/coordinator.log" | head -1)
  local ok; ok=$(sed -n 's/.* kv_moves=\([0-9]*\).*/\1/p' <<<"$line")
  local failed; failed=$(sed -n 's/.* kv_moves_failed=\([0-9]*\).*/\1/p' <<<"$line")
  if [ "${2:-}" = all ]; then echo $((${ok:-0} + ${failed:-0})); else echo "${ok:-0}"; fi
}

case "$SCENARIO" in
equal)
  for m in "$MODEL" "$MODEL2"; do
    [ -f "$m" ] || { echo "note: $m absent, skipped"; continue; }
    tag=$(basename "$m" .gguf)
    reference "$m" "$TMP/ref-$tag.jsonl"
    for placement in whole spread auto; do
      for n in 1 2 3; do
        COORD_MODEL="$m" start_coordinator "$TMP/store-$tag-$placement-$n" --placement "$placement"
        wpids=()
        for i in $(seq "$n"); do WORKER_MODEL="$m" start_worker "w$i"; wpids+=("$WORKER_PID"); done
        job=$(submit) || { die "submit failed"; log_tail; continue; }
        "$MESA" wait --coordinator "$COORD" "$job" --timeout 300 >"$TMP/wait.out" 2>&1 || { die "wait: $(cat "$TMP/wait.out")"; log_tail; }
        "$MESA" results --coordinator "$COORD" "$job" --output "$TMP/out.jsonl" || die "results"
        echo -n "$tag placement=$placement workers=$n: "; same_results "$TMP/ref-$tag.jsonl" "$TMP/out.jsonl"
        if [ "$placement" = spread ] && [ "$n" -ge 2 ]; then
          # Chunks' K/V moved to the final worker while other chunks computed (MoveKv).
          moved=$(kv_moves "$job")
          [ "${moved:-0}" -gt 0 ] && echo "  $moved chunks' K/V moved ahead of the final" \
            || die "no chunk K/V moved ahead of the final with $n workers (coordinator log)"
        fi
        kill -TERM "${wpids[@]}" "$COORD_PID" 2>/dev/null; wait "${wpids[@]}" "$COORD_PID" 2>/dev/null
      done
    done
  done
  ;;
local_workers)
  reference "$MODEL" "$TMP/ref.jsonl"
  for placement in whole spread; do
    "$MESA" run --model "$MODEL" --input "$TMP/in.jsonl" --output "$TMP/local-$placement.jsonl" "${FLAGS[@]}" \
      --workers 3 --placement "$placement" --threads 3 >"$TMP/local.log" 2>&1 || { die "mesa run --workers 3"; cat "$TMP/local.log"; }
    echo -n "mesa run --workers 3 --placement $placement: "; same_results "$TMP/ref.jsonl" "$TMP/local-$placement.jsonl"
  done
  ;;
kill_worker)
  reference "$MODEL" "$TMP/ref.jsonl"
  start_coordinator "$TMP/store" --placement spread
  start_worker a; A=$WORKER_PID
  start_worker b
  job=$(submit) || { die "submit"; log_tail; exit 1; }
  sleep 0.5
  [ "$(status_field "$job" "d['status']")" = in_progress ] || die "the job was not in progress at the kill"
  { kill -9 "$A"; wait "$A"; } 2>/dev/null; echo "killed worker a mid-job"
  start_worker c
  "$MESA" wait --coordinator "$COORD" "$job" --timeout 300 >"$TMP/wait.out" 2>&1 || { die "wait: $(cat "$TMP/wait.out")"; log_tail; }
  "$MESA" results --coordinator "$COORD" "$job" --output "$TMP/out.jsonl" || die "results"
  same_results "$TMP/ref.jsonl" "$TMP/out.jsonl"
  ;;
kv_socket)
  # K/V over socket links (--kv-transport socket) between real worker processes, beside a
  # worker without them (FetchKv both ways); then a linked worker killed outright mid-job:
  # its pairs' links die with it, the chunks it held are recomputed, records still equal.
  reference "$MODEL" "$TMP/ref.jsonl"
  start_coordinator "$TMP/store" --placement spread
  start_worker a --kv-transport socket; A=$WORKER_PID
  start_worker b --kv-transport socket --kv-links 1  # its link to a and a's to it take turns
  start_worker g --kv-transport grpc
  # `mesa workers` lists the three with their device and K/V transport once registered.
  for _ in $(seq 100); do
    "$MESA" workers --coordinator "$COORD" --json >"$TMP/workers.json" 2>/dev/null &&
      [ "$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$TMP/workers.json")" = 3 ] && break
    sleep 0.1
  done
  python3 - "$TMP/workers.json" <<'PY' || die "mesa workers --json: $(cat "$TMP/workers.json")"
import json, sys
ws = {w["name"]: w for w in json.load(open(sys.argv[1]))}
assert sorted(ws) == ["a", "b", "g"], sorted(ws)
assert [ws[n]["kv_transport"] for n in "abg"] == ["socket", "socket", "grpc"], ws
assert all(w["device"].startswith("cpu (") and w["state"] == "idle" and w["task"] is None for w in ws.values()), ws
print("mesa workers: a, b (socket) and g (grpc), each idle on", ws["a"]["device"])
PY
  "$MESA" workers --coordinator "$COORD" | grep -q "^ID .*STATE .*DEVICE" || die "mesa workers: no table header"
  job=$(submit) || { die "submit"; log_tail; exit 1; }
  "$MESA" wait --coordinator "$COORD" "$job" --timeout 300 >"$TMP/wait.out" 2>&1 || { die "wait: $(cat "$TMP/wait.out")"; log_tail; }
  "$MESA" results --coordinator "$COORD" "$job" --output "$TMP/out.jsonl" || die "results"
  echo -n "socket links, 3 workers: "; same_results "$TMP/ref.jsonl" "$TMP/out.jsonl"
  links=$(cat "$TMP"/worker-a.log "$TMP"/worker-b.log | grep -c " kv.link " || true)
  fallbacks=$(cat "$TMP"/worker-a.log "$TMP"/worker-b.log | grep -c " kv.link_fallback " || true)
  echo "  links made: $links; holders without a link (FetchKv): $fallbacks;" \
    "closed by b (--kv-links 1) to make room: $(grep -c " kv.link_closed_for_room " "$TMP/worker-b.log")"
  [ "$links" -ge 1 ] || die "no socket link was made between workers a and b"
  grep -q "kv.link_fallback.*no socket links" "$TMP"/worker-a.log "$TMP"/worker-b.log \
    || echo "  (no socket worker fetched from g in this run)"
  job=$(submit) || { die "submit"; log_tail; exit 1; }
  sleep 0.5
  [ "$(status_field "$job" "d['status']")" = in_progress ] || die "the job was not in progress at the kill"
  { kill -9 "$A"; wait "$A"; } 2>/dev/null; echo "killed worker a mid-job"
  start_worker c --kv-transport socket --kv-links 1
  "$MESA" wait --coordinator "$COORD" "$job" --timeout 300 >"$TMP/wait.out" 2>&1 || { die "wait: $(cat "$TMP/wait.out")"; log_tail; }
  "$MESA" results --coordinator "$COORD" "$job" --output "$TMP/out2.jsonl" || die "results"
  echo -n "after the kill: "; same_results "$TMP/ref.jsonl" "$TMP/out2.jsonl"
  # A socket link cannot go beside TLS: refused at start, saying why.
  P="$TMP/certs"; bash "$(dirname "$0")/../../scripts/make_test_certs.sh" "$P" >/dev/null 2>&1 || true
  if [ -f "$P/worker.pem" ]; then
    "$MESA" worker --coordinator "$COORD" --model "$MODEL" --kv-transport socket --tls-cert "$P/worker.pem" \
      --tls-key "$P/worker.key" --tls-ca "$P/ca.pem" >"$TMP/tls.log" 2>&1; rc=$?
    [ "$rc" -ne 0 ] && grep -q "plain TCP" "$TMP/tls.log" && echo "--kv-transport socket with TLS: refused" \
      || { die "--kv-transport socket with TLS was not refused (rc $rc)"; cat "$TMP/tls.log"; }
  fi
  # NCCL moves GPU memory: on the CPU it is refused, saying so.
  "$MESA" worker --coordinator "$COORD" --model "$MODEL" --kv-transport nccl >"$TMP/nccl.log" 2>&1; rc=$?
  [ "$rc" -ne 0 ] && grep -q "needs --device cuda" "$TMP/nccl.log" && echo "--kv-transport nccl on the CPU: refused" \
    || { die "--kv-transport nccl on the CPU did not fail clearly (rc $rc)"; cat "$TMP/nccl.log"; }
  ;;
restart_coordinator)
  # --max-attempts 1: a failure counted for the coordinator's own shutdown would fail an item.
  reference "$MODEL" "$TMP/ref.jsonl"
  start_coordinator "$TMP/store" --placement whole --max-attempts 1
  port=${COORD##*:}
  start_worker a
  job=$(submit) || { die "submit"; log_tail; exit 1; }
  # Workers find a coordinator by address: each restart uses the same one.
  restart() {
    "$MESA" coordinator --listen "127.0.0.1:$port" --store "$TMP/store" --model "$MODEL" --heartbeat-timeout 2 \
      --placement whole --max-attempts 1 >>"$TMP/coordinator.log" 2>&1 &
    COORD_PID=$!; PIDS+=("$COORD_PID")
  }
  wait_progress "$job" 1 || die "no progress before the first restart"
  kill -TERM "$COORD_PID"; wait "$COORD_PID" 2>/dev/null; echo "stopped the coordinator (SIGTERM) mid-job"
  restart
  # `mesa wait` follows the job while the coordinator comes back.
  "$MESA" wait --coordinator "$COORD" "$job" --timeout 300 >"$TMP/wait1.out" 2>&1 &
  waiter=$!
  wait_progress "$job" 3 || die "no progress before the second restart"
  kill -9 "$COORD_PID"; wait "$COORD_PID" 2>/dev/null; echo "killed the coordinator (SIGKILL) mid-job"
  restart
  wait "$waiter" || { die "wait across the restarts: $(cat "$TMP/wait1.out")"; log_tail; }
  "$MESA" results --coordinator "$COORD" "$job" --output "$TMP/out.jsonl" || die "results"
  same_results "$TMP/ref.jsonl" "$TMP/out.jsonl"
  ;;
hang_worker)
  reference "$MODEL" "$TMP/ref.jsonl"
  start_coordinator "$TMP/store" --placement whole
  start_worker a; A=$WORKER_PID
  job=$(submit) || { die "submit"; log_tail; exit 1; }
  sleep 0.3
  [ "$(status_field "$job" "d['status']")" = in_progress ] || die "the job was not in progress at the stop"
  kill -STOP "$A"; echo "stopped worker a (it hangs: no answers, no heartbeats)"
  start_worker b
  "$MESA" wait --coordinator "$COORD" "$job" --timeout 300 >"$TMP/wait.out" 2>&1 || { die "wait: $(cat "$TMP/wait.out")"; log_tail; }
  "$MESA" results --coordinator "$COORD" "$job" --output "$TMP/out.jsonl" || die "results"
  same_results "$TMP/ref.jsonl" "$TMP/out.jsonl"
  kill -CONT "$A"
  ;;
cancel)
  start_coordinator "$TMP/store"
  start_worker a
  job=$(submit) || { die "submit"; log_tail; exit 1; }
  wait_progress "$job" 1 || die "no progress"
  "$MESA" cancel --coordinator "$COORD" "$job" >/dev/null || die "cancel"
  wait_status "$job" cancelled 30 || die "status after cancel: $(status_field "$job" "d['status']")"
  "$MESA" wait --coordinator "$COORD" "$job" --timeout 10 >/dev/null 2>&1 && die "wait on a cancelled job exited 0"
  "$MESA" results --coordinator "$COORD" "$job" --output "$TMP/out.jsonl" || die "results of a cancelled job"
  python3 -c "
import json; recs=[json.loads(l) for l in open('$TMP/out.jsonl')]
assert len(recs) >= 1, recs; ids=[r['custom_id'] for r in recs]; assert len(ids)==len(set(ids)), ids" || die "cancelled results"
  "$MESA" list --coordinator "$COORD" --json | python3 -c "import json,sys; d=json.load(sys.stdin); assert d[0]['status']=='cancelled', d" || die "list"
  ;;
job_placement)
  # A job's own --placement wins over the coordinator's.
  reference "$MODEL" "$TMP/ref.jsonl"
  start_coordinator "$TMP/store" --placement whole
  start_worker a; start_worker b
  job=$(submit --placement spread) || { die "submit"; log_tail; exit 1; }
  [ "$(status_field "$job" "d.get('placement')")" = spread ] || die "the job object does not show placement spread"
  "$MESA" wait --coordinator "$COORD" "$job" --timeout 300 >"$TMP/wait.out" 2>&1 || { die "wait: $(cat "$TMP/wait.out")"; log_tail; }
  "$MESA" results --coordinator "$COORD" "$job" --output "$TMP/out.jsonl" || die "results"
  same_results "$TMP/ref.jsonl" "$TMP/out.jsonl"
  [ "$(kv_moves "$job" all)" -gt 0 ] || die "no chunk K/V moved: the job did not run spread"
  ;;
idempotent)
  start_coordinator "$TMP/store"
  start_worker a
  j1=$(submit --request-id 7f1c6a52-req) || die "submit 1"
  j2=$(submit --request-id 7f1c6a52-req) || die "submit 2"
  [ "$j1" = "$j2" ] || die "one request_id gave two jobs: $j1 $j2"
  n=$("$MESA" list --coordinator "$COORD" --json | python3 -c "import json,sys; print(len(json.load(sys.stdin)))")
  [ "$n" = 1 ] || die "$n jobs listed after two submits with one request_id"
  ;;
bad_input)
  start_coordinator "$TMP/store"
  start_worker a
  printf '%s\n' '{"custom_id": "ok", "document": "A cat sat."}' 'not json' '{"custom_id": "nodoc"}' \
    '{"custom_id": "ok", "document": "again"}' >"$TMP/bad.jsonl"
  job=$("$MESA" submit --coordinator "$COORD" --input "$TMP/bad.jsonl" "${FLAGS[@]}" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['job_id'])")
  "$MESA" wait --coordinator "$COORD" "$job" --timeout 60 >/dev/null || die "wait"
  "$MESA" results --coordinator "$COORD" "$job" --output "$TMP/out.jsonl" || die "results"
  "$MESA" run --model "$MODEL" --input "$TMP/bad.jsonl" --output "$TMP/ref.jsonl" "${FLAGS[@]}" >/dev/null 2>&1
  python3 - "$TMP/ref.jsonl" "$TMP/out.jsonl" <<'PY' || die "bad lines differ from mesa run"
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]; b = [json.loads(l) for l in open(sys.argv[2])]
key = lambda r: r["line"]
a.sort(key=key); b.sort(key=key)
assert [(r["line"], r["status"], r.get("error"), r.get("text")) for r in a] == \
       [(r["line"], r["status"], r.get("error"), r.get("text")) for r in b], (a, b)
assert [r["status"] for r in b] == ["ok", "error", "error", "error"], b
print("bad lines fail alone, as in mesa run")
PY
  "$MESA" status --coordinator "$COORD" nosuchjob >/dev/null 2>"$TMP/err" && die "status of an unknown job succeeded"
  grep -qi "not found\|unknown" "$TMP/err" || die "unknown job message: $(cat "$TMP/err")"
  ;;
fingerprint)
  [ -f "$MODEL2" ] || { echo "SKIP: $MODEL2 not found"; exit 77; }
  start_coordinator "$TMP/store"
  "$MESA" worker --coordinator "$COORD" --model "$MODEL2" --threads 1 --name other >"$TMP/other.log" 2>&1 &
  p=$!; PIDS+=("$p")
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  wait "$p"; rc=$?
  [ "$rc" != 0 ] || die "a worker with another model was accepted"
  grep -q "different model" "$TMP/other.log" || die "refusal message: $(cat "$TMP/other.log")"
  ;;
drain)
  start_coordinator "$TMP/store"
  start_worker a; A=$WORKER_PID
  sleep 1
  kill -TERM "$A"
  for _ in $(seq 100); do kill -0 "$A" 2>/dev/null || break; sleep 0.1; done
  wait "$A"; rc=$?
  [ "$rc" = 0 ] || die "drained worker exited $rc"
  grep -q "deregistered" "$TMP/worker-a.log" || die "worker did not deregister: $(cat "$TMP/worker-a.log")"
  ;;
tls)
  # TLS + mutual TLS + bearer token with real processes: a job equal to `mesa run`, no
  # token in `ps` or any log, a foreign worker and token-less or plain-text clients
  # refused, open secret files refused, health ports answering in plain text.
  P="$TMP/pki"
  bash "$(dirname "$0")/../../scripts/make_test_certs.sh" "$P" || { die "make_test_certs.sh (openssl?)"; exit 1; }
  TOKEN="tls-scenario-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  (umask 077; printf '# the cluster token\n\n%s\n' "$TOKEN" >"$TMP/tokens")
  reference "$MODEL" "$TMP/ref.jsonl"
  # A token file others may read is refused, naming the file, not the token.
  cp "$TMP/tokens" "$TMP/tokens-open"; chmod 644 "$TMP/tokens-open"
  "$MESA" coordinator --listen 127.0.0.1:0 --store "$TMP/store-x" --model "$MODEL" \
    --auth-token-file "$TMP/tokens-open" >"$TMP/open-token.log" 2>&1 && die "an open token file was accepted"
  grep -q "tokens-open.*other users" "$TMP/open-token.log" || die "open token file message: $(cat "$TMP/open-token.log")"
  # Usage errors (exit 2): half a key pair, a client CA without TLS, a token as a value.
  "$MESA" coordinator --store "$TMP/store-x" --model "$MODEL" --tls-client-ca "$P/ca.pem" >/dev/null 2>&1; rc=$?
  [ "$rc" = 2 ] || die "--tls-client-ca without --tls-cert exited $rc, not 2"
  "$MESA" worker --model "$MODEL" --tls-cert "$P/worker.pem" >/dev/null 2>&1; rc=$?
  [ "$rc" = 2 ] || die "--tls-cert without --tls-key exited $rc, not 2"
  "$MESA" list --coordinator 127.0.0.1:1 --token "$TOKEN" >/dev/null 2>&1; rc=$?
  [ "$rc" = 2 ] || die "a --token value was not a usage error (exit $rc)"
  member() { echo --tls-cert "$P/$1.pem" --tls-key "$P/$1.key" --tls-ca "$P/ca.pem" --tls-client-ca "$P/ca.pem"; }
  # shellcheck disable=SC2046
  start_coordinator "$TMP/store" --placement spread $(member coordinator) --auth-token-file "$TMP/tokens" \
    --health-listen 127.0.0.1:0
  # shellcheck disable=SC2046
  start_worker a $(member worker) --health-listen 127.0.0.1:0
  # shellcheck disable=SC2046
  start_worker b $(member worker)
  # shellcheck disable=SC2046
  start_worker foreign $(member foreign) --register-timeout 3; F=$WORKER_PID
  CL=(--tls-ca "$P/ca.pem" --token-file "$TMP/tokens")
  # Clients without a token, with TLS but a wrong token, and in plain text.
  "$MESA" submit --coordinator "$COORD" --input "$TMP/in.jsonl" --tls-ca "$P/ca.pem" >/dev/null 2>"$TMP/err" \
    && die "a submission without a token was accepted"
  grep -q "bearer token" "$TMP/err" || die "no-token message: $(cat "$TMP/err")"
  MESA_TOKEN="wrong-token-0123456789abcdef" "$MESA" list --coordinator "$COORD" --tls-ca "$P/ca.pem" >/dev/null 2>"$TMP/err" \
    && die "a wrong token was accepted"
  grep -q "not accepted" "$TMP/err" || die "wrong-token message: $(cat "$TMP/err")"
  MESA_TOKEN="$TOKEN" "$MESA" list --coordinator "$COORD" >/dev/null 2>"$TMP/err" && die "plain text reached the TLS port"
  job=$(submit "${CL[@]}") || { die "submit failed"; log_tail; }
  MESA_TOKEN="$TOKEN" MESA_TLS_CA="$P/ca.pem" "$MESA" wait --coordinator "$COORD" "$job" --timeout 300 >"$TMP/wait.out" 2>&1 \
    || die "wait: $(cat "$TMP/wait.out")"
  "$MESA" results --coordinator "$COORD" "$job" --output "$TMP/out.jsonl" "${CL[@]}" || die "results"
  echo -n "TLS + mTLS + token: "; same_results "$TMP/ref.jsonl" "$TMP/out.jsonl"
  n=$(MESA_TOKEN="$TOKEN" MESA_TLS_CA="$P/ca.pem" "$MESA" list --coordinator "$COORD" --json | python3 -c "import json,sys; print(len(json.load(sys.stdin)))")
  [ "$n" = 1 ] || die "$n jobs in the store (refused calls must create none)"
  # The foreign worker never joined and gave up.
  for _ in $(seq 100); do kill -0 "$F" 2>/dev/null || break; sleep 0.1; done
  wait "$F" 2>/dev/null && die "the foreign worker exited 0"
  [ "$(grep -c " worker.joined " "$TMP/coordinator.log")" = 2 ] \
    || die "expected exactly 2 workers to join: $(grep joined "$TMP/coordinator.log")"
  # Health ports (plain text), and the main port's health over TLS without a token.
  ch=$(sed -n 's/.* health.listening address=\([0-9.:]*\).*/\1/p' "$TMP/coordinator.log" | head -1)
  wh=$(sed -n 's/.* health.listening address=\([0-9.:]*\).*/\1/p' "$TMP/worker-a.log" | head -1)
  [ "$("$MESA" health "$ch")" = SERVING ] || die "coordinator health port $ch"
  [ "$("$MESA" health "$wh")" = SERVING ] || die "worker health port $wh"
  [ "$("$MESA" health "$COORD" --tls-ca "$P/ca.pem")" = SERVING ] || die "coordinator main-port health over TLS"
  "$MESA" health "$COORD" >/dev/null 2>&1 && die "plain-text health on the TLS port answered"
  # No token on any command line (ps) or in any log or output.
  ps -eo args >"$TMP/ps.txt"
  grep -qF "$TOKEN" "$TMP/ps.txt" && die "the token is on a command line"
  grep -lF "$TOKEN" "$TMP"/*.log "$TMP"/*.out "$TMP/err" && die "the token is in a log (above)"
  kill -TERM "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null
  grep -lF "$TOKEN" "$TMP"/*.log && die "the token is in a log after shutdown (above)"
  ;;
metrics)
  # Prometheus metrics and JSON event logs of real processes agree with the run
  # (tests/runtime/metrics_check.py); bad ops flags fail clearly.
  PY=""
  for p in python3 /usr/bin/python3; do "$p" -c 'import prometheus_client' 2>/dev/null && { PY=$p; break; }; done
  [ -n "$PY" ] || { die "python3-prometheus-client is not installed (scripts/setup.sh installs it)"; exit 1; }
  start_coordinator "$TMP/store" --placement spread --metrics-listen 127.0.0.1:0 --log-format json
  start_worker a --metrics-listen 127.0.0.1:0 --log-format json
  start_worker b --metrics-listen 127.0.0.1:0 --log-level debug
  for _ in $(seq 100); do
    [ "$(grep -c worker.registered "$TMP"/worker-*.log | awk -F: '{s+=$2} END {print s}')" = 2 ] && break; sleep 0.1
  done
  job=$(submit --request-id metrics-req-1) || { die "submit"; log_tail; exit 1; }
  "$MESA" wait --coordinator "$COORD" "$job" --timeout 300 >"$TMP/wait.out" 2>&1 || { die "wait: $(cat "$TMP/wait.out")"; log_tail; }
  "$MESA" results --coordinator "$COORD" "$job" --output "$TMP/out.jsonl" || die "results"
  "$PY" "$(dirname "$0")/metrics_check.py" --coordinator-log "$TMP/coordinator.log" \
    --worker-log "$TMP/worker-a.log" --worker-log "$TMP/worker-b.log" --input "$TMP/in.jsonl" \
    --results "$TMP/out.jsonl" --job "$job" --request-id metrics-req-1 || { die "metrics check"; log_tail; }
  grep -q " debug task.done job=$job .*worker=w" "$TMP/worker-b.log" || die "worker b (debug) logged no task.done"
  # The metrics port is taken: a second server fails at once, naming it.
  port=$(sed -n 's/.*"event":"metrics.listening","address":"\([^"]*\)".*/\1/p' "$TMP/coordinator.log" | head -1)
  "$MESA" coordinator --listen 127.0.0.1:0 --store "$TMP/store2" --model "$MODEL" --metrics-listen "$port" \
    >"$TMP/taken.log" 2>&1 && die "a second coordinator on metrics port $port started"
  grep -q "cannot listen on '$port'" "$TMP/taken.log" || die "taken port message: $(cat "$TMP/taken.log")"
  "$MESA" worker --coordinator "$COORD" --model "$MODEL" --metrics-listen "127.0.0.1:99999" >"$TMP/bad.log" 2>&1 \
    && die "--metrics-listen 127.0.0.1:99999 accepted"
  grep -q "not 0-65535" "$TMP/bad.log" || die "bad port message: $(cat "$TMP/bad.log")"
  "$MESA" worker --coordinator "$COORD" --model "$MODEL" --log-level loud >/dev/null 2>&1; rc=$?
  [ "$rc" = 2 ] || die "--log-level loud exited $rc, not 2 (usage error)"
  ;;
*) echo "unknown scenario $SCENARIO"; exit 2 ;;
esac
if [ "$fail" = 0 ]; then echo "PASS: $SCENARIO"; else log_tail; fi
exit "$fail"
