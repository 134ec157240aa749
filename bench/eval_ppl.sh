#!/usr/bin/env bash
# Perplexity and passkey retrieval against input length on the two shared TinyStories
# models (stories260K-f32.gguf, tinystories-656k-f32.gguf; trained length 512), comparing
# full attention (the original model), mesa, self-extend and rerope with `mesa eval`.
# Writes bench/results/ppl.md with the tables, the machine, the date and the commit, and
# the plots bench/results/ppl_stories260K.png and ppl_tinystories656k.png.
#
# 1. Perplexity: lengths 256..8192, WINDOWS consecutive windows of the text per length
#    (text/tinystories_valid_part1.txt; non-ASCII removed for the 656k model, whose
#    vocabulary has no byte tokens, as in TESTDATA.md). One run gives both scopes: all
#    tokens (ppl of tokens 1..L-1) and the second half of each window.
# 2. Check of the evaluator against llama.cpp: full attention, second half, 8 windows,
#    256..4096, next to the llama-perplexity numbers of TESTDATA.md.
# 3. Passkey: lengths 256..4096, SAMPLES prompts per length, TinyStories text as filler
#    (the models never saw the classic "The grass is green." filler; both fail anyway).
#
# Usage: bench/eval_ppl.sh [--windows W] [--samples K] [--threads T] [--build-dir DIR]
#                          [--lengths L] [--skip-passkey] [--skip-reference]
# Environment: MESA_BUILD_DIR (default build/release), MESA_BIN (the mesa binary; default
#   $MESA_BUILD_DIR/client/cli/mesa), MESA_SHARED_DIR (default ../shared).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${MESA_BUILD_DIR:-$ROOT/build/release}"
SHARED="${MESA_SHARED_DIR:-$ROOT/../shared}"
OUT_DIR="$ROOT/bench/results"
LENGTHS=256,512,1024,2048,4096,8192
METHODS=full,mesa,self-extend,rerope
PASSKEY_LENGTHS=256,512,1024,2048,4096
WINDOWS=4 SAMPLES=5 THREADS="$(nproc)"
SKIP_PASSKEY=0 SKIP_REFERENCE=0

say() { echo "eval_ppl: $*" >&2; }
die() { echo "eval_ppl: ERROR: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --windows) WINDOWS="$2"; shift 2 ;;
    --samples) SAMPLES="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --lengths) LENGTHS="$2"; shift 2 ;;
    --build-dir) BUILD_DIR="$2"; shift 2 ;;
    --skip-passkey) SKIP_PASSKEY=1; shift ;;
    --skip-reference) SKIP_REFERENCE=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

MESA="${MESA_BIN:-$BUILD_DIR/client/cli/mesa}"
[ -x "$MESA" ] || die "$MESA not found: build it first (cmake --build --preset release --target mesa) or pass --build-dir"
command -v python3 >/dev/null || die "python3 is needed to write the report"
command -v gnuplot >/dev/null || die "gnuplot is needed for the plots (apt-get install gnuplot-nox)"
TEXT="$SHARED/text/tinystories_valid_part1.txt"
[ -f "$TEXT" ] || die "$TEXT not found (set MESA_SHARED_DIR)"
mkdir -p "$OUT_DIR"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
LC_ALL=C tr -d '\200-\377' < "$TEXT" > "$TMP/tinystories_ascii.txt"

# name  model file  text
MODELS=(
  "stories260K|$SHARED/models/stories260K-f32.gguf|$TEXT"
  "tinystories656k|$SHARED/models/tinystories-656k-f32.gguf|$TMP/tinystories_ascii.txt"
)

START=$(date +%s)
LOAD_START="$(cut -d" " -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
for entry in "${MODELS[@]}"; do
  IFS='|' read -r name model text <<< "$entry"
  [ -f "$model" ] || die "$model not found (set MESA_SHARED_DIR)"
  say "$name: perplexity at $LENGTHS, $WINDOWS window(s), $METHODS"
  "$MESA" eval ppl --model "$model" --text "$text" --lengths "$LENGTHS" --attention "$METHODS" \
    --windows "$WINDOWS" --threads "$THREADS" --json --plot "$OUT_DIR/ppl_$name.png" \
    > "$TMP/ppl_$name.json"
  if [ "$SKIP_REFERENCE" = 0 ]; then
    say "$name: llama-perplexity convention (full, second half, 8 windows)"
    "$MESA" eval ppl --model "$model" --text "$text" --lengths 256,512,1024,2048,4096 \
      --attention full --scope second-half --windows 8 --threads "$THREADS" --json \
      > "$TMP/ref_$name.json"
  fi
  if [ "$SKIP_PASSKEY" = 0 ]; then
    say "$name: passkey at $PASSKEY_LENGTHS, $SAMPLES sample(s)"
    "$MESA" eval passkey --model "$model" --lengths "$PASSKEY_LENGTHS" --attention "$METHODS" \
      --samples "$SAMPLES" --seed 1 --filler "$text" --threads "$THREADS" --json \
      > "$TMP/passkey_$name.json"
  fi
done
ELAPSED=$(( $(date +%s) - START ))
LOAD_END="$(cut -d" " -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
rm -f "$OUT_DIR"/ppl_*.gp  # keep the PNGs and their .dat data

CPU="$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -v '^??' || true)" ]; then COMMIT="$COMMIT + uncommitted changes"; fi

python3 - "$TMP" "$OUT_DIR/ppl.md" "$CPU" "$(nproc)" "$THREADS" "$COMMIT" "$ELAPSED" \
  "$WINDOWS" "$SAMPLES" "$LOAD_START" "$LOAD_END" <<'PY'
import json, os, sys, datetime
tmp, out, cpu, cores, threads, commit, elapsed, windows, samples, load0, load1 = sys.argv[1:]
names = ["stories260K", "tinystories656k"]
files = {"stories260K": "stories260K-f32.gguf", "tinystories656k": "tinystories-656k-f32.gguf"}
reference = {  # TESTDATA.md: llama-perplexity, second half, 8 windows
    "stories260K": [3.58, 3.50, 4.37, 5.60, 224.5],
    "tinystories656k": [27.4, 39.4, 131.6, 357.9, 916.2],
}
def load(path):
    return json.load(open(path)) if os.path.exists(path) else None
def fmt(v):
    return f"{v:.2f}" if v < 1000 else f"{v:.4g}"
def grid(points, key, fmtf=fmt):
    lengths = sorted({p["length"] for p in points})
    methods = list(dict.fromkeys(p["attention"] for p in points))
    cell = {(p["length"], p["attention"]): p for p in points}
    rows = ["| length | " + " | ".join(methods) + " |", "|---:|" + "---:|" * len(methods)]
    for l in lengths:
        rows.append(f"| {l} | " + " | ".join(fmtf(cell[(l, m)][key]) if (l, m) in cell else "-"
                                        for m in methods) + " |")
    return "\n".join(rows)

md = ["# Perplexity and passkey retrieval against input length", "",
      f"- Date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
      f"- Commit: {commit}",
      f"- Machine: {cpu}, {cores} cores; {threads} threads; total run time {int(elapsed)//60} min {int(elapsed)%60} s; "
      f"load average (1/5/15 min) {load0} before, {load1} after (other work on the cores slows the timings)",
      "- Models: ../shared/models/stories260K-f32.gguf and tinystories-656k-f32.gguf, trained length T = 512",
      "- Text: ../shared/text/tinystories_valid_part1.txt (non-ASCII bytes removed for the 656k model)",
      "- Made by `bench/eval_ppl.sh` (`mesa eval ppl` / `mesa eval passkey`, default Mesa, Self-Extend and ReRoPE settings)",
      "",
      "What we expected (MESA_SPEC section 6): the original model's perplexity (full) rises sharply past",
      "T = 512; mesa stays close to its value at 512. The numbers below are what was measured.",
      ""]
for name in names:
    ppl = load(f"{tmp}/ppl_{name}.json")
    if not ppl:
        continue
    md += [f"## {name}", "",
           f"Perplexity, all tokens: exp(mean NLL of predicting tokens 1..L-1) of each window of L tokens, "
           f"{windows} consecutive window(s) per length, each starting with BOS.", "",
           grid(ppl, "ppl_all"), "",
           "Perplexity, second half of each window only (llama-perplexity's convention; from L = 1024 on "
           "every scored token lies beyond T):", "",
           grid(ppl, "ppl_second_half"), "",
           f"Prefill seconds for the {windows} window(s):", "",
           grid(ppl, "seconds", lambda v: f"{v:.1f}"), "",
           f"![perplexity against length, {name}](ppl_{name}.png)", ""]
    by = {(p["length"], p["attention"]): p for p in ppl}
    notes = []
    for m in dict.fromkeys(p["attention"] for p in ppl):
        if (512, m) in by:
            longest = max(l for (l, mm) in by if mm == m)
            a, b = by[(512, m)]["ppl_all"], by[(longest, m)]["ppl_all"]
            s, t = by[(512, m)]["ppl_second_half"], by[(longest, m)]["ppl_second_half"]
            notes.append(f"- {m}: ppl at {longest} / ppl at 512 = {b/a:.2f} (all tokens), {t/s:.2f} (second half)")
    md += ["Measured ratios:", ""] + notes + [""]
    ref = load(f"{tmp}/ref_{name}.json")
    if ref:
        md += ["Evaluator check against llama.cpp (full attention, second half, 8 windows):", "",
               "| window | mesa eval ppl | llama-perplexity (TESTDATA.md) |", "|---:|---:|---:|"]
        for p, r in zip(sorted(ref, key=lambda p: p["length"]), reference[name]):
            md.append(f"| {p['length']} | {fmt(p['ppl'])} | {r} |")
        md.append("")
passkeys = {name: load(f"{tmp}/passkey_{name}.json") for name in names}
if any(passkeys.values()):
    md += ["## Passkey retrieval", "",
           f"{samples} prompt(s) per length (seed 1; random 5-digit key at a random depth; TinyStories text as "
           "filler, with the classic opening instruction and closing question), greedy decoding of 10 tokens, "
           "hit = the first integer of the answer equals the key. Cells: accuracy (hits/samples).", ""]
for name, pk in passkeys.items():
    if not pk:
        continue
    for p in pk:
        p["cell"] = f"{p['accuracy']:.2f} ({p['hits']}/{p['samples']})"
    md += [f"### {name}", "", grid(pk, "cell", str), ""]
    answered = sum(1 for p in pk for t in p["trials"] if t["answered"] is not None)
    total = sum(len(p["trials"]) for p in pk)
    examples = [t["answer"].strip() for p in pk for t in p["trials"]][:3]
    md += [f"Answers containing any integer: {answered} of {total}. Example answers: "
           + "; ".join(f"\"{e}\"" for e in examples), ""]
open(out, "w").write("\n".join(md))
print(out)
PY
say "wrote $OUT_DIR/ppl.md"
