#!/usr/bin/env bash
# CPU engine speed: Mesa against llama.cpp (llama-bench) on the same GGUF files, for
# one or more instruction sets, both engines held to the same one.
#
# 1. Builds llama.cpp's llama-bench from the reference source bundle
#    ($MESA_LLAMACPP_DIR/src, see scripts/setup_reference.sh), once per ISA, CPU only:
#    native -> build-bench (GGML_NATIVE=ON); avx2 -> build-bench-avx2 (GGML_NATIVE=OFF,
#    AVX/AVX2/FMA/F16C/BMI2 on, AVX-512 and AMX off); avx512 -> build-bench-avx512 (also
#    AVX512F/VBMI/VNNI/BF16 on). Cached; ~8-15 min on 2 shared cores the first time.
# 2. Writes a ~100M-parameter random-weight llama GGUF in F32 with
#    mesa_make_random_model (context >= largest prompt + G) and quantizes it to F16,
#    Q8_0, Q4_K (llama.cpp's Q4_K_M mix) and Q6_K with mesa_llama_ref (cached in
#    $MESA_BENCH_MODELS).
# 3. For each ISA, type and prompt size P, runs `mesa bench` (MESA_CPU_ISA=ISA unless
#    native) and `llama-bench` (prefill -p P; decode -n G at depth -d P, the cache depth
#    mesa decodes behind), alternating the engines for K rounds, and writes the medians
#    over the rounds, the ISA and CPU of every row and every round to
#    bench/results/engine_cpu.md (rewritten after each type, so an interrupted run
#    keeps what it measured). A failed measurement shows as n/a and the run goes on.
#
# Usage: bench/compare_llamacpp.sh [--isa native|avx2|avx512[,..]] [-p P[,P..]] [-n G]
#          [-t T] [-r R] [-k K] [--types "f32 f16 q8_0 q4_k q6_k"] [--out FILE]
#          [--build-dir DIR] [--build-only]
#   e.g. bench/compare_llamacpp.sh --isa avx2,avx512 -p 128,512,2048 -n 32 -k 3 -r 2
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
TYPES="f32 f16 q8_0 q4_k q6_k"
BUILD_ONLY=0
ISAS=native
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
    --isa) ISAS="$2"; shift 2 ;;
    --out) OUT_MD="$2"; shift 2 ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
command -v python3 >/dev/null || die "python3 is needed to read the JSON results"
[[ "$G" =~ ^[1-9][0-9]*$ ]] || die "-n takes the decode tokens (>= 1), got $G"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# --- 1. llama-bench, one build per ISA -------------------------------------------------
IFS=',' read -r -a ISA_LIST <<<"$ISAS"
IFS=',' read -r -a P_LIST <<<"$P"
for p in "${P_LIST[@]}"; do [[ "$p" =~ ^[1-9][0-9]*$ ]] || die "-p takes prompt sizes like 128,512,2048 (got $P)"; done
isa_flags() {  # isa -> cmake flags of its llama.cpp build
  local common=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
                -DGGML_BMI2=ON -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF
                -DGGML_AMX_BF16=OFF)
  case "$1" in
    native) echo -DGGML_NATIVE=ON ;;
    avx2) echo "${common[@]}" -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF \
               -DGGML_AVX512_BF16=OFF ;;
    avx512) echo "${common[@]}" -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON \
                 -DGGML_AVX512_BF16=ON ;;
    *) die "--isa takes native, avx2, avx512 or a comma list of them (got $1)" ;;
  esac
}
bench_dir() { [ "$1" = native ] && echo "$LLAMA_DIR/build-bench" || echo "$LLAMA_DIR/build-bench-$1"; }
llama_bench_for() { echo "$(bench_dir "$1")/bin/llama-bench"; }
build_llama_bench() {  # isa
  local isa="$1" dir exe flags jobs
  dir="$(bench_dir "$isa")" exe="$(llama_bench_for "$isa")"
  read -r -a flags <<<"$(isa_flags "$isa")"
  if [ -x "$exe" ]; then
    say "llama-bench ($isa) cached at $exe"
    return
  fi
  if [ ! -f "$LLAMA_DIR/src/CMakeLists.txt" ]; then
    MESA_LLAMACPP_DIR="$LLAMA_DIR" "$ROOT/scripts/setup_reference.sh" ||
      die "llama.cpp source not available (see scripts/setup_reference.sh)"
  fi
  jobs="${LLAMA_BENCH_JOBS:-$(nproc)}"
  say "building llama-bench ($isa) in $dir with -j$jobs (once; several minutes)"
  cmake -S "$LLAMA_DIR/src" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release "${flags[@]}" \
    -DGGML_CUDA=OFF -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF \
    >"$dir.configure.log" 2>&1 || die "configuring llama.cpp failed, see $dir.configure.log"
  cmake --build "$dir" --target llama-bench -j "$jobs" >"$dir.build.log" 2>&1 ||
    die "building llama-bench failed, see $dir.build.log"
  [ -x "$exe" ] || die "llama-bench not found after the build"
}
for isa in "${ISA_LIST[@]}"; do isa_flags "$isa" >/dev/null; done  # validate before building
for isa in "${ISA_LIST[@]}"; do build_llama_bench "$isa"; done
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

# Both engines must be able to run each ISA here (mesa says so at startup; an AVX-512
# llama-bench on an AVX2 CPU would die of an illegal instruction mid-run).
mesa_env() { [ "$1" = native ] && echo "MESA_CPU_ISA=auto" || echo "MESA_CPU_ISA=$1"; }
for isa in "${ISA_LIST[@]}"; do
  env "$(mesa_env "$isa")" "$MESA" info --devices >/dev/null 2>"$TMP/isa-check.err" ||
    die "mesa cannot run --isa $isa on this CPU: $(cat "$TMP/isa-check.err")"
  if [ "$isa" = avx512 ] && ! grep -qwE 'avx512_?vnni' /proc/cpuinfo; then
    die "--isa avx512: this CPU lacks AVX-512 VNNI"
  fi
done

mkdir -p "$MODELS"
# The context must hold the largest prompt and the decode behind it, or mesa would
# leave its full-attention path (and llama.cpp run past the trained length).
max_p=0
for p in "${P_LIST[@]}"; do [ "$p" -gt "$max_p" ] && max_p="$p"; done
CTX=2048
while [ "$CTX" -lt $((max_p + G)) ]; do CTX=$((CTX * 2)); done
STEM="$MODELS/random-100m-llama"
[ "$CTX" = 2048 ] || STEM="$STEM-ctx$CTX"
F32="$STEM-f32.gguf"
if [ ! -f "$F32" ]; then
  [ -n "$MAKE_MODEL" ] || die "mesa_make_random_model not built in $BUILD_DIR"
  say "writing the random ~100M-parameter llama model $F32"
  # llama shape at ~GPT-2-small scale, with stories260K's tokenizer (vocab 512).
  "$MAKE_MODEL" --arch llama --n-embd 768 --n-layer 12 --n-head 12 --n-head-kv 12 \
    --n-ff 2048 --tokenizer-from "$SHARED/models/stories260K-f32.gguf" \
    --ctx "$CTX" --seed 1 --out "$F32.tmp" >&2
  mv "$F32.tmp" "$F32"
fi
model_for() {  # type -> file (quantized with llama.cpp, cached)
  local type="$1" file
  if [ "$type" = f32 ]; then echo "$F32"; return; fi
  file="$STEM-$type.gguf"
  if [ ! -f "$file" ]; then
    say "quantizing to $type with llama.cpp"
    "$REF" quantize --quiet --in "$F32" --out "$file.tmp" --type "$type" --threads "$T" >&2 ||
      die "quantizing to $type failed"
    mv "$file.tmp" "$file"
  fi
  echo "$file"
}

# --- 3. Runs ------------------------------------------------------------------------
# Each measurement prints numbers, or "nan" (with a warning) when the engine failed, so
# an unattended run keeps going and the table says n/a.

run_mesa() {  # isa, file, P -> "prefill decode rss" (medians over R repetitions after a
              # warm-up, like llama-bench); decode runs behind the P prompt tokens
  local isa="$1" file="$2" p="$3" json
  if ! json="$(env "$(mesa_env "$isa")" "$MESA" bench --model "$file" --prompt-tokens "$p" \
                 --gen-tokens "$G" --threads "$T" --reps "$R" --json 2>"$TMP/mesa.err")"; then
    say "WARNING: mesa bench failed on $file (P=$p, $isa): $(tail -n 3 "$TMP/mesa.err")"
    echo "nan nan 0"
    return
  fi
  echo "$json" | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(d["prefill_tokens_per_s"], d["decode_tokens_per_s"], d.get("peak_rss_bytes", 0), d.get("cpu_isa", "?"))'
}

llama_json() {  # isa, file, llama-bench test args -> median tokens/s of its one test
  local isa="$1" file="$2" json
  shift 2
  # shellcheck disable=SC2086
  if ! json="$("$(llama_bench_for "$isa")" -m "$file" "$@" -t "$T" -r "$R" -o json \
                 ${LLAMA_BENCH_ARGS:-} 2>"$TMP/llama.err")"; then
    say "WARNING: llama-bench $* failed on $file ($isa): $(tail -n 3 "$TMP/llama.err")"
    echo nan
    return
  fi
  echo "$json" | python3 -c '
import json, statistics, sys
r = json.load(sys.stdin)[0]
print(statistics.median(r.get("samples_ts") or [r["avg_ts"]]))'
}

median() {  # numbers (nan = failed) -> median of the others, or nan
  python3 -c '
import math, statistics, sys
v = [float(x) for x in sys.argv[1:] if not math.isnan(float(x))]
print(statistics.median(v) if v else "nan")' "$@"
}

rows=() rounds=()
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
cpu="$(lscpu | sed -n 's/^Model name: *//p' | head -n1)"
cores="$(nproc)"
started="$(date -u '+%Y-%m-%d %H:%M UTC')"

write_report() {
  mkdir -p "$(dirname "$OUT_MD")"
  local params commit
  params="$(python3 -c 'import os,sys; print(round(os.path.getsize(sys.argv[1]) / 4 / 1e6))' "$F32")"
  commit="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  git -C "$ROOT" diff --quiet HEAD 2>/dev/null || commit="$commit+local changes"
  {
    echo "# CPU engine speed: Mesa vs llama.cpp"
    echo
    echo "Written by bench/compare_llamacpp.sh (started $started, this table at"
    echo "$(date -u '+%H:%M UTC')): \`compare_llamacpp.sh --isa $ISAS -p $P -n $G -t $T -r $R -k $K --types \"$TYPES\"\`."
    echo
    echo "- Machine: $cpu, $cores cores ($(uname -m)); threads used: $T; load average"
    echo "  before the runs: $load_before, now: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the"
    echo "  machine lowers both engines' numbers)"
    echo "- Model: random-weight llama, n_embd 768, 12 layers, 12 heads, n_ff 2048, vocab 512,"
    echo "  context $CTX (~${params}M parameters); F16/Q8_0/Q4_K/Q6_K files quantized by llama.cpp"
    echo "  (Q4_K = the Q4_K_M mix, Q6_K = all Q6_K)"
    echo "- ISA: mesa runs under MESA_CPU_ISA=ISA (native: its best); llama.cpp's llama-bench is"
    echo "  built for the same ISA (avx2: GGML_NATIVE=OFF, AVX/AVX2/FMA/F16C/BMI2 on, AVX-512,"
    echo "  AVX-VNNI and AMX off; avx512: AVX512F/VBMI/VNNI/BF16 on as well; native:"
    echo "  GGML_NATIVE=ON). The ISA column is what mesa reported using."
    echo "- Workload: prefill P tokens, then decode $G tokens behind them (llama-bench \`-p P -n 0\`"
    echo "  and \`-p 0 -n $G -d P\`: the same cache depth as \`mesa bench\`); median over $K alternating"
    echo "  rounds of the median of $R runs. The last column is llama.cpp's decode from an empty"
    echo "  cache (plain \`tg$G\`), for reference only"
    echo "- Mesa: \`mesa bench\` at commit $commit; llama.cpp: llama-bench from the node-llama-cpp"
    echo "  3.22.1 bundle (CPU only, default settings${LLAMA_BENCH_ARGS:+, args: $LLAMA_BENCH_ARGS})"
    echo
    echo "| type | ISA | CPU | prompt P | file MiB | prefill mesa tok/s | prefill llama.cpp tok/s | ratio | decode@P mesa tok/s | decode@P llama.cpp tok/s | ratio | mesa peak RSS MiB | llama.cpp decode at depth 0 |"
    echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    local row
    for row in "${rows[@]}"; do
      # shellcheck disable=SC2086  # the row is space-separated fields
      python3 - "$cpu" $row <<'EOF2'
import math, sys
cpu, t, isa, used, p, mp, lp, md, ld, rss, size, ld0 = sys.argv[1:]
f = float
num = lambda x, d: "n/a" if math.isnan(f(x)) else f"{f(x):.{d}f}"
ratio = lambda a, b: "n/a" if math.isnan(f(a)) or math.isnan(f(b)) or f(b) <= 0 else f"{f(a) / f(b):.2f}"
isa_col = isa if used in (isa, "?") or isa == "native" else f"{isa} (mesa: {used})"
if isa == "native": isa_col = f"native ({used})"
print(f"| {t.upper()} | {isa_col} | {cpu} | {p} | {f(size) / 2**20:.0f} | {num(mp, 1)} | {num(lp, 1)} | {ratio(mp, lp)} | "
      f"{num(md, 2)} | {num(ld, 2)} | {ratio(md, ld)} | {f(rss) / 2**20:.0f} | {num(ld0, 2)} |")
EOF2
    done
    echo
    echo "ratio = mesa / llama.cpp (above 1: Mesa is faster). decode@P: the $G decoded tokens"
    echo "attend to the P prompt tokens before them."
    if [ "${#P_LIST[@]}" -gt 1 ]; then
      echo
      echo "Mesa's prefill rate at the largest prompt against the smallest (issue 8 asks >= 0.9):"
      echo
      python3 - "${P_LIST[0]}" "${P_LIST[-1]}" "${rows[@]}" <<'EOF2'
import math, sys
lo, hi = sys.argv[1], sys.argv[2]
rate = {}
for row in sys.argv[3:]:
    t, isa, used, p, mp = row.split()[:5]
    rate[(t, isa, p)] = float(mp)
for (t, isa, p), v in rate.items():
    if p == lo and (t, isa, hi) in rate:
        w = rate[(t, isa, hi)]
        r = "n/a" if math.isnan(v) or math.isnan(w) or v <= 0 else f"{w / v:.2f}"
        print(f"- {t.upper()} {isa}: prefill {hi} / {lo} = {r}")
EOF2
    fi
    echo
    echo "Every round (tokens/s; the table holds the medians):"
    echo
    echo '```'
    printf '%s\n' "${rounds[@]}"
    echo '```'
  } >"$OUT_MD.tmp"
  mv "$OUT_MD.tmp" "$OUT_MD"
}

for isa in "${ISA_LIST[@]}"; do
  for type in $TYPES; do
    file="$(model_for "$type")"
    for p in "${P_LIST[@]}"; do
      # Rounds alternate the two engines, so slow phases of a shared machine (other VMs'
      # memory traffic is invisible from here) hit both alike; each number is the median
      # over the rounds of per-round medians.
      mp=() md=() lp=() ld=() ld0=() m_rss=0 used="?"
      for ((k = 1; k <= K; k++)); do
        say "[$isa $type P=$p] round $k/$K: mesa bench ($R runs), llama-bench ($R repetitions)"
        read -r a b rss u < <(run_mesa "$isa" "$file" "$p")
        mp+=("$a") md+=("$b")
        [ "$rss" != 0 ] && m_rss="$rss"
        [ -n "${u:-}" ] && used="$u"
        a2="$(llama_json "$isa" "$file" -p "$p" -n 0)"
        b2="$(llama_json "$isa" "$file" -p 0 -n "$G" -d "$p")"
        lp+=("$a2") ld+=("$b2")
        # Decode from an empty cache does not depend on P: measured with the first P only.
        [ "$p" = "${P_LIST[0]}" ] && ld0+=("$(llama_json "$isa" "$file" -p 0 -n "$G")")
        rounds+=("$(printf '[%s %s P=%s] round %d: prefill mesa %.1f / llama.cpp %.1f; decode mesa %.2f / llama.cpp %.2f' \
              "$isa" "$type" "$p" "$k" "$a" "$a2" "$b" "$b2")")
        say "${rounds[-1]}"
      done
      [ "${#ld0[@]}" -gt 0 ] && l_dec0="$(median "${ld0[@]}")"
      rows+=("$type $isa $used $p $(median "${mp[@]}") $(median "${lp[@]}") $(median "${md[@]}") $(median "${ld[@]}") $m_rss $(stat -c %s "$file") ${l_dec0:-nan}")
      say "[$isa $type P=$p] $(echo "${rows[-1]}" | cut -d' ' -f5-8) (prefill mesa, llama.cpp; decode mesa, llama.cpp)"
      write_report
    done
    l_dec0=nan
  done
done
say "wrote $OUT_MD"
cat "$OUT_MD"
