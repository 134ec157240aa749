#!/usr/bin/env bash
# Long-context attention per layer against the roofline, per ISA; writes
# bench/results/attention_long.md. For each of K rounds (-k, default 3) and each ISA
# (MESA_CPU_ISA=avx512 and avx2 where the CPU runs them, interleaved) it runs
# attention_bench's BM_Roofline_Fma, BM_Roofline_Read and BM_AttentionLong (one
# final chunk of 512 queries and one decode step over 8k, 32k and 128k keys, shapes
# 32/8 x 128 and 12/12 x 64, plain and Mesa's Stair PE), then tabulates medians with
# the ratios against the roofline measured in the same round.
# Usage: bench/attention_long.sh [-k ROUNDS] [--bench build/release/bench/attention_bench]
set -euo pipefail
cd "$(dirname "$0")/.."
K=3
BENCH=build/release/bench/attention_bench
while [[ $# -gt 0 ]]; do
  case "$1" in
    -k) K="$2"; shift 2 ;;
    --bench) BENCH="$2"; shift 2 ;;
    *) echo "usage: $0 [-k ROUNDS] [--bench PATH]" >&2; exit 2 ;;
  esac
done
[[ -x "$BENCH" ]] || { echo "build attention_bench first ($BENCH)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is needed to write the report" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
ISAS="avx512 avx2"
grep -q avx512f /proc/cpuinfo || ISAS="avx2"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for r in $(seq 1 "$K"); do
  for isa in $ISAS; do
    echo "attention_long: round $r isa $isa (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    MESA_CPU_ISA=$isa "$BENCH" --benchmark_filter="${ATTN_LONG_FILTER:-BM_Roofline|BM_AttentionLong}" \
      --benchmark_format=json --benchmark_out="$TMP/r${r}_$isa.json" \
      --benchmark_out_format=json >/dev/null 2>"$TMP/err.txt" || { cat "$TMP/err.txt" >&2; exit 1; }
    echo "$r $isa $load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$TMP/rounds.txt"
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$TMP" "$K" "$LOAD_BEFORE" "$LOAD_AFTER" "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- kernels bench || echo ' + uncommitted changes')" > bench/results/attention_long.md <<'PY'
import json, os, statistics, sys, subprocess, datetime
tmp, K, load_before, load_after, commit = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
rounds = [l.split() for l in open(os.path.join(tmp, "rounds.txt"))]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
ncpu = os.cpu_count()
data = {}   # (isa, name) -> list of benchmark dicts (one per round)
roof = {}   # (isa, round) -> (fma GFLOP/core_s, read GB/s, read GB/core_s)
for r, isa, *_ in rounds:
    js = json.load(open(os.path.join(tmp, f"r{r}_{isa}.json")))
    fma = read = read_core = None
    for b in js["benchmarks"]:
        if b.get("error_occurred"): continue
        if b["name"].startswith("BM_Roofline_Fma"): fma = b["GFLOP/core_s"]
        elif b["name"].startswith("BM_Roofline_Read"): read, read_core = b["GB/s"], b["GB/core_s"]
        else:
            b["round"] = r
            data.setdefault((isa, b["name"]), []).append(b)
    roof[(isa, r)] = (fma, read, read_core)
threads = js["benchmarks"][0].get("label", "").split("threads=")[1].split()[0] if "threads=" in js["benchmarks"][0].get("label", "") else "?"
med = statistics.median
print("# Long-context attention per layer against the roofline (CPU)")
print()
print(f"- Date: {datetime.datetime.now():%Y-%m-%d %H:%M}; commit {commit}")
print(f"- CPU: {cpu}, {ncpu} cores visible; {threads} threads; ISA forced per run with MESA_CPU_ISA (avx512: 16-float vectors, 8x2 register tiles; avx2: 8-float vectors, 6x2 tiles)")
print(f"- Load average (1/5/15 min): {load_before} before, {load_after} after; per round below (above 2, on 2 cores, other work shared the machine). Real-time rates swing with other work (by 30-50% when the earlier tables were measured beside builds), so the per-core rates (work / CPU seconds summed over the threads) are given beside them; the table shows medians over {K} rounds.")
print("- One layer: `cpu::Attention` over n_kv keys for one final chunk (512 queries at the last positions, causal) or one decode step (1 query). Shapes: 32 heads / 8 kv heads x 128 (Llama-3-8B-like) and 12 / 12 x 64 (the project's random bench model). `none`: keys already rotated; `stair`: raw keys with Mesa's Stair PE (N = 512, T = 4096, E raised so R(n_kv - 1) < T: E = 3, 10, 37 at 8k, 32k, 128k) and log-n scaling.")
print("- K/V of several layers (>= 1 GiB in all) are cycled, one per iteration, so no layer is in the cache from its last visit (the L3 of this VM reports 300 MiB).")
print("- KV GB/s: bytes of K and V of the n_kv keys (f32) per second of wall time; `% read BW`: against BM_Roofline_Read in the same run (2 threads summing a 2 GiB buffer). GFLOP: 4 * head_dim per visible (query, key, head); `% FMA peak` (per core): against BM_Roofline_Fma of the same ISA in the same run.")
print()
print("| ISA | phase | n_kv | shape | PE | ms / layer | KV GB/s | % read BW | KV GB/core-s | GFLOP/core-s | % FMA peak |")
print("|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|")
def key(item):
    (isa, name), _ = item
    parts = dict(p.split(":") for p in name.split("/")[1:5])
    return (isa != "avx512", int(parts["n_q"]) == 1, int(parts["n_kv"]), int(parts["shape"]), int(parts["variant"]))
shape_names = {0: "32/8x128", 1: "12/12x64"}
for (isa, name), bs in sorted(data.items(), key=key):
    parts = dict(p.split(":") for p in name.split("/")[1:5])
    n_q, n_kv, shape, var = int(parts["n_q"]), int(parts["n_kv"]), int(parts["shape"]), int(parts["variant"])
    ms = med([b["real_time"] for b in bs])
    kv = med([b["KV_GB/s"] for b in bs])
    kvc = med([b["KV_GB/core_s"] for b in bs])
    gfc = med([b["GFLOP/core_s"] for b in bs])
    bw = med([b["KV_GB/s"] / roof[(isa, b["round"])][1] for b in bs])
    pk = med([b["GFLOP/core_s"] / roof[(isa, b["round"])][0] for b in bs])
    print(f"| {isa} | {'decode' if n_q == 1 else 'final chunk 512'} | {n_kv // 1024}k | {shape_names[shape]} | {'stair' if var == 3 else 'none'} | {ms:.1f} | {kv:.2f} | {100 * bw:.0f}% | {kvc:.2f} | {gfc:.1f} | {100 * pk:.0f}% |")
print()
print("## Roofline per round")
print()
print("| round | ISA | load before | load after | FMA GFLOP/core-s | read GB/s | read GB/core-s |")
print("|---:|---|---|---|---:|---:|---:|")
for r, isa, *loads in rounds:
    f, rd, rc = roof[(isa, r)]
    print(f"| {r} | {isa} | {' '.join(loads[:3])} | {' '.join(loads[3:6])} | {f:.1f} | {rd:.2f} | {rc:.2f} |")
print()
print("## Every round")
print()
print("| ISA | benchmark | round | ms | KV GB/s | GFLOP/core-s |")
print("|---|---|---:|---:|---:|---:|")
for (isa, name), bs in sorted(data.items(), key=key):
    for b in bs:
        print(f"| {isa} | {name.replace('BM_AttentionLong/', '').replace('/real_time', '')} | {b['round']} | {b['real_time']:.1f} | {b['KV_GB/s']:.2f} | {b['GFLOP/core_s']:.1f} |")
PY
echo "attention_long: wrote bench/results/attention_long.md" >&2
