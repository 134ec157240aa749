#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention on gpu_bench's attention shapes.

The reference the issue compares Mesa's CUDA attention with: 32 query heads, 8 kv
heads, head dim 128, causal prefill (n_q = n_kv = N) in TFLOP/s and one decode query
over N keys in GB/s of K/V read, on the same device in the same run. One JSON line per
measurement on stdout, in gpu_bench's fields (bench "torch_sdpa", phase, variant
"causal", n_q, n_kv, kv_type, ms, tflops or gb_s), so scripts/device_check.sh puts both
in one table.

FLOPs are counted as gpu_bench counts them: 4 * head_dim per visible (query, key,
head), N (N + 1) / 2 visible pairs per head for a causal prefill. bf16 is the issue's
comparison; --dtypes bf16,f32 adds f32 (the memory-efficient kernel), like for like
with Mesa's f32 K/V of today. Decode calls cycle through >= 1 GiB of K/V so the L2
holds nothing from the previous call. Timing: one warm-up call, then as many calls as
fit --budget seconds (3 to 20; one when a call takes longer), CUDA events, median.

Usage: bench/torch_sdpa.py [--keys 4096,16384,65536] [--dtypes bf16[,f32]]
                           [--budget SECONDS] [--device N]
Exit: 0 all measured; 1 torch or CUDA missing (said on stderr and in a JSON line with
"error") or a measurement failed; 2 usage.
"""
import argparse
import json
import math
import sys

HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128
GIB = 1 << 30


def emit(obj):
    print(json.dumps(obj), flush=True)


def fail(why):
    print(f"torch_sdpa: {why}", file=sys.stderr)
    emit({"bench": "torch_sdpa", "error": why})
    return 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", default="4096,16384,65536")
    ap.add_argument("--dtypes", default="bf16")
    ap.add_argument("--budget", type=float, default=2.0)
    ap.add_argument("--device", type=int, default=0)
    args = ap.parse_args()
    try:
        keys = [int(k) for k in args.keys.split(",") if k]
        if not keys or min(keys) <= 0:
            raise ValueError
    except ValueError:
        ap.error(f"--keys takes positive integers like 4096,16384 (got {args.keys!r})")
    dtypes = [d for d in args.dtypes.split(",") if d]
    if not dtypes or any(d not in ("bf16", "f32") for d in dtypes):
        ap.error(f"--dtypes takes bf16 and/or f32 (got {args.dtypes!r})")
    if not args.budget > 0:
        ap.error("--budget takes seconds > 0")

    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        return fail(f"PyTorch is not installed here ({e}); run this on the device machine, "
                    "whose image has it")
    if not torch.cuda.is_available():
        return fail(f"no CUDA device visible to PyTorch {torch.__version__} "
                    f"(torch.cuda.is_available() is False)")
    if args.device >= torch.cuda.device_count():
        return fail(f"no CUDA device {args.device} ({torch.cuda.device_count()} found)")
    dev = torch.device("cuda", args.device)
    torch.cuda.set_device(dev)
    emit({"bench": "torch_device", "name": torch.cuda.get_device_name(dev),
          "torch": torch.__version__, "cuda": torch.version.cuda})

    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # older torch: no backend selection
        SDPBackend = sdpa_kernel = None

    def gqa_call(q, k, v, causal):
        """SDPA with 8 kv heads for 32 query heads: native GQA where torch has it."""
        try:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True), "native"
        except (TypeError, RuntimeError):
            rep = HEADS // KV_HEADS
            return F.scaled_dot_product_attention(
                q, k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1),
                is_causal=causal), "expanded"

    def timed(fn):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(0)
        stop.record()
        stop.synchronize()
        warm = max(1e-3, start.elapsed_time(stop))
        reps = 1 if warm > args.budget * 1000 else min(20, max(3, int(args.budget * 1000 / warm)))
        ms = []
        for r in range(1, reps + 1):
            start.record()
            fn(r)
            stop.record()
            stop.synchronize()
            ms.append(start.elapsed_time(stop))
        ms.sort()
        return ms[len(ms) // 2], ms[0], len(ms)

    failures = 0
    gen = torch.Generator(device=dev)
    gen.manual_seed(1)

    def rand(*shape, dtype):  # uniform in [-1, 1): never zeros
        return torch.rand(*shape, device=dev, dtype=torch.float32, generator=gen).mul_(2).sub_(1).to(dtype)

    for dname in dtypes:
        dtype = torch.bfloat16 if dname == "bf16" else torch.float32
        esize = 2 if dname == "bf16" else 4
        # f32 has no flash kernel; pin the memory-efficient one (the math fallback would
        # materialize n x n scores).
        ctx = (lambda: sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION])) if (dname == "f32" and sdpa_kernel) \
            else (lambda: _Null())
        for phase in ("decode", "prefill"):
            for n in keys:
                line = {"bench": "torch_sdpa", "phase": phase, "variant": "causal",
                        "n_q": n if phase == "prefill" else 1, "n_kv": n, "n_head": HEADS,
                        "n_head_kv": KV_HEADS, "head_dim": HEAD_DIM, "kv_type": dname}
                try:
                    with ctx():
                        if phase == "prefill":
                            q = rand(1, HEADS, n, HEAD_DIM, dtype=dtype)
                            k = rand(1, KV_HEADS, n, HEAD_DIM, dtype=dtype)
                            v = rand(1, KV_HEADS, n, HEAD_DIM, dtype=dtype)
                            how = {}

                            def run(_):
                                out, how["gqa"] = gqa_call(q, k, v, True)
                                return out
                            ms, mn, reps = timed(run)
                            out = run(0)
                            pairs = n * (n + 1) / 2
                            line.update(tflops=4.0 * HEAD_DIM * HEADS * pairs / (ms * 1e9))
                        else:
                            kv_bytes = 2 * KV_HEADS * n * HEAD_DIM * esize
                            layers = max(2, min(64, math.ceil(GIB / kv_bytes)))
                            k = rand(layers, KV_HEADS, n, HEAD_DIM, dtype=dtype)
                            v = rand(layers, KV_HEADS, n, HEAD_DIM, dtype=dtype)
                            q = rand(1, HEADS, 1, HEAD_DIM, dtype=dtype)
                            how = {}

                            def run(r):
                                # One query sees every key: no causal mask needed.
                                out, how["gqa"] = gqa_call(q, k[r % layers:r % layers + 1],
                                                           v[r % layers:r % layers + 1], False)
                                return out
                            ms, mn, reps = timed(run)
                            out = run(0)
                            line.update(kv_bytes=kv_bytes, layers_cycled=layers,
                                        gb_s=kv_bytes / (ms * 1e6))
                        if not torch.isfinite(out).all().item():
                            raise RuntimeError("output not finite")
                        line.update(ms=ms, min_ms=mn, reps=reps, gqa=how.get("gqa", "?"))
                        emit(line)
                        del q, k, v, out
                except Exception as e:  # noqa: BLE001 - reported, and the run goes on
                    failures += 1
                    line["error"] = f"{type(e).__name__}: {e}"
                    print(f"torch_sdpa: {phase} n={n} {dname}: {line['error']}", file=sys.stderr)
                    emit(line)
                torch.cuda.empty_cache()
    return 1 if failures else 0


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    sys.exit(main())
