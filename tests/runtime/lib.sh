# Sourced by the scripts that start real Mesa processes (tests/runtime/cluster_test.sh,
# mpi_test.sh, slurm_test.sh, bench/chaos_soak.sh): a scratch directory, the processes
# they start, cleanup on exit, and the small helpers they share.
#   TMP   a fresh directory, removed on exit
#   PIDS  processes to kill on exit: start one in the background, then PIDS+=("$!")
#   fail  1 once die was called
# On exit `cleanup` runs: it kills PIDS and removes TMP. A script that needs more
# redefines `cleanup` after sourcing this file, using the pieces below.
TMP=$(mktemp -d)
PIDS=()
fail=0

die() { echo "FAIL: $*"; fail=1; }
show() { echo "--- $1"; tail -"${2:-40}" "$1"; }  # show FILE [LINES]
log_tail() { for f in "$TMP"/*.log; do echo "--- $f"; tail -15 "$f"; done; }
wait_for() {  # wait_for SECONDS COMMAND...: until COMMAND succeeds (1 when it never did)
  local n=$(($1 * 10)); shift
  for _ in $(seq "$n"); do "$@" && return 0; sleep 0.1; done
  return 1
}

# kill_started [--term-first]: every process in PIDS, SIGKILL (with --term-first a
# SIGTERM and a second to end first, for daemons that end their children).
kill_started() {
  local p
  if [ "${1:-}" = --term-first ]; then
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    sleep 1
  fi
  { for p in "${PIDS[@]}"; do kill -9 "$p"; done; wait; } 2>/dev/null
}
# kill_stray_ranks LOG...: `mesa cluster` ranks that outlived their launcher (none
# should), by the pids they logged, if they are this test's (their command line names TMP).
kill_stray_ranks() {
  local p
  for p in $(sed -n 's/^mesa cluster: rank [0-9]* of .*, pid \([0-9]*\),.*/\1/p' "$@" 2>/dev/null); do
    grep -q "$TMP" "/proc/$p/cmdline" 2>/dev/null && kill -9 "$p" 2>/dev/null
  done
}

cleanup() {
  kill_started
  rm -rf "$TMP"
}
trap cleanup EXIT
