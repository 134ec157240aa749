#!/usr/bin/env bash
# Prefill time and peak memory against input length, mesa against full attention, on a
# small real model (default ../shared/models/stories260K-f32.gguf, --train-length 512).
# Each (method, length) runs in a fresh `mesa bench --prompt-tokens P --gen-tokens 0
# --attention M --reps R --json` process (median of R prefills, default 3), so
# peak_rss_bytes is that run's own peak, under a per-run time limit (runs that hit it are reported, not retried). Writes
# bench/results/prefill_scaling.md (table, checks, machine, date, commit) and
# bench/results/prefill_scaling.png (time and memory against length).
#
# Checks reported (measured, not assumed):
#   - mesa time(32k) / time(4k) <= 10 (linear prefill: the ideal is 8)
#   - mesa peak memory linear in the length (least-squares line, largest deviation)
#   - full time quadratic (log-log slope of time over the longest lengths, ideal 2)
#   - mesa's time overhead against full where both finished (ratio per length)
#
# Usage: bench/prefill_scaling.sh [--lengths "1024 2048 ..."] [--model M] [--threads T]
#                                 [--limit SECONDS] [--reps R] [--build-dir DIR]
# Environment: MESA_BUILD_DIR (default build/release), MESA_BIN (the mesa binary),
#   MESA_SHARED_DIR (default ../shared).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${MESA_BUILD_DIR:-$ROOT/build/release}"
SHARED="${MESA_SHARED_DIR:-$ROOT/../shared}"
MODEL="$SHARED/models/stories260K-f32.gguf"
LENGTHS="1024 2048 4096 8192 16384 32768"
METHODS="mesa full"
THREADS="$(nproc)" LIMIT=600 TRAIN=512 REPS=3
OUT_MD="$ROOT/bench/results/prefill_scaling.md"
OUT_PNG="$ROOT/bench/results/prefill_scaling.png"

say() { echo "prefill_scaling: $*" >&2; }
die() { echo "prefill_scaling: ERROR: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --lengths) LENGTHS="$2"; shift 2 ;;
    --model) MODEL="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --limit) LIMIT="$2"; shift 2 ;;
    --reps) REPS="$2"; shift 2 ;;
    --build-dir) BUILD_DIR="$2"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
MESA="${MESA_BIN:-$BUILD_DIR/client/cli/mesa}"
[ -x "$MESA" ] || die "$MESA not found: build it first or pass --build-dir"
[ -f "$MODEL" ] || die "$MODEL not found (set MESA_SHARED_DIR)"
command -v python3 >/dev/null || die "python3 is needed to write the report"
command -v gnuplot >/dev/null || die "gnuplot is needed for the plot (apt-get install gnuplot-nox)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

LOAD_START="$(cut -d" " -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
: > "$TMP/runs.jsonl"
for n in $LENGTHS; do
  for m in $METHODS; do
    say "$m at $n tokens (limit ${LIMIT}s)"
    start=$(date +%s%N)
    set +e
    timeout "$LIMIT" "$MESA" bench --model "$MODEL" --prompt-tokens "$n" --gen-tokens 0 \
      --attention "$m" --train-length "$TRAIN" --threads "$THREADS" --reps "$REPS" --json \
      > "$TMP/out.json" 2> "$TMP/err.txt"
    rc=$?
    set -e
    wall_ns=$(( $(date +%s%N) - start ))
    python3 - "$m" "$n" "$rc" "$wall_ns" "$TMP/out.json" "$TMP/err.txt" >> "$TMP/runs.jsonl" <<'PY'
import json, sys
m, n, rc, wall_ns, out, err = sys.argv[1:]
rec = {"attention": m, "length": int(n), "rc": int(rc), "wall_s": int(wall_ns) / 1e9}
try:
    data = json.loads(open(out).read().strip().splitlines()[-1])
    data["prefill_info"] = data.pop("attention", None)  # the method and plan actually used
    rec.update(data)
except Exception:
    rec["error"] = open(err).read().strip()[-300:]
print(json.dumps(rec))
PY
    tail -1 "$TMP/runs.jsonl" | python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); print("prefill_scaling:   rc", r["rc"], "prefill", round(r["prompt_tokens"]/r["prefill_tokens_per_s"],2) if r.get("prefill_tokens_per_s") else "-", "s, peak RSS", round(r.get("peak_rss_bytes",0)/2**20,1), "MiB", file=sys.stderr)'
  done
done

LOAD_END="$(cut -d" " -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
CPU="$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -v '^??' || true)" ]; then COMMIT="$COMMIT + uncommitted changes"; fi

python3 - "$TMP" "$OUT_MD" "$OUT_PNG" "$MODEL" "$CPU" "$(nproc)" "$THREADS" "$COMMIT" "$LIMIT" "$TRAIN" "$REPS" "$LOAD_START" "$LOAD_END" <<'PY'
import json, math, os, subprocess, sys, datetime
tmp, out_md, out_png, model, cpu, cores, threads, commit, limit, train, reps, load0, load1 = sys.argv[1:]
runs = [json.loads(l) for l in open(f"{tmp}/runs.jsonl")]
def ok(r):
    return r["rc"] == 0 and r.get("prefill_tokens_per_s", 0) > 0
for r in runs:
    r["prefill_s"] = r["length"] / r["prefill_tokens_per_s"] if ok(r) else None
    r["rss_mib"] = r["peak_rss_bytes"] / 2**20 if ok(r) else None
by = {(r["attention"], r["length"]): r for r in runs}
lengths = sorted({r["length"] for r in runs})
methods = list(dict.fromkeys(r["attention"] for r in runs))
def status(r):
    if r is None: return "not run"
    if r["rc"] in (124, 137): return f"time limit ({limit} s)"
    if not ok(r): return f"failed (rc {r['rc']}): {r.get('error', '')[:80]}"
    return ""

md = ["# Prefill time and peak memory against input length", "",
      f"- Date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
      f"- Commit: {commit}",
      f"- Machine: {cpu}, {cores} cores; {threads} threads; load average (1/5/15 min) {load0} before the runs, "
      f"{load1} after (well above the thread count means other work shared the cores: timings are then slower and noisier)",
      f"- Model: {os.path.basename(model)}, --train-length {train}; random prompt ids; one fresh process per run "
      f"(`mesa bench --prompt-tokens P --gen-tokens 0 --attention M --reps {reps} --json`), time limit {limit} s per run",
      f"- prefill s = P / prefill_tokens_per_s (median of {reps} prefills after a short warm-up); "
      "peak RSS = the process's peak resident set (model, buffers, KV cache)", "",
      "| length | " + " | ".join(f"{m} prefill s | {m} tokens/s | {m} peak RSS MiB" for m in methods)
      + " | mesa / full time |",
      "|---:|" + "---:|---:|---:|" * len(methods) + "---:|"]
for n in lengths:
    cells = []
    for m in methods:
        r = by.get((m, n))
        if r is not None and ok(r):
            cells += [f"{r['prefill_s']:.2f}", f"{r['prefill_tokens_per_s']:.0f}", f"{r['rss_mib']:.1f}"]
        else:
            cells += [status(r), "-", "-"]
    a, b = by.get(("mesa", n)), by.get(("full", n))
    ratio = f"{a['prefill_s'] / b['prefill_s']:.2f}" if a and b and ok(a) and ok(b) else "-"
    md.append(f"| {n} | " + " | ".join(cells) + f" | {ratio} |")
md += [""]

checks = []
def t(m, n):
    r = by.get((m, n))
    return r["prefill_s"] if r and ok(r) else None
lo, hi = 4096, max(lengths)
if hi > lo and t("mesa", lo) and t("mesa", hi):
    q = t("mesa", hi) / t("mesa", lo)
    checks.append(f"- mesa time({hi}) / time({lo}) = {q:.2f} (check <= {hi // lo * 10 // 8}; "
                  f"linear would be {hi / lo:.0f}): **{'PASS' if q <= hi // lo * 10 // 8 else 'FAIL'}**")
else:
    checks.append(f"- mesa time({hi}) / time({lo}): not measured (a run is missing)")
def linfit(xs, ys):
    n = len(xs); mx = sum(xs) / n; my = sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - b * mx, b
for m in methods:
    pts = [(n, by[(m, n)]["rss_mib"]) for n in lengths if (m, n) in by and ok(by[(m, n)])]
    if len(pts) >= 3:
        a, b = linfit([p[0] for p in pts], [p[1] for p in pts])
        dev = max(abs(y - (a + b * x)) / y for x, y in pts)
        checks.append(f"- {m} peak RSS: least-squares line {a:.1f} MiB + {b * 1024:.3f} MiB per 1k tokens; "
                      f"largest deviation from the line {100 * dev:.1f}% "
                      f"(linear: **{'PASS' if dev <= 0.10 else 'FAIL'}**, check <= 10%)")
full_pts = [(n, t("full", n)) for n in lengths if t("full", n)]
if len(full_pts) >= 3:
    top = full_pts[-3:]
    xs = [math.log(n) for n, _ in top]; ys = [math.log(s) for _, s in top]
    _, slope = linfit(xs, ys)
    checks.append(f"- full time: log-log slope over {top[0][0]}..{top[-1][0]} = {slope:.2f} "
                  f"(quadratic = 2; the linear part of the work flattens it at short lengths): "
                  f"**{'PASS' if slope >= 1.6 else 'FAIL'}** (check >= 1.6)")
mesa_pts = [(n, t("mesa", n)) for n in lengths if t("mesa", n)]
if len(mesa_pts) >= 3:
    top = mesa_pts[-3:]
    _, slope = linfit([math.log(n) for n, _ in top], [math.log(s) for _, s in top])
    checks.append(f"- mesa time: log-log slope over {top[0][0]}..{top[-1][0]} = {slope:.2f} (linear = 1)")
both = [n for n in lengths if t("mesa", n) and t("full", n)]
if both:
    checks.append("- mesa / full prefill time where both finished: "
                  + ", ".join(f"{n}: {t('mesa', n) / t('full', n):.2f}" for n in both)
                  + f" (overhead at {both[0]} tokens: {100 * (t('mesa', both[0]) / t('full', both[0]) - 1):+.0f}%)")
limited = [f"{r['attention']} at {r['length']}" for r in runs if r["rc"] in (124, 137)]
failed = [f"{r['attention']} at {r['length']} (rc {r['rc']})" for r in runs if not ok(r) and r["rc"] not in (124, 137)]
checks.append("- runs that hit the time limit: " + (", ".join(limited) if limited else "none"))
if failed:
    checks.append("- runs that failed: " + ", ".join(failed))
md += ["## Checks", ""] + checks + ["", "![prefill time and peak memory](prefill_scaling.png)", ""]
open(out_md, "w").write("\n".join(md))

dat = os.path.splitext(out_png)[0] + ".dat"  # kept beside the plot
with open(dat, "w") as f:
    for m in methods:
        f.write(f"# {m}: length prefill_s rss_mib\n")
        for n in lengths:
            r = by.get((m, n))
            if r and ok(r):
                f.write(f"{n} {r['prefill_s']} {r['rss_mib']}\n")
        f.write("\n\n")
tics = ", ".join(f'"{n // 1024}k" {n}' for n in lengths)
gp = f"""set terminal pngcairo size 1200,520 font 'sans,11'
set output '{out_png}'
set multiplot layout 1,2 title 'Prefill on {os.path.basename(model)} (T = {train}), {threads} threads' noenhanced
set logscale x 2
set xtics ({tics})
set xrange [{lengths[0] / 1.3}:{lengths[-1] * 1.3}]
set grid
set key top left reverse Left noenhanced
set xlabel 'input length (tokens)'
set logscale y
set format y '%g'
set ylabel 'prefill time (s, log scale)'
set title 'time (log-log)'
plot """ + ", ".join(f"'{dat}' index {i} using 1:2 with linespoints linewidth 2 pointtype {5 + 2 * i} title '{m}'"
                     for i, m in enumerate(methods)) + f"""
unset logscale y
unset logscale x
set xtics ({", ".join(f'"{n // 1024}k" {n}' for n in lengths if n >= lengths[-1] // 8)})
set xrange [0:{lengths[-1] * 1.05}]
set ylabel 'peak RSS (MiB)'
set title 'peak memory (linear axes)'
set yrange [0:*]
plot """ + ", ".join(f"'{dat}' index {i} using 1:3 with linespoints linewidth 2 pointtype {5 + 2 * i} title '{m}'"
                     for i, m in enumerate(methods)) + """
unset multiplot
"""
open(f"{tmp}/scaling.gp", "w").write(gp)
subprocess.run(["gnuplot", f"{tmp}/scaling.gp"], check=True)
print(out_md)
PY
say "wrote $OUT_MD and $OUT_PNG"
