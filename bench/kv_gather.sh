#!/usr/bin/env bash
# A spread final's gather, one chunk at a time against prefetched (worker/kv_prefetch.h,
# `mesa worker --kv-prefetch`), over gRPC FetchKv and socket links on loopback, with
# real holder servers (kv_gather_bench: legs rotating per round, medians). Builds the
# benchmark, runs five setups and writes bench/results/kv_gather.md (machine, date,
# commit, load, tables):
#   1. the default: 12 chunks of 16 MiB on 3 holders, a 300 ms anchor;
#   2. no anchor (the fetches alone: what running several at once is worth here);
#   3. a bigger gather: 24 chunks of 32 MiB on 3 holders, a 300 ms anchor;
#   4. and 5. setups 1 and 2 with a holder's chunks moved up to 8 per link gather
#      (--max-batch 8, as over NCCL; the gRPC rows are unchanged by it).
#
# Usage: bench/kv_gather.sh [--rounds 5] [--build-dir DIR]
# Environment: MESA_BUILD_DIR (default build/release).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${MESA_BUILD_DIR:-$ROOT/build/release}"
OUT_MD="$ROOT/bench/results/kv_gather.md"
ROUNDS=5

say() { echo "kv_gather: $*" >&2; }
die() { echo "kv_gather: ERROR: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift 2 ;;
    --build-dir) BUILD_DIR="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

# shellcheck source=bench/build_target.sh
. "$ROOT/bench/build_target.sh"
BENCH="$(bench_build_target kv_gather_bench worker)"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
LOAD_START="$(cut -d" " -f1-3 /proc/loadavg)"
run() {  # title, bench arguments...
  local title="$1"; shift
  say "$title: $BENCH $* --rounds $ROUNDS"
  { echo "## $title"; echo; "$BENCH" "$@" --rounds "$ROUNDS"; echo; } >> "$TMP/report.md"
}
run "1. Default: 12 x 16 MiB on 3 holders, 300 ms anchor" --chunks 12 --chunk-mib 16 --holders 3 --anchor-ms 300
run "2. The fetches alone: 12 x 16 MiB on 3 holders, no anchor" --chunks 12 --chunk-mib 16 --holders 3 --anchor-ms 0
run "3. Bigger: 24 x 32 MiB on 3 holders, 300 ms anchor" --chunks 24 --chunk-mib 32 --holders 3 --anchor-ms 300
run "4. As 1, up to 8 chunks of a holder per link gather" --chunks 12 --chunk-mib 16 --holders 3 --anchor-ms 300 --max-batch 8
run "5. As 2, up to 8 chunks of a holder per link gather" --chunks 12 --chunk-mib 16 --holders 3 --anchor-ms 0 --max-batch 8
LOAD_END="$(cut -d" " -f1-3 /proc/loadavg)"

COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ]; then COMMIT="$COMMIT + uncommitted changes"; fi
{
  echo "# A spread final's gather: one chunk at a time against prefetched (loopback)"
  echo
  echo "- Date: $(date '+%Y-%m-%d %H:%M'); written by bench/kv_gather.sh"
  echo "- Commit: $COMMIT"
  echo "- Load average (1/5/15 min): $LOAD_START before, $LOAD_END after"
  echo
  echo "Seconds from the start of the final's anchor to its last chunk laid into the cache"
  echo "(a copy, as MesaPhases::AddMiddle). **One at a time**: the fetches start after the"
  echo "anchor, each once the previous chunk is laid (WorkerCore before worker/kv_prefetch.h)."
  echo "**Prefetch**: a KvPrefetcher started before the anchor, as \`mesa worker\` now does"
  echo "(--kv-prefetch 1G: up to 4 fetches at once). \"Beyond the anchor\" = the gather's seconds"
  echo "minus the anchor measured alone in the same round: the time the final waits on K/V."
  echo "The anchor is one thread's fixed work; the holders, the fetches and the anchor all"
  echo "share this machine's cores, so overlapping them gains less here than where the bytes"
  echo "come over a NIC or NVLink and the holders are other machines. Setups 4 and 5 move"
  echo "up to 8 chunks of a holder as one gather over the socket link (what \`mesa worker\`"
  echo "does over NCCL, where a gather's control round trips weigh against fast transfers);"
  echo "here, where the transfer dominates, that is no faster than one chunk per gather and"
  echo "makes the final wait for a whole batch before its first chunk, so sockets keep 1."
  echo
  cat "$TMP/report.md"
} > "$OUT_MD"
say "wrote $OUT_MD"
cat "$OUT_MD"
