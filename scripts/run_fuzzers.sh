#!/usr/bin/env bash
# Builds the libFuzzer targets (the `fuzz` preset: clang + ASan/UBSan) and runs each
# for a few seconds from a small seed corpus: generated here for the model parsers
# (gguf, safetensors), committed under fuzz/corpus/rpc/ for the RPC requests (rpc).
#   scripts/run_fuzzers.sh [seconds per fuzzer, default 20]
# Env: MESA_SHARED_DIR (seed headers from the shared models; default ../shared),
#      FUZZ_JOBS (build parallelism, default 2), FUZZ_BUILD_DIR (default build/fuzz).
set -euo pipefail

seconds="${1:-20}"
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${FUZZ_BUILD_DIR:-$root/build/fuzz}"
shared="${MESA_SHARED_DIR:-$root/../shared}"
jobs="${FUZZ_JOBS:-2}"
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$root}" CCACHE_NOHASHDIR=1

cmake --preset fuzz -S "$root" -B "$build" >/dev/null
cmake --build "$build" -j "$jobs" --target gguf_fuzzer safetensors_fuzzer rpc_fuzzer

work="$build/fuzz-run"
rm -rf "$work"
mkdir -p "$work/gguf_seeds" "$work/safetensors_seeds" "$work/gguf_corpus" "$work/safetensors_corpus" \
  "$work/rpc_corpus"
# The RPC fuzzer's seeds: valid messages of every request kind (regenerate with
# MESA_RPC_FUZZ_WRITE_SEEDS=fuzz/corpus/rpc build/fuzz/fuzz/rpc_fuzzer).
cp -r "$root/fuzz/corpus/rpc" "$work/rpc_seeds"

# Seeds: the first bytes of the shared models (headers with real metadata), plus tiny
# hand-made files so the script also works without the shared data.
python3 - "$shared" "$work" <<'PY'
import json, os, struct, sys
shared, work = sys.argv[1], sys.argv[2]
def put(d, name, data):
    with open(os.path.join(work, d, name), "wb") as f:
        f.write(data)
def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b
# A minimal GGUF v3: two keys, one f32 tensor [4].
kv = gstr("general.architecture") + struct.pack("<I", 8) + gstr("llama")
kv += gstr("a.arr") + struct.pack("<IIQ", 9, 4, 3) + struct.pack("<iii", 1, 2, 3)
ti = gstr("t") + struct.pack("<I", 1) + struct.pack("<q", 4) + struct.pack("<IQ", 0, 0)
head = b"GGUF" + struct.pack("<IQQ", 3, 1, 2) + kv + ti
head += b"\0" * ((32 - len(head) % 32) % 32)
put("gguf_seeds", "tiny.gguf", head + struct.pack("<4f", 1, 2, 3, 4))
for name in ("stories260K-f32.gguf", "tinystories-656k-f32.gguf"):
    p = os.path.join(shared, "models", name)
    if os.path.exists(p):
        with open(p, "rb") as f:
            data = f.read(16384)
        put("gguf_seeds", name + ".head", data)
h = json.dumps({"__metadata__": {"format": "pt"},
                "w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                "b": {"dtype": "BF16", "shape": [2], "data_offsets": [16, 20]}}).encode()
put("safetensors_seeds", "tiny.safetensors", struct.pack("<Q", len(h)) + h + bytes(20))
p = os.path.join(shared, "models", "tinystories-656k-hf", "model.safetensors")
if os.path.exists(p):
    with open(p, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = f.read(n)
    put("safetensors_seeds", "656k.header", struct.pack("<Q", n) + hdr)
PY

status=0
for fuzzer in gguf_fuzzer safetensors_fuzzer rpc_fuzzer; do
  name="${fuzzer%_fuzzer}"
  echo "== $fuzzer: ${seconds}s"
  if ! "$build/fuzz/$fuzzer" "$work/${name}_corpus" "$work/${name}_seeds" \
      -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
      -timeout=10 -print_final_stats=1 -artifact_prefix="$work/${name}-" 2>"$work/$fuzzer.log"; then
    echo "FAILED: $fuzzer (log: $work/$fuzzer.log; crashing inputs: $work/${name}-*)"
    tail -40 "$work/$fuzzer.log"
    status=1
  else
    grep -E "stat::number_of_executed_units|Done" "$work/$fuzzer.log" | tail -2
  fi
done
exit $status
