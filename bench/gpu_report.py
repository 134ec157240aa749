#!/usr/bin/env python3
"""Turns a scripts/device_check.sh run into bench/results/gpu.md tables.

Reads the work directory device_check.sh fills (meta.json, steps.tsv, and each step's
NAME.out / NAME.err) and writes OUT/gpu.md and OUT/raw.jsonl (every JSON line of every
step, tagged {"step": NAME, "step_rc": RC}, plus one {"kind": "step"} line per step).
Exit 0 when every step passed and no measurement carried an error, else 1.

Usage: bench/gpu_report.py --work DIR --out DIR
"""
import argparse
import json
import os
import re
import sys

# Bytes of one row of `cols` elements (ggml block sizes).
BLOCK = {"f32": (1, 4), "f16": (1, 2), "bf16": (1, 2), "q8_0": (32, 34), "q4_0": (32, 18),
         "q4_k": (256, 144), "q5_k": (256, 176), "q6_k": (256, 210)}


def row_bytes(t, cols):
    elems, nbytes = BLOCK[t]
    return cols // elems * nbytes


def fmt(v, digits=1, unit=""):
    if v is None:
        return "n/a"
    if isinstance(v, float) and v != v:
        return "n/a"
    return f"{v:,.{digits}f}{unit}"


def ratio(a, b, digits=2):
    return fmt(a / b, digits) if a and b else "n/a"


def pct(a, b):
    return fmt(100.0 * a / b, 0, "%") if a and b else "n/a"


def mib(b):
    return fmt(b / 1048576.0, 0, " MiB") if b else "n/a"


class Run:
    def __init__(self, work):
        self.work = work
        self.meta = json.load(open(os.path.join(work, "meta.json")))
        self.steps = []  # (name, rc, seconds, limit)
        for line in open(os.path.join(work, "steps.tsv")):
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 4:
                self.steps.append((parts[0], parts[1], int(parts[2]), int(parts[3])))
        self.lines = {}  # step -> [json objects]
        for name, *_ in self.steps:
            self.lines[name] = []
            path = os.path.join(work, name + ".out")
            if os.path.exists(path):
                for raw in open(path, errors="replace"):
                    raw = raw.strip()
                    if raw.startswith("{"):
                        try:
                            self.lines[name].append(json.loads(raw))
                        except json.JSONDecodeError:
                            pass

    def rc(self, name):
        for n, rc, *_ in self.steps:
            if n == name:
                return rc
        return None

    def text(self, name, ext):
        path = os.path.join(self.work, f"{name}.{ext}")
        return open(path, errors="replace").read() if os.path.exists(path) else ""

    def find(self, step, **want):
        for obj in self.lines.get(step, []):
            if "error" not in obj and all(obj.get(k) == v for k, v in want.items()):
                return obj
        return None


def step_result(rc, seconds, limit):
    if rc == "skipped":
        return "skipped (budget spent)"
    if rc == "0":
        return "ok"
    if rc in ("124", "137"):
        return f"timed out ({limit} s)"
    return f"failed (exit {rc})"


def gpu_tests_summary(run):
    out = run.text("gpu_tests", "out")
    if run.rc("gpu_tests") is None:
        return ["not run"]
    m = re.search(r"(\d+)% tests passed, (\d+) tests? failed out of (\d+)", out)
    skipped = len(re.findall(r"^\s*\d+/\d+ Test\s+#\d+: \S+ .*\*\*\*Skipped", out, re.M))
    lines = []
    if m:
        total, failed = int(m.group(3)), int(m.group(2))
        lines.append(f"`ctest -L gpu`: {total} tests, {total - failed - skipped} passed, {skipped} skipped, "
                     f"{failed} failed.")
        if total and skipped == total:
            lines.append("**Every gpu test skipped: no usable GPU** (the skip reason is in log.txt).")
        if total == 0:
            lines.append("**The bundle lists no gpu tests** (build the test targets before scripts/gpu_bundle.sh).")
    else:
        lines.append(f"`ctest -L gpu` gave no summary ({step_result(run.rc('gpu_tests'), 0, 240)}); see log.txt.")
    failed_names = re.findall(r"^\s*\d+ - (\S+) \((Failed|Timeout|SEGFAULT|Subprocess aborted|Exception)[^)]*\)",
                              out, re.M)
    if failed_names:
        lines.append("")
        lines.append("Failed: " + ", ".join(f"`{n}` ({why})" for n, why in failed_names[:40]) +
                     (" ..." if len(failed_names) > 40 else ""))
    return lines


def model_shape(obj):
    """The make_model line's flags -> dict of ints."""
    args = obj.get("shape", [])
    d = {}
    for i in range(0, len(args) - 1, 2):
        try:
            d[args[i].lstrip("-").replace("-", "_")] = int(args[i + 1])
        except ValueError:
            pass
    return d


def decode_bytes_per_token(shape, t, prompt, gen, kv_elem=2):
    """Bytes one decode step reads: every matrix but the embedding table (one row of it),
    the f32 norms, and the K/V of the context (its mean length over the decode; bf16 by
    default on the GPU: kv_elem bytes per element)."""
    e, ff, v, L = shape["n_embd"], shape["n_ff"], shape["n_vocab"], shape["n_layer"]
    hd = e // shape["n_head"]
    q, kv = shape["n_head"] * hd, shape["n_head_kv"] * hd
    per_layer = (q * row_bytes(t, e) + 2 * kv * row_bytes(t, e) + e * row_bytes(t, q) +
                 2 * ff * row_bytes(t, e) + e * row_bytes(t, ff) + 2 * e * 4)
    weights = L * per_layer + v * row_bytes(t, e) + row_bytes(t, e) + e * 4
    ctx = prompt + gen / 2.0
    kv_read = L * 2 * kv * kv_elem * ctx
    return weights + kv_read, weights


def report(run):
    m = run.meta
    cpu_check = m["mode"] == "cpu-check"
    no_gpu = m["gpu"] == "none"
    md = ["# GPU benchmarks", ""]
    md.append(f"Written by `scripts/device_check.sh` ({m['mode']} mode) on {m['date']}, host {m['host']}.")
    md.append(f"GPU (nvidia-smi: name, driver, memory): **{m['gpu']}**. Budget {m['budget_s']} s.")
    commit = re.search(r"commit: (.*)", m.get("bundle", ""))
    if commit:
        md.append(f"Bundle built from commit {commit.group(1)}.")
    md.append("")
    if cpu_check:
        md.append("**CPU plumbing check, not GPU numbers:** the model rows ran `mesa bench --device cpu` on a tiny "
                  "model; every GPU part ran as on a device and failed or skipped.")
        md.append("")
    if no_gpu:
        md.append("**No GPU was found on this machine: every GPU part below failed or skipped.**")
        md.append("")

    md += ["## Steps", "", "| step | result | seconds | limit |", "|---|---|---:|---:|"]
    for name, rc, sec, lim in run.steps:
        md.append(f"| {name} | {step_result(rc, sec, lim)} | {sec} | {lim} |")
    md.append("")

    md += ["## GPU tests", ""] + gpu_tests_summary(run) + [""]

    copy = run.find("ceilings", bench="copy")
    gemm = run.find("ceilings", bench="gemm")
    copy_bw = copy["gb_s"] if copy else None
    gemm_tf = gemm["tflops"] if gemm else None
    md += ["## Ceilings (measured first, same run)", "", "| ceiling | measured |", "|---|---:|"]
    md.append(f"| device-to-device copy, {fmt(copy['bytes'] / 2**30, 2) if copy else '?'} GiB "
              f"(bytes read + written) | {fmt(copy_bw, 0, ' GB/s')} |")
    md.append(f"| bf16 GEMM {gemm['m'] if gemm else '?'}^3 through cuBLAS (f32 accumulation) | "
              f"{fmt(gemm_tf, 0, ' TFLOP/s')} |")
    md.append("")

    md += ["## Attention (32 query heads, 8 kv heads, head dim 128)", "",
           "Mesa's kernel reads bf16 K/V (the CUDA cache's default; all arithmetic in f32 on CUDA cores) and "
           "f32 K/V; PyTorch's SDPA runs bf16 (the issue's comparison) and f32. FLOPs: 4 x head_dim per visible "
           "(query, key, head). Stair PE: raw keys, N = 512, E = 50, log-n at 8192.", "",
           "Prefill (n_q = n_kv, causal), TFLOP/s:", "",
           "| keys | mesa causal bf16 | mesa Stair PE bf16 | Stair / causal (goal >= 0.6) | torch bf16 | "
           "mesa / torch bf16 (goal >= 1.0) | torch f32 | mesa causal f32 | mesa f32 / torch f32 |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    keys = sorted({o["n_kv"] for o in run.lines.get("attention", []) + run.lines.get("torch_sdpa", [])
                   if "n_kv" in o and "error" not in o and isinstance(o["n_kv"], int)})
    def attention_lines(phase, n):
        """Mesa causal bf16, Mesa Stair PE bf16, Mesa causal f32, torch bf16, torch f32."""
        return (run.find("attention", phase=phase, variant="causal", n_kv=n, kv_type="bf16"),
                run.find("attention", phase=phase, variant="stair", n_kv=n, kv_type="bf16"),
                run.find("attention", phase=phase, variant="causal", n_kv=n, kv_type="f32"),
                run.find("torch_sdpa", phase=phase, n_kv=n, kv_type="bf16"),
                run.find("torch_sdpa", phase=phase, n_kv=n, kv_type="f32"))

    for n in keys:
        c, s, c32, tb, tf = attention_lines("prefill", n)
        g = lambda o: o["tflops"] if o else None  # noqa: E731
        md.append(f"| {n:,} | {fmt(g(c))} | {fmt(g(s))} | {ratio(g(s), g(c))} | {fmt(g(tb))} | "
                  f"{ratio(g(c), g(tb))} | {fmt(g(tf))} | {fmt(g(c32))} | {ratio(g(c32), g(tf))} |")
    md += ["", "Decode (one query over n_kv keys), GB/s of K/V read (K/V cycled over >= 1 GiB):", "",
           "| keys | mesa causal bf16 | of copy bandwidth (goal >= 75%) | mesa Stair PE bf16 | key splits | "
           "torch bf16 | mesa causal f32 | torch f32 |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in keys:
        c, s, c32, tb, tf = attention_lines("decode", n)
        g = lambda o: o["gb_s"] if o else None  # noqa: E731
        md.append(f"| {n:,} | {fmt(g(c), 0)} | {pct(g(c), copy_bw)} | {fmt(g(s), 0)} | "
                  f"{c['splits'] if c else 'n/a'} | {fmt(g(tb), 0)} | {fmt(g(c32), 0)} | {fmt(g(tf), 0)} |")
    md.append("")

    # Model level.
    md += ["## Llama-3-8B-shaped synthetic model", ""]
    shape = None
    for t in ("bf16", "q8_0", "q4_k"):
        o = run.find(f"model_{t}")
        if o:
            shape = model_shape(o)
            break
    if shape:
        md.append(f"n_embd {shape.get('n_embd')}, {shape.get('n_head')}/{shape.get('n_head_kv')} heads, n_ff "
                  f"{shape.get('n_ff')}, vocab {shape.get('n_vocab')}, **{shape.get('n_layer')} layers** (of "
                  f"Llama-3-8B's 32, to fit the device time), trained length {shape.get('ctx')}; random weights "
                  "written on the device by `mesa_make_random_model`; K/V cache bf16 (the GPU default).")
    md += ["", "Decode (`mesa bench`, tokens after a short prompt):", "",
           "| type | file | decode tok/s | bytes read / token | GB/s | of copy bandwidth (goal >= 70%) | "
           "peak GPU memory |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for t in ("bf16", "q8_0", "q4_k"):
        mo, d = run.find(f"model_{t}"), run.find(f"decode_{t}")
        tok = d["decode_tokens_per_s"] if d else None
        per_tok = gbs = None
        if d and mo:
            per_tok, _ = decode_bytes_per_token(model_shape(mo), t, d["prompt_tokens"], d["gen_tokens"])
            gbs = per_tok * tok / 1e9 if tok else None
        md.append(f"| {t} | {mib(mo['file_bytes']) if mo else 'n/a'} | {fmt(tok)} | {mib(per_tok)} | "
                  f"{fmt(gbs, 0)} | {pct(gbs, copy_bw)} | {mib(d.get('peak_device_bytes')) if d else 'n/a'} |")
    md += ["", "Prefill of the bf16 model (`mesa bench -g 0`), tokens/s and peak GPU memory (bytes held through "
           "the backend: weights, cache, activations, scratch):", "",
           "| tokens | mesa tok/s | full tok/s | mesa / full | mesa peak | full peak | mesa peak - weights, "
           "per token |",
           "|---:|---:|---:|---:|---:|---:|---:|"]
    lengths = sorted({int(n.rsplit("_", 1)[1]) for n, *_ in run.steps if n.startswith("prefill_")})
    weights_bytes = None
    mo = run.find("model_bf16")
    if mo:
        weights_bytes = mo["file_bytes"]
    for n in lengths:
        a, f = run.find(f"prefill_mesa_{n}"), run.find(f"prefill_full_{n}")
        at = a["prefill_tokens_per_s"] if a else None
        ft = f["prefill_tokens_per_s"] if f else None
        ap = a.get("peak_device_bytes") if a else None
        fp = f.get("peak_device_bytes") if f else None
        per = fmt((ap - weights_bytes) / n / 1024, 1, " KiB") if ap and weights_bytes else "n/a"
        md.append(f"| {n:,} | {fmt(at)} | {fmt(ft)} | {ratio(at, ft)} | {mib(ap)} | {mib(fp)} | {per} |")
    md.append("")

    md += ["## Matrix products (`mesa::cuda::MatMul`)", ""]
    mm = [o for o in run.lines.get("matmul", []) if o.get("bench") == "matmul" and "error" not in o]
    if mm:
        md.append(f"{mm[0]['rows']} x {mm[0]['cols']} weights, cycled over >= 1 GiB of copies; m = 1: the "
                  "matrix-vector kernels (GB/s of weights); m = 512: dequantized bf16 tiles + cuBLAS.")
    md += ["", "| type | weights | m=1 GB/s | of copy bandwidth | m=512 TFLOP/s | of GEMM ceiling |",
           "|---|---:|---:|---:|---:|---:|"]
    for t in BLOCK:
        one = next((o for o in mm if o["type"] == t and o["m"] == 1), None)
        big = next((o for o in mm if o["type"] == t and o["m"] > 1), None)
        if not one and not big:
            continue
        w = (one or big)["weight_bytes"]
        md.append(f"| {t} | {mib(w)} | {fmt(one['gb_s'] if one else None, 0)} | "
                  f"{pct(one['gb_s'] if one else None, copy_bw)} | {fmt(big['tflops'] if big else None)} | "
                  f"{pct(big['tflops'] if big else None, gemm_tf)} |")
    md.append("")

    problems = []
    for name, rc, sec, lim in run.steps:
        errs = [o for o in run.lines.get(name, []) if "error" in o]
        if rc != "0" or errs:
            tail = [ln for ln in run.text(name, "err").strip().splitlines() if ln.strip()][-3:]
            what = step_result(rc, sec, lim)
            for o in errs[:10]:
                tags = ", ".join(f"{k}={v}" for k, v in o.items() if k not in ("error",))
                problems.append(f"- {name}: {tags}: {o['error']}")
            if rc != "0":
                problems.append(f"- {name}: {what}" + (": " + " / ".join(tail) if tail else ""))
    tests_out = run.text("gpu_tests", "out")
    m_t = re.search(r"tests? failed out of (\d+)", tests_out)
    n_skip = len(re.findall(r"^\s*\d+/\d+ Test\s+#\d+: \S+ .*\*\*\*Skipped", tests_out, re.M))
    if m_t and n_skip:
        problems.append(f"- gpu_tests: {n_skip} of {m_t.group(1)} gpu tests skipped (the reasons are in log.txt)")
    elif m_t and int(m_t.group(1)) == 0:
        problems.append("- gpu_tests: no gpu tests in the bundle")
    md += ["## What failed", ""] + (problems or ["Nothing."]) + [""]
    ok = not problems and not no_gpu and not cpu_check
    return "\n".join(md), ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    run = Run(a.work)
    md, ok = report(run)
    with open(os.path.join(a.out, "gpu.md"), "w") as f:
        f.write(md)
    with open(os.path.join(a.out, "raw.jsonl"), "w") as f:
        f.write(json.dumps({"kind": "meta", **run.meta}) + "\n")
        for name, rc, sec, lim in run.steps:
            f.write(json.dumps({"kind": "step", "step": name, "rc": rc, "seconds": sec, "limit_s": lim}) + "\n")
            for obj in run.lines.get(name, []):
                f.write(json.dumps({"step": name, "step_rc": rc, **obj}) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
