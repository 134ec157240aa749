#!/usr/bin/env bash
# End-to-end checks of the `mesa` command shapes (a contract: scripts and benchmarks
# call them): plan, logits, tokenize (also plan and tokenize on a vocab-only GGUF),
# generate, run (also OpenAI batch lines), eval, and clear failures on bad input. Real
# binary, real model; skips (exit 77) without the shared data.
#   cli_test.sh MESA_BINARY SHARED_DIR
set -uo pipefail
MESA="$1"
SHARED="$2"
MODEL="$SHARED/models/stories260K-f32.gguf"
if [ ! -f "$MODEL" ]; then echo "SKIP: $MODEL not found"; exit 77; fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
pass=0 fail=0
check() {  # check NAME COMMAND...: the command must succeed
  local name="$1"; shift
  if "$@" >"$TMP/out" 2>"$TMP/err"; then pass=$((pass + 1)); else
    fail=$((fail + 1)); echo "FAIL: $name"; cat "$TMP/out" "$TMP/err" | head -20; fi
  # `json` reads the output of the last command that was not itself a `json` check.
  [ "$1" = json ] || cp "$TMP/out" "$TMP/last"
}
json() { python3 -c "import json,sys; d=json.load(open('$TMP/last')); $1"; }

# The worked toy plan of MESA_SPEC section 5, through the CLI.
check "plan toy" "$MESA" plan --train-length 32 --anchor 4 --last-chunk 8 --margin 0 \
  --stair-n 16 --stair-e 2 --length 60 --max-new 0 --json
check "plan toy values" json "assert d['middle'] == [[4, 28], [28, 52]], d; assert d['last'] == [52, 60]; assert d['stair_e'] == 3"

# logits: little-endian float32, one vocab-sized row per token with --all.
check "logits --all" "$MESA" logits --model "$MODEL" --tokens 1,403,407,261 --all --out "$TMP/l.bin"
check "logits size" test "$(stat -c %s "$TMP/l.bin")" -eq $((4 * 512 * 4))
check "logits last" "$MESA" logits --model "$MODEL" --tokens "1 403 407 261" --out "$TMP/l1.bin"
check "logits last row equals --all's last row" python3 -c "
import struct, math
a=open('$TMP/l.bin','rb').read(); b=open('$TMP/l1.bin','rb').read()
x=struct.unpack('<512f', a[-len(b):]); y=struct.unpack('<512f', b)
err=math.sqrt(sum((p-q)**2 for p,q in zip(x,y))/sum(q*q for q in y)); assert err < 1e-5, err"

# tokenize: markers stay text unless --parse-special.
check "tokenize plain" "$MESA" tokenize --model "$MODEL" --text "<s>" --no-bos --json
check "tokenize no injection" json "assert 1 not in d['tokens'], d"
check "tokenize special" "$MESA" tokenize --model "$MODEL" --text "<s>" --no-bos --parse-special --json
check "tokenize special id" json "assert d['tokens'] == [1], d"

# tokenize and plan need only the tokenizer and config: a vocab-only GGUF (the model's
# metadata, no tensors) will do; commands that run the model still need the tensors.
cat > "$TMP/vocab_only.py" <<'EOF'
import struct, sys
d = open(sys.argv[1], 'rb').read()
assert d[:4] == b'GGUF' and struct.unpack_from('<I', d, 4)[0] == 3
n_kv, p = struct.unpack_from('<Q', d, 16)[0], 24
fixed = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
def skip(t, p):  # past one value of GGUF type t
    if t in fixed: return p + fixed[t]
    if t == 8: return p + 8 + struct.unpack_from('<Q', d, p)[0]
    et, n = struct.unpack_from('<IQ', d, p); p += 12
    for _ in range(n): p = skip(et, p)
    return p
for _ in range(n_kv):
    p += 8 + struct.unpack_from('<Q', d, p)[0]
    p = skip(struct.unpack_from('<I', d, p)[0], p + 4)
open(sys.argv[2], 'wb').write(d[:8] + struct.pack('<QQ', 0, n_kv) + d[24:p])
EOF
check "write vocab-only gguf" python3 "$TMP/vocab_only.py" "$MODEL" "$TMP/vocab.gguf"
check "tokenize vocab-only" "$MESA" tokenize --model "$TMP/vocab.gguf" --text "Once upon a time <s>" --json
cp "$TMP/out" "$TMP/vocab_tokens.json"
check "tokenize full model" "$MESA" tokenize --model "$MODEL" --text "Once upon a time <s>" --json
check "same tokens from the vocab-only file" cmp "$TMP/last" "$TMP/vocab_tokens.json"
check "plan vocab-only" "$MESA" plan --model "$TMP/vocab.gguf" --length 3000 --json
check "plan vocab-only trained length" json "assert d['train_length'] == 512 and d['chunked'], d"

# generate: greedy story of TESTDATA.md, with the plan in the JSON.
check "generate" "$MESA" generate --model "$MODEL" --prompt "Once upon a time" -n 20 --json
check "generate text" json "assert d['text'].startswith(', there was a little girl named Lily'), d['text']; assert len(d['tokens']) == 20; assert d['attention']['attention'] == 'mesa'"

# run: a good line, bad lines as error records, resume skips finished lines.
printf '%s\n' '{"custom_id":"a","document":"Tom had a red ball. He liked to play with it."}' \
  'not json' '{"custom_id":"b"}' > "$TMP/in.jsonl"
check "run" "$MESA" run --model "$MODEL" --input "$TMP/in.jsonl" --output "$TMP/res.jsonl" --max-tokens 8
check "run records" python3 -c "
import json; r=[json.loads(l) for l in open('$TMP/res.jsonl')]
assert [x['status'] for x in r] == ['ok','error','error'], r
assert r[0]['generated_tokens'] == 8 and r[0]['text']"
cp "$TMP/res.jsonl" "$TMP/res1.jsonl"
check "run resume" "$MESA" run --model "$MODEL" --input "$TMP/in.jsonl" --output "$TMP/res.jsonl" --max-tokens 8 --no-retry-errors
check "run resume kept the finished line" python3 -c "
a=open('$TMP/res1.jsonl').readline(); b=open('$TMP/res.jsonl').readline(); assert a == b"

# run: Mesa's lines and OpenAI batch lines mixed (a line's body.max_tokens applies).
printf '%s\n' '{"custom_id":"n","document":"Tom had a red ball."}' \
  '{"custom_id":"o","method":"POST","url":"/v1/chat/completions","body":{"messages":[{"role":"system","content":"Tell a story."},{"role":"user","content":"Tom had a red ball."}],"max_tokens":4}}' \
  > "$TMP/mixed.jsonl"
check "run mixed lines" "$MESA" run --model "$MODEL" --input "$TMP/mixed.jsonl" --output "$TMP/mixed_out.jsonl" --max-tokens 6
check "run mixed records" python3 -c "
import json; r=[json.loads(l) for l in open('$TMP/mixed_out.jsonl')]
assert [x['status'] for x in r] == ['ok','ok'], r
assert r[0]['generated_tokens'] == 6 and 0 < r[1]['generated_tokens'] <= 4, r"

# eval ppl: mesa equals full when the input fits.
head -c 20000 "$SHARED/text/tinystories_valid_part1.txt" > "$TMP/text.txt"
check "eval ppl" "$MESA" eval ppl --model "$MODEL" --text "$TMP/text.txt" --lengths 256 --attention mesa,full --json
check "eval ppl fits" json "p={x['attention']: x['ppl'] for x in d}; assert p['mesa'] == p['full'], p"

# --weights: own (copied/packed) and mapped give the same logits on an F32 file, and
# bench says which was used.
check "weights own logits" "$MESA" --weights own logits --model "$MODEL" --tokens 1,403,407,261 --out "$TMP/own.bin"
check "weights mapped logits" "$MESA" logits --model "$MODEL" --tokens 1,403,407,261 --out "$TMP/map.bin" --weights mapped
check "weights own == mapped" cmp "$TMP/own.bin" "$TMP/map.bin"
check "bench reports weights" "$MESA" --weights mapped bench --model "$MODEL" --prompt-tokens 8 --gen-tokens 2 --json
check "bench weights mapped" json "assert d['weights'] == 'mapped', d"

# Bad input fails with a message and a non-zero exit.
bad() {  # bad NAME PATTERN COMMAND...
  local name="$1" pattern="$2"; shift 2
  if "$@" >"$TMP/out" 2>"$TMP/err"; then fail=$((fail + 1)); echo "FAIL: $name succeeded"
  elif grep -qi -- "$pattern" "$TMP/err"; then pass=$((pass + 1))
  else fail=$((fail + 1)); echo "FAIL: $name: message lacks '$pattern'"; cat "$TMP/err"; fi
}
bad "missing model" "cannot load model" "$MESA" generate --model "$TMP/none.gguf" --prompt hi
bad "generate needs the tensors" "token_embd" "$MESA" generate --model "$TMP/vocab.gguf" --prompt hi
bad "bad token id" "not a token id" "$MESA" logits --model "$MODEL" --tokens 1,x --out "$TMP/x.bin"
bad "token outside vocab" "outside the vocabulary" "$MESA" logits --model "$MODEL" --tokens 1,99999 --out "$TMP/x.bin"
bad "unknown attention" "not in" "$MESA" generate --model "$MODEL" --prompt hi --attention nope
bad "unknown weights" "not in" "$MESA" --weights nope generate --model "$MODEL" --prompt hi
bad "unknown MESA_CPU_ISA" "not one of auto, avx512, avx2, scalar" env MESA_CPU_ISA=sse9 "$MESA" info --devices
check "MESA_CPU_ISA=scalar" env MESA_CPU_ISA=scalar "$MESA" bench --model "$MODEL" --prompt-tokens 8 --gen-tokens 2 --json
check "bench reports the forced ISA" json "assert d['cpu_isa'] == 'scalar', d"
bad "width cap below 1" "W_cap\|width" "$MESA" plan --train-length 32 --anchor 40 --length 100
# --device and --kv-type on every command that runs the model; a device that cannot run
# is a clear error (where a GPU is usable, the same commands must run instead).
for cmd in generate logits bench run eval worker; do
  check "$cmd has --device and --kv-type" bash -c "'$MESA' $( [ $cmd = eval ] && echo 'eval ppl' || echo $cmd) --help | grep -q -- '--device' && '$MESA' $( [ $cmd = eval ] && echo 'eval ppl' || echo $cmd) --help | grep -q -- '--kv-type'"
done
bad "unknown device" "unknown device 'tpu'" "$MESA" generate --model "$MODEL" --prompt hi --device tpu
bad "unknown kv type" "unknown K/V type" "$MESA" generate --model "$MODEL" --prompt hi --kv-type q8
bad "cpu keeps f32 K/V" "cannot keep K/V as bf16" "$MESA" generate --model "$MODEL" --prompt hi --kv-type bf16
if "$MESA" info --devices 2>&1 | grep -q "^GPU 0:"; then
  check "generate on cuda" "$MESA" generate --model "$MODEL" --prompt hi -n 4 --device cuda
else
  bad "no GPU here" "cannot be used\|compiled without CUDA" "$MESA" generate --model "$MODEL" --prompt hi --device cuda
fi
# The CUDA plugin's backend op table is the one this build drives (a stale plugin is named).
check "info --devices --json" "$MESA" info --devices --json
check "plugin ABI matches the build" json "assert not d['compiled_with_cuda'] or 'could not be loaded' in d['unavailable_reason'] or d['backend_abi'] == d['expected_backend_abi'], d"
check "bench reports the device" "$MESA" bench --model "$MODEL" --prompt-tokens 8 --gen-tokens 2 --json --device cpu
check "bench device cpu" json "assert d['device'] == 'cpu', d"
# --profile: per phase, per op; the matrix products and attention ran in both phases.
check "bench --profile" "$MESA" bench --model "$MODEL" --prompt-tokens 16 --gen-tokens 3 --json --profile
check "bench profile ops" json "p = d['profile']; assert all(p[ph]['ops']['matmul']['calls'] > 0 and p[ph]['ops']['attention']['gflop_per_s'] > 0 and p[ph]['wall_seconds'] >= p[ph]['op_seconds'] * 0.9 for ph in ('prefill', 'decode')), p"
check "bench --profile text" "$MESA" bench --model "$MODEL" --prompt-tokens 16 --gen-tokens 3 --profile
check "bench profile table" grep -q "matmul .*%" "$TMP/last"
printf 'bad \xff utf8' > "$TMP/bad.txt"
bad "invalid utf-8" "utf-8" "$MESA" tokenize --model "$MODEL" --file "$TMP/bad.txt"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
