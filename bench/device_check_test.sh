#!/usr/bin/env bash
# The device session's plumbing, on a machine without a GPU: scripts/gpu_bundle.sh packs
# this build, scripts/device_check.sh --cpu-check runs every part from the bundle (GPU
# parts fail or skip and say so; the model rows run on the CPU), and the report has what
# it should. Also its usage errors and a missing bundle.
# Usage: bench/device_check_test.sh BUILD_DIR
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${1:?usage: device_check_test.sh BUILD_DIR}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

bash "$ROOT/scripts/device_check.sh" --budget soon >/dev/null 2>"$TMP/e1"
[ $? = 2 ] || fail "--budget soon should be a usage error (exit 2)"
bash "$ROOT/scripts/device_check.sh" --bundle "$TMP/none" --out "$TMP/o0" >/dev/null 2>"$TMP/e2"
[ $? = 1 ] && grep -q "no bundle" "$TMP/e2" || fail "a missing bundle should say so and exit 1"
bash "$ROOT/scripts/gpu_bundle.sh" --build-dir "$TMP/nowhere" --out "$TMP/b0" >/dev/null 2>&1 &&
  fail "gpu_bundle.sh without a build should fail"

bash "$ROOT/scripts/gpu_bundle.sh" --build-dir "$BUILD" --out "$TMP/bundle" >"$TMP/bundle.log" 2>&1 ||
  { cat "$TMP/bundle.log" >&2; fail "gpu_bundle.sh failed"; }
for f in build/client/cli/mesa build/kernels/libmesa_cuda.so build/bench/gpu_bench MANIFEST.txt gpu_tests.json; do
  [ -e "$TMP/bundle/$f" ] || fail "the bundle lacks $f"
done
OUT="$TMP/out" bash "$ROOT/scripts/device_check.sh" --cpu-check --bundle "$TMP/bundle" --budget 200 \
  >"$TMP/stdout" 2>"$TMP/stderr"
rc=$?
[ "$rc" != 0 ] || fail "--cpu-check must exit non-zero (got 0)"
if ! nvidia-smi -L >/dev/null 2>&1; then
  grep -q "NO GPU FOUND" "$TMP/stderr" || fail "without a GPU it must say NO GPU FOUND"
fi
md="$TMP/out/gpu.md"
for f in gpu.md raw.jsonl log.txt; do [ -s "$TMP/out/$f" ] || fail "$f not written"; done
grep -q "CPU plumbing check" "$md" || fail "gpu.md does not say it is a CPU plumbing check"
for t in bf16 q8_0 q4_k; do
  grep -Eq "^\| $t \| [0-9.,]+ MiB \| [0-9.,]+ \|" "$md" || fail "no decode row with a rate for $t"
done
for n in 256 1,024; do
  grep -Eq "^\| $n \| [0-9.,]+ \| [0-9.,]+ \|" "$md" || fail "no prefill row with rates for $n tokens"
done
grep -q '"step": "decode_q4_k"' "$TMP/out/raw.jsonl" || fail "raw.jsonl lacks the decode lines"
grep -q '"kind": "step", "step": "gpu_tests"' "$TMP/out/raw.jsonl" || fail "raw.jsonl lacks the test step"
grep -q "## What failed" "$md" || fail "gpu.md lacks its failure list"
echo "device_check plumbing: ok ($(grep -c '' "$TMP/out/raw.jsonl") raw lines)"
