#!/usr/bin/env bash
# CPU engine speed: Mesa against llama.cpp (llama-bench) on the same GGUF files.
#
# 1. Builds llama.cpp's llama-bench from the reference source bundle
#    ($MESA_LLAMACPP_DIR/src, see scripts/setup_reference.sh) into
#    $MESA_LLAMACPP_DIR/build-bench (CPU only, GGML_NATIVE=ON; cached, ~7.5 min
#    on 2 cores the first time).
# 2. Writes a ~100M-parameter random-weight llama GGUF in F32 with
#    mesa_make_random_model and quantizes it to F16, Q8_0 and Q4_K (llama.cpp's
#    Q4_K_M mix) with mesa_llama_ref (cached in $MESA_BENCH_MODELS).
# 3. Runs `mesa bench` and `llama-bench` on each file (prompt P, generation G,
#    T threads, median of R repetitions), alternating the engines for K rounds, and
#    writes the medians over the rounds to bench/results/engine_cpu.md.
#
# Usage: bench/compare_llamacpp.sh [-p P] [-n G] [-t T] [-r R] [-k K] [--types "f32 f16 q8_0 q4_k"]
#                                  [--build-dir DIR] [--build-only]
# Environment: MESA_LLAMACPP_DIR, MESA_BUILD_DIR (default build/release), MESA_SHARED_DIR,
#   MESA_BENCH_MODELS (default ~/.cache/mesa/bench-models), LLAMA_BENCH_JOBS
#   (parallel jobs for the llama-bench build, default nproc), LLAMA_BENCH_ARGS
#   (extra llama-bench arguments, e.g. "-fa 0 -ctk f32 -ctv f32").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LLAMA_DIR="${MESA_LLAMACPP_DIR:-$HOME/.cache/mesa/llamacpp-3.22.1}"
BUILD_DIR="${MESA_BUILD_DIR:-$ROOT/build/release}"
MODELS="${MESA_BENCH_MODELS:-$HOME/.cache/mesa/bench-models}"
SHARED="${MESA_SHARED_DIR:-$ROOT/../shared}"
P=128 G=32 T=2 R=3 K=5
TYPES="f32 f16 q8_0 q4_k"
BUILD_ONLY=0
OUT_MD="$ROOT/bench/results/engine_cpu.md"

say() { echo "compare_llamacpp: $*" >&2; }
die() { echo "compare_llamacpp: ERROR: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    -p) P="$2"; shift 2 ;;
    -n) G="$2"; shift 2 ;;
    -t) T="$2"; shift 2 ;;
    -r) R="$2"; shift 2 ;;
    -k) K="$2"; shift 2 ;;
    --types) TYPES="$2"; shift 2 ;;
    --build-dir) BUILD_DIR="$2"; shift 2 ;;
    --build-only) BUILD_ONLY=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
command -v python3 >/dev/null || die "python3 is needed to read the JSON results"

# --- 1. llama-bench -------------------------------------------------------------
LLAMA_BENCH="$LLAMA_DIR/build-bench/bin/llama-bench"
build_llama_bench() {
  if [ -x "$LLAMA_BENCH" ]; then
    say "llama-bench cached at $LLAMA_BENCH"
    return
  fi
  if [ ! -f "$LLAMA_DIR/src/CMakeLists.txt" ]; then
    MESA_LLAMACPP_DIR="$LLAMA_DIR" "$ROOT/scripts/setup_reference.sh" ||
      die "llama.cpp source not available (see scripts/setup_reference.sh)"
  fi
  local jobs="${LLAMA_BENCH_JOBS:-$(nproc)}"
  say "building llama-bench in $LLAMA_DIR/build-bench with -j$jobs (once; several minutes)"
  cmake -S "$LLAMA_DIR/src" -B "$LLAMA_DIR/build-bench" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF \
    >"$LLAMA_DIR/build-bench.configure.log" 2>&1 ||
    die "configuring llama.cpp failed, see $LLAMA_DIR/build-bench.configure.log"
  cmake --build "$LLAMA_DIR/build-bench" --target llama-bench -j "$jobs" \
    >"$LLAMA_DIR/build-bench.build.log" 2>&1 ||
    die "building llama-bench failed, see $LLAMA_DIR/build-bench.build.log"
  [ -x "$LLAMA_BENCH" ] || die "llama-bench not found after the build"
}
build_llama_bench
[ "$BUILD_ONLY" = 1 ] && exit 0

# --- 2. Mesa tools and the model files --------------------------------------------
find_tool() {  # name -> path under the build dir, building it if the target exists
  local name="$1" path
  path="$(find "$BUILD_DIR" -type f -name "$name" -perm -u+x 2>/dev/null | head -n1)"
  if [ -z "$path" ] && [ -f "$BUILD_DIR/build.ninja" ]; then
    cmake --build "$BUILD_DIR" --target "$name" >&2 || true
    path="$(find "$BUILD_DIR" -type f -name "$name" -perm -u+x 2>/dev/null | head -n1)"
  fi
  echo "$path"
}
MESA="$(find_tool mesa)"
REF="$(find_tool mesa_llama_ref)"
MAKE_MODEL="$(find_tool mesa_make_random_model)"
[ -n "$MESA" ] || die "mesa not built in $BUILD_DIR (cmake --preset release && cmake --build --preset release)"
[ -n "$REF" ] || die "mesa_llama_ref not built in $BUILD_DIR: run scripts/setup_reference.sh, reconfigure, build"

mkdir -p "$MODELS"
F32="$MODELS/random-100m-llama-f32.gguf"
if [ ! -f "$F32" ]; then
  [ -n "$MAKE_MODEL" ] || die "mesa_make_random_model not built in $BUILD_DIR"
  say "writing the random ~100M-parameter llama model $F32"
  # llama shape at ~GPT-2-small scale, with stories260K's tokenizer (vocab 512).
  "$MAKE_MODEL" --arch llama --n-embd 768 --n-layer 12 --n-head 12 --n-head-kv 12 \
    --n-ff 2048 --tokenizer-from "$SHARED/models/stories260K-f32.gguf" \
    --ctx 2048 --seed 1 --out "$F32.tmp" >&2
  mv "$F32.tmp" "$F32"
fi
model_for() {  # type -> file (quantized with llama.cpp, cached)
  local type="$1" file
  if [ "$type" = f32 ]; then echo "$F32"; return; fi
  file="$MODELS/random-100m-llama-$type.gguf"
  if [ ! -f "$file" ]; then
    say "quantizing to $type with llama.cpp"
    "$REF" quantize --quiet --in "$F32" --out "$file.tmp" --type "$type" --threads "$T" >&2
    mv "$file.tmp" "$file"
  fi
  echo "$file"
}

# --- 3. Runs ------------------------------------------------------------------------

run_mesa() {  # file -> "prefill decode rss" (medians over R repetitions after a warm-up,
              # like llama-bench)
  local file="$1" json
  json="$("$MESA" bench --model "$file" --prompt-tokens "$P" --gen-tokens "$G" --threads "$T" \
            --reps "$R" --json)" || die "mesa bench failed on $file"
  echo "$json" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["prefill_tokens_per_s"], d["decode_tokens_per_s"], d.get("peak_rss_bytes", 0))'
}

run_llama() {  # file -> "prefill decode decode@0" (medians of llama-bench's samples)
  # `mesa bench` decodes right after its P-token prompt, so each generated token attends
  # to P..P+G cached tokens. llama-bench's plain tg test starts from an empty cache; its
  # -d P (depth) runs the same decode behind P cached tokens. Both are measured: the
  # ratio uses the like-for-like one (depth P), the table also shows depth 0.
  local file="$1" pp tg tg0
  pp="$(llama_json "$file" -p "$P" -n 0)"
  tg="$(llama_json "$file" -p 0 -n "$G" -d "$P")"
  tg0="$(llama_json "$file" -p 0 -n "$G")"
  echo "$pp $tg $tg0"
}

llama_json() {  # file, llama-bench test args -> median tokens/s of its one test
  local file="$1" json
  shift
  # shellcheck disable=SC2086
  json="$("$LLAMA_BENCH" -m "$file" "$@" -t "$T" -r "$R" -o json ${LLAMA_BENCH_ARGS:-} 2>/dev/null)" ||
    die "llama-bench failed on $file"
  echo "$json" | python3 -c '
import json, statistics, sys
r = json.load(sys.stdin)[0]
print(statistics.median(r.get("samples_ts") or [r["avg_ts"]]))'
}

rows=() rounds=()
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
for type in $TYPES; do
  file="$(model_for "$type")"
  # Rounds alternate the two engines, so slow phases of a shared machine (other VMs'
  # memory traffic is invisible from here) hit both alike; each number is the median
  # over the rounds of per-round medians.
  mp=() md=() lp=() ld=() ld0=() m_rss=0
  for ((k = 1; k <= K; k++)); do
    say "[$type] round $k/$K: mesa bench ($R runs), llama-bench ($R repetitions)"
    read -r a b m_rss < <(run_mesa "$file")
    mp+=("$a") md+=("$b")
    read -r a2 b2 c < <(run_llama "$file")
    lp+=("$a2") ld+=("$b2") ld0+=("$c")
    rounds+=("$(printf '[%s] round %d: prefill mesa %.1f / llama.cpp %.1f; decode mesa %.2f / llama.cpp %.2f' \
          "$type" "$k" "$a" "$a2" "$b" "$b2")")
    say "${rounds[-1]}"
  done
  m_pre="$(median "${mp[@]}")" m_dec="$(median "${md[@]}")"
  l_pre="$(median "${lp[@]}")" l_dec="$(median "${ld[@]}")" l_dec0="$(median "${ld0[@]}")"
  rows+=("$type $m_pre $l_pre $m_dec $l_dec $m_rss $(stat -c %s "$file") $l_dec0")
  say "$(printf '[%s] prefill mesa %.1f / llama.cpp %.1f tok/s; decode mesa %.2f / llama.cpp %.2f tok/s' \
        "$type" "$m_pre" "$l_pre" "$m_dec" "$l_dec")"
done

# --- 4. Report ------------------------------------------------------------------------
mkdir -p "$(dirname "$OUT_MD")"
cpu="$(lscpu | sed -n 's/^Model name: *//p' | head -n1)"
cores="$(nproc)"
params="$(python3 -c 'import os,sys; print(round(os.path.getsize(sys.argv[1]) / 4 / 1e6))' "$F32")"
commit="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$ROOT" diff --quiet HEAD 2>/dev/null || commit="$commit+local changes"
{
  echo "# CPU engine speed: Mesa vs llama.cpp"
  echo
  echo "Written by bench/compare_llamacpp.sh on $(date -u '+%Y-%m-%d %H:%M UTC')."
  echo
  echo "- Machine: $cpu, $cores cores ($(uname -m)); threads used: $T; load average"
  echo "  before the runs: $load_before (other work on the machine lowers both engines' numbers)"
  echo "- Model: random-weight llama, n_embd 768, 12 layers, 12 heads, n_ff 2048, vocab 512"
  echo "  (~${params}M parameters); F16/Q8_0/Q4_K files quantized by llama.cpp (Q4_K = Q4_K_M mix)"
  echo "- Workload: prefill $P tokens, then decode $G tokens behind them (llama-bench \`-p 0 -n $G -d $P\`:"
  echo "  the same cache depth as \`mesa bench\`); median over $K alternating rounds of the median of $R runs. The last column is llama.cpp's"
  echo "  decode from an empty cache (plain \`tg$G\`), for reference only"
  echo "- Mesa: \`mesa bench\` at commit $commit; llama.cpp: llama-bench built from the"
  echo "  node-llama-cpp 3.22.1 bundle (GGML_NATIVE=ON, CPU only, default settings${LLAMA_BENCH_ARGS:+, args: $LLAMA_BENCH_ARGS})"
  echo
  echo "| type | file MiB | prefill mesa tok/s | prefill llama.cpp tok/s | ratio | decode mesa tok/s | decode llama.cpp tok/s | ratio | mesa peak RSS MiB | llama.cpp decode at depth 0 |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for row in "${rows[@]}"; do
    python3 - $row <<'EOF'
import sys
t, mp, lp, md, ld, rss, size, ld0 = sys.argv[1:]
f = lambda x: float(x)
ratio = lambda a, b: f"{f(a) / f(b):.2f}" if f(b) > 0 else "n/a"
print(f"| {t.upper()} | {f(size) / 2**20:.0f} | {f(mp):.1f} | {f(lp):.1f} | {ratio(mp, lp)} | "
      f"{f(md):.2f} | {f(ld):.2f} | {ratio(md, ld)} | {f(rss) / 2**20:.0f} | {f(ld0):.2f} |")
EOF
  done
  echo
  echo "ratio = mesa / llama.cpp (above 1: Mesa is faster)."
  echo
  echo "Every round (tokens/s; the table holds the medians):"
  echo
  echo '```'
  printf '%s\n' "${rounds[@]}"
  echo '```'
} >"$OUT_MD"
say "wrote $OUT_MD"
cat "$OUT_MD"
