#!/usr/bin/env bash
# THE one call of a device session (issue 7): the gpu-labelled tests, then the GPU
# benchmarks, from a bundle built here (scripts/gpu_bundle.sh -> .gpu-bundle/, carried by
# the device tool), each part under its own time limit and all of them under one budget,
# writing under $OUT:
#   gpu.md          the tables (bench/results/gpu.md's form; commit it as that file)
#   raw.jsonl       every measurement as a JSON line, tagged with its step
#   log.txt         each step's command, exit status, time, stdout and stderr
#   gpu_tests.xml   ctest's JUnit report of the gpu tests
# A part that fails or runs out of time is reported as such and the run goes on.
#
# Order (most important first): library check; ctest -L gpu; ceilings (copy bandwidth,
# cuBLAS bf16 GEMM); attention kernels (gpu_bench) and PyTorch SDPA on the same shapes;
# a Llama-3-8B-shaped synthetic GGUF (n_embd 4096, 32/8 heads, n_ff 14336, vocab 128256,
# --layers of the 32, default 4) written on the device in bf16, q8_0 and q4_k: decode
# tokens/s of each; prefill tokens/s of the bf16 model at 4k, 32k and 128k tokens with
# --attention mesa and full, with peak GPU memory; matmul per weight type.
#
# Usage: bash scripts/device_check.sh [--bundle DIR] [--out DIR] [--budget SECONDS]
#          [--layers N] [--cpu-check]
#   --budget     seconds for everything (default 420); each part gets at most its own
#                limit and what is left, less 15 s kept for the report
#   --cpu-check  (alias --dry-run) proves the plumbing on a machine without a GPU: tiny
#                model, `mesa bench --device cpu`, every GPU part run as on a device (each
#                fails or skips, saying no GPU was found); always exits non-zero then
# Environment: OUT (default ./device_out), MESA_DEVICE_CHECK_KEEP=1 keeps the work dir.
# Exit: 0 when a GPU was found and every part passed; 1 otherwise; 2 usage.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUNDLE="$ROOT/.gpu-bundle"
OUTDIR="${OUT:-$ROOT/device_out}"
BUDGET=420
LAYERS=4
CPU_CHECK=0

usage() { sed -n '2,30p' "$0"; exit "${1:-0}"; }

# --- parts that run as functions (in a child of this script, under `timeout`) ------
# 0. Every bundled binary finds its libraries here.
check_libs() {
  local bad=0 f
  while IFS= read -r f; do
    if ldd "$f" 2>&1 | grep -q "not found"; then
      echo "$f:"; ldd "$f" 2>&1 | grep "not found"; bad=1
    fi
  done < <(find "$B" -type f \( -perm -u+x -o -name '*.so' \))
  [ "$bad" = 0 ] && echo "every bundled binary resolves its libraries"
  return "$bad"
}

# The gpu-labelled tests, through ctest (a CTestTestfile rebuilt from the bundle's list).
run_gpu_tests() {
  "$PY" - "$BUNDLE/gpu_tests.json" "$B" "$WORK/ctest" <<'EOF' || return 1
import json, os, sys
spec, build, out = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(out, exist_ok=True)
tests = json.load(open(spec))["tests"]
def path(p): return p.replace("@BUILD@", build)
def arg(s):  # a CMake bracket argument: taken literally
    return "[==[" + s + "]==]"
with open(os.path.join(out, "CTestTestfile.cmake"), "w") as f:
    for t in tests:
        f.write("add_test(" + " ".join(arg(x) for x in [t["name"]] + [path(c) for c in t["command"]]) + ")\n")
        props = ["LABELS", arg(";".join(t["labels"]) or "gpu"), "WORKING_DIRECTORY", arg(path(t["working_directory"]))]
        if t["skip_regular_expression"]:
            props += ["SKIP_REGULAR_EXPRESSION", arg(";".join(t["skip_regular_expression"]))]
        if t["environment"]:
            props += ["ENVIRONMENT", arg(";".join(t["environment"]))]
        f.write("set_tests_properties(" + arg(t["name"]) + " PROPERTIES " + " ".join(props) + ")\n")
print(f"{len(tests)} gpu tests listed")
EOF
  if ! command -v ctest >/dev/null; then
    echo "ctest is not on this machine's PATH"; return 1
  fi
  ctest --test-dir "$WORK/ctest" -L gpu --timeout 90 -j 4 --output-on-failure \
        --output-junit "$OUTDIR/gpu_tests.xml"
}

make_model() {  # make_model TYPE SHAPE-FLAGS...: writes $WORK/model_TYPE.gguf, describes it as JSON
  local type="$1" file="$WORK/model_$1.gguf"
  shift
  local SHAPE=("$@")
  "$MAKE_MODEL" "${SHAPE[@]}" --rope-base 500000 --type "$type" --tokenizer-from synthetic \
                --seed 7 --out "$file" || return 1
  "$PY" -c 'import json, os, sys; a = sys.argv; print(json.dumps({"model": a[1], "type": a[2], "file_bytes": os.path.getsize(a[1]), "shape": a[3:]}))' \
        "$file" "$type" "${SHAPE[@]}"
}

if [ "${1:-}" = "--internal" ]; then  # run_step's way of timing a function
  shift
  "$@"
  exit $?
fi
while [ $# -gt 0 ]; do
  case "$1" in
    --bundle) BUNDLE="$2"; shift 2 ;;
    --out) OUTDIR="$2"; shift 2 ;;
    --budget) BUDGET="$2"; shift 2 ;;
    --layers) LAYERS="$2"; shift 2 ;;
    --cpu-check|--dry-run) CPU_CHECK=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "device_check: unknown argument $1" >&2; usage 2 >&2 ;;
  esac
done
[[ "$BUDGET" =~ ^[1-9][0-9]*$ ]] || { echo "device_check: --budget takes seconds (got $BUDGET)" >&2; exit 2; }
[[ "$LAYERS" =~ ^[1-9][0-9]*$ ]] && [ "$LAYERS" -le 32 ] ||
  { echo "device_check: --layers takes 1..32 (got $LAYERS)" >&2; exit 2; }
if [ ! -d "$BUNDLE/build" ]; then
  echo "device_check: ERROR: no bundle at $BUNDLE: run scripts/gpu_bundle.sh here and carry .gpu-bundle" >&2
  exit 1
fi
BUNDLE="$(cd "$BUNDLE" && pwd)"
mkdir -p "$OUTDIR" && OUTDIR="$(cd "$OUTDIR" && pwd)"
rm -f "$OUTDIR/gpu.md" "$OUTDIR/raw.jsonl" "$OUTDIR/log.txt" "$OUTDIR/gpu_tests.xml"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/device_check.XXXXXX")"
[ "${MESA_DEVICE_CHECK_KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
START=$(date +%s)
LOG="$OUTDIR/log.txt"
B="$BUNDLE/build"
MESA="$B/client/cli/mesa"
GPU_BENCH="$B/bench/gpu_bench"
MAKE_MODEL="$B/tests/mesa_make_random_model"
PY="$(command -v python3 || true)"
say() { echo "device_check: $*" | tee -a "$LOG" >&2; }
[ -n "$PY" ] || { echo "device_check: ERROR: python3 is needed for the report" >&2; exit 1; }

# --- the machine --------------------------------------------------------------------
GPU_INFO="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
if [ -z "$GPU_INFO" ]; then
  GPU_INFO="none"
  say "NO GPU FOUND: nvidia-smi lists no device; every GPU part below will fail or skip"
fi
# CUDA's big libraries come from the device image: the toolkit, or PyTorch's wheels.
lib_dirs=(/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib
          /usr/lib/x86_64-linux-gnu /usr/local/nvidia/lib64 /usr/local/nvidia/lib)
while IFS= read -r d; do [ -n "$d" ] && lib_dirs+=("$d"); done < <(timeout 20 "$PY" -c '
import glob, os
try:
    import nvidia
    for root in nvidia.__path__:
        for d in sorted(glob.glob(os.path.join(root, "*", "lib")) + glob.glob(os.path.join(root, "*", "*", "lib"))):
            print(d)
except Exception:
    pass' 2>/dev/null)
cuda_dirs="" missing_libs=()
add_dir() { case ":$cuda_dirs:" in *":$1:"*) ;; *) cuda_dirs="${cuda_dirs:+$cuda_dirs:}$1" ;; esac; }
for lib in libcublas.so.13 libcublasLt.so.13 libnccl.so.2 libcudart.so.13; do
  found=""
  for d in "${lib_dirs[@]}"; do [ -e "$d/$lib" ] && { found="$d"; break; }; done
  if [ -n "$found" ]; then add_dir "$found"; else missing_libs+=("$lib"); fi
done
if [ "${#missing_libs[@]}" -gt 0 ]; then  # one bounded search of the whole disk
  expr=(); for lib in "${missing_libs[@]}"; do expr+=(${expr[@]:+-o} -name "$lib"); done
  while IFS= read -r f; do add_dir "$(dirname "$f")"; done < <(timeout 20 find / -xdev \( -path /proc -o -path /sys \
      -o -path "$BUNDLE" \) -prune -o \( "${expr[@]}" \) -print 2>/dev/null)
fi
export LD_LIBRARY_PATH="$BUNDLE/lib${cuda_dirs:+:$cuda_dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export MESA_CUDA_PLUGIN="$B/kernels/libmesa_cuda.so"
export MESA_SHARED_DIR="$BUNDLE/shared" MESA_BINARY_DIR="$B"
export PYTHONUNBUFFERED=1
export BUNDLE B WORK PY OUTDIR MAKE_MODEL
if [ "$CPU_CHECK" = 1 ]; then MODE="cpu-check"; else MODE="gpu"; fi
"$PY" - "$WORK/meta.json" <<EOF
import json, sys
json.dump({"mode": "$MODE", "gpu": """$GPU_INFO""", "layers": $LAYERS, "budget_s": $BUDGET,
           "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)", "host": "$(hostname)",
           "bundle": open("$BUNDLE/MANIFEST.txt").read() if __import__("os").path.exists("$BUNDLE/MANIFEST.txt") else "",
           "cuda_lib_dirs": "$cuda_dirs"}, open(sys.argv[1], "w"))
EOF
say "mode $MODE; GPU: $GPU_INFO; budget ${BUDGET}s; CUDA libraries from: ${cuda_dirs:-(not found)}"

# --- steps --------------------------------------------------------------------------
: >"$WORK/steps.tsv"
# run_step NAME LIMIT CMD...: runs CMD under min(LIMIT, what is left of the budget);
# stdout -> $WORK/NAME.out, stderr -> $WORK/NAME.err, a row in steps.tsv, both in the log.
run_step() {
  local name="$1" limit="$2"; shift 2
  local left=$((BUDGET - ($(date +%s) - START) - 15))
  if [ "$left" -lt 5 ]; then
    printf '%s\t%s\t%s\t%s\n' "$name" "skipped" 0 0 >>"$WORK/steps.tsv"
    say "$name: skipped, the budget of ${BUDGET}s is spent"
    return 1
  fi
  [ "$limit" -le "$left" ] || limit=$left
  local t0=$(date +%s) rc
  {
    echo "=== $name (limit ${limit}s)"
    echo "\$ $*"
  } >>"$LOG"
  if declare -F "$1" >/dev/null; then set -- bash "$0" --internal "$@"; fi
  timeout -k 10 "$limit" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"
  rc=$?
  local dt=$(($(date +%s) - t0))
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$dt" "$limit" >>"$WORK/steps.tsv"
  {
    echo "--- stdout"; cat "$WORK/$name.out"
    echo "--- stderr"; tail -c 200000 "$WORK/$name.err"
    echo "--- exit $rc after ${dt}s"
  } >>"$LOG"
  local what="ok"
  [ "$rc" = 0 ] || what="FAILED (exit $rc)"
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && what="TIMED OUT after ${limit}s"
  say "$name: $what in ${dt}s"
  return "$rc"
}

# 0. Every bundled binary finds its libraries here.
run_step libs 30 check_libs

# 1. The gpu-labelled tests, through ctest (a CTestTestfile rebuilt from the bundle's list).
run_step gpu_tests 240 run_gpu_tests

# 2-3. Ceilings, then the attention kernels against PyTorch on the same shapes.
if [ "$CPU_CHECK" = 1 ]; then KEYS=256; else KEYS=4096,16384,65536; fi
run_step ceilings 60 "$GPU_BENCH" --parts ceilings
run_step attention 200 "$GPU_BENCH" --parts attention --keys "$KEYS" --budget 1.5
# PyTorch with the image's own libraries, not the bundle's (Debian's libssl, libz, ...).
run_step torch_sdpa 100 env -u LD_LIBRARY_PATH "$PY" "$ROOT/bench/torch_sdpa.py" --keys "$KEYS" --dtypes bf16,f32 --budget 1

# 4. The Llama-3-8B-shaped model: decode per type, then prefill (bf16).
if [ "$CPU_CHECK" = 1 ]; then
  SHAPE=(--n-embd 256 --n-layer 2 --n-head 4 --n-head-kv 2 --n-ff 512 --n-vocab 512 --ctx 256)
  DEVICE=cpu; DECODE=(-p 64 -g 16 --reps 2); PREFILL_LENGTHS="256 1024"
else
  SHAPE=(--n-embd 4096 --n-layer "$LAYERS" --n-head 32 --n-head-kv 8 --n-ff 14336 --n-vocab 128256 --ctx 8192)
  DEVICE=cuda; DECODE=(-p 512 -g 128 --reps 3); PREFILL_LENGTHS="4096 32768 131072"
fi
for type in bf16 q8_0 q4_k; do
  if run_step "model_$type" 120 make_model "$type" "${SHAPE[@]}"; then
    run_step "decode_$type" 90 "$MESA" bench --model "$WORK/model_$type.gguf" --device "$DEVICE" \
             "${DECODE[@]}" --json
  fi
  [ "$type" = bf16 ] || rm -f "$WORK/model_$type.gguf"
done
if [ -f "$WORK/model_bf16.gguf" ]; then
  for n in $PREFILL_LENGTHS; do
    for method in mesa full; do
      limit=90; [ "$n" -ge 100000 ] && limit=200
      run_step "prefill_${method}_$n" "$limit" "$MESA" bench --model "$WORK/model_bf16.gguf" \
               --device "$DEVICE" -p "$n" -g 0 --reps 1 --attention "$method" --json
    done
  done
fi
rm -f "$WORK"/model_*.gguf

# 5. Matrix products per weight type.
if [ "$CPU_CHECK" = 1 ]; then
  run_step matmul 60 "$GPU_BENCH" --parts matmul --matmul-shape 512x256 --types bf16,q4_k --budget 0.2
else
  run_step matmul 120 "$GPU_BENCH" --parts matmul --budget 0.5
fi

# --- report -------------------------------------------------------------------------
"$PY" "$ROOT/bench/gpu_report.py" --work "$WORK" --out "$OUTDIR"
rc=$?
cat "$OUTDIR/gpu.md" 2>/dev/null
say "wrote $(cd "$OUTDIR" && ls | tr '\n' ' ')in $OUTDIR after $(($(date +%s) - START))s"
if [ "$GPU_INFO" = none ]; then
  say "NO GPU FOUND: the GPU parts could not run (exit 1)"
  exit 1
fi
exit "$rc"
