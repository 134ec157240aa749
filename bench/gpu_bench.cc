// gpu_bench: the device's ceilings and Mesa's CUDA kernels on them, one JSON line per
// measurement on stdout (flushed as it goes, so a run stopped by a time limit keeps
// what it measured). scripts/device_check.sh runs it and turns the lines into tables.
//
//   gpu_bench [--parts ceilings,attention,matmul] [--keys 4096,16384,65536]
//             [--types f32,f16,bf16,q4_0,q8_0,q4_k,q5_k,q6_k] [--matmul-shape ROWSxCOLS]
//             [--budget SECONDS] [--device N] [--quick]
//
// ceilings   device-to-device cudaMemcpy of 1 GiB (GB/s counting bytes read plus bytes
//            written, as the copy moves both) and an 8192^3 bf16 GEMM through cuBLAS
//            (bf16 in and out, f32 accumulation; TFLOP/s). Inputs are pseudo-random, never
//            zeros (a matrix unit runs faster on zeros).
// attention  mesa::cuda::Attention with 32 query heads, 8 kv heads, head dim 128:
//            prefill (n_q = n_kv = N, causal, keys already rotated) and the same with
//            Mesa's Stair PE over raw keys (RoPE base 500000, N = 512, E = 50, log-n at
//            8192) in TFLOP/s, counting 4 * head_dim flops per visible (query, key, head);
//            decode (one query over N keys, both variants) in GB/s of K/V read, each call
//            on another of >= 1 GiB of K/V "layers" so the L2 holds nothing from the last.
//            Each with K/V in bf16 (the CUDA cache's default, like for like with PyTorch's
//            SDPA in bench/torch_sdpa.py) and in f32 (--kv-type f32); every line names it.
// matmul     mesa::cuda::MatMul per weight type on a 14336 x 4096 matrix (Llama-3-8B's
//            ffn_gate/up): m = 1 in GB/s of weights read (matrix-vector kernels on the
//            blocks), m = 512 in TFLOP/s (dequantized bf16 tiles + cuBLAS); the weights
//            cycle through >= 1 GiB of copies.
//
// Every measurement: one warm-up call, then as many timed calls as fit --budget seconds
// (3 to 20; one when a call is longer than the budget), CUDA events around each, the
// median reported with the minimum. Outputs are poisoned (NaN) before the warm-up and
// sampled afterwards: a NaN or unwritten element turns the line into an error.
// Exit: 0 all measured; 1 some measurement failed or no usable device (the first line
// says why); 2 usage.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench/gpu_bench_fill.h"
#include "kernels/attention.h"
#include "kernels/cuda/ops.h"
#include "kernels/dtype.h"
#include "tests/testing/random_weights.h"

namespace mesa::bench {
namespace {

constexpr int64_t kHeads = 32, kKvHeads = 8, kHeadDim = 128;
constexpr size_t kGiB = size_t{1} << 30;

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void Check(cudaError_t e, const std::string& what) {
  if (e == cudaSuccess) return;
  cudaGetLastError();
  throw Failure(what + ": " + cudaGetErrorString(e));
}
void CheckBlas(cublasStatus_t s, const std::string& what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw Failure(what + ": cuBLAS status " + std::to_string(static_cast<int>(s)));
}

// Owned device memory.
template <typename T>
class Dev {
 public:
  explicit Dev(size_t count) : n_(count) {
    Check(cudaMalloc(&p_, std::max<size_t>(count, 1) * sizeof(T)),
          "cudaMalloc " + std::to_string(count * sizeof(T)) + " bytes");
  }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  ~Dev() { cudaFree(p_); }
  T* get() const { return p_; }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(T); }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

// One JSON object on one line.
class Json {
 public:
  Json& Str(const std::string& k, const std::string& v) {
    Key(k);
    out_ << '"';
    for (char c : v) {
      if (c == '"' || c == '\\') {
        out_ << '\\' << c;
      } else if (static_cast<unsigned char>(c) < 0x20) {
        char buf[8];
        std::snprintf(buf, sizeof(buf), "\\u%04x", c);
        out_ << buf;
      } else {
        out_ << c;
      }
    }
    out_ << '"';
    return *this;
  }
  Json& Num(const std::string& k, double v) {
    Key(k);
    if (std::isfinite(v)) {
      char buf[32];
      std::snprintf(buf, sizeof(buf), "%.6g", v);
      out_ << buf;
    } else {
      out_ << "null";
    }
    return *this;
  }
  Json& Int(const std::string& k, int64_t v) {
    Key(k);
    out_ << v;
    return *this;
  }
  Json& Bool(const std::string& k, bool v) {
    Key(k);
    out_ << (v ? "true" : "false");
    return *this;
  }
  void Emit() {
    std::printf("{%s}\n", out_.str().c_str());
    std::fflush(stdout);
  }

 private:
  void Key(const std::string& k) {
    if (!first_) out_ << ',';
    first_ = false;
    out_ << '"' << k << "\":";
  }
  std::ostringstream out_;
  bool first_ = true;
};

struct Options {
  std::set<std::string> parts = {"ceilings", "attention", "matmul"};
  std::vector<int64_t> keys = {4096, 16384, 65536};
  std::vector<DType> kv_types = {DType::kBF16, DType::kF32};  // K/V element types of the attention parts
  std::vector<std::string> types = {"f32", "f16", "bf16", "q4_0", "q8_0", "q4_k", "q5_k", "q6_k"};
  int64_t mm_rows = 14336, mm_cols = 4096;
  double budget_s = 2.0;
  int device = 0;
  bool quick = false;
};

struct Timing {
  double median_ms = 0, min_ms = 0;
  int reps = 0;
};

// One warm-up call of run(0), then timed calls run(1), run(2), ... on `stream`.
Timing Time(cudaStream_t stream, double budget_s, const std::function<void(int)>& run) {
  cudaEvent_t a, b;
  Check(cudaEventCreate(&a), "cudaEventCreate");
  Check(cudaEventCreate(&b), "cudaEventCreate");
  std::vector<double> ms;
  try {
    Check(cudaEventRecord(a, stream), "cudaEventRecord");
    run(0);
    Check(cudaEventRecord(b, stream), "cudaEventRecord");
    Check(cudaEventSynchronize(b), "warm-up");
    float warm = 0;
    Check(cudaEventElapsedTime(&warm, a, b), "cudaEventElapsedTime");
    const double per = std::max(1e-3, static_cast<double>(warm));
    int reps = static_cast<int>(budget_s * 1000.0 / per);
    reps = per > budget_s * 1000.0 ? 1 : std::clamp(reps, 3, 20);
    for (int r = 1; r <= reps; ++r) {
      Check(cudaEventRecord(a, stream), "cudaEventRecord");
      run(r);
      Check(cudaEventRecord(b, stream), "cudaEventRecord");
      Check(cudaEventSynchronize(b), "timed call");
      float t = 0;
      Check(cudaEventElapsedTime(&t, a, b), "cudaEventElapsedTime");
      ms.push_back(t);
    }
  } catch (...) {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    throw;
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  return Timing{sorted[sorted.size() / 2], sorted.front(), static_cast<int>(ms.size())};
}

// Throws unless the first and last `count` floats at p are finite (the output was
// poisoned with NaN before the run).
void CheckFinite(const float* p, size_t n, size_t count, const std::string& what) {
  count = std::min(count, n);
  std::vector<float> head(count), tail(count);
  Check(cudaMemcpy(head.data(), p, count * sizeof(float), cudaMemcpyDeviceToHost), what + ": copy back");
  Check(cudaMemcpy(tail.data(), p + (n - count), count * sizeof(float), cudaMemcpyDeviceToHost),
        what + ": copy back");
  for (size_t i = 0; i < count; ++i) {
    if (!std::isfinite(head[i]) || !std::isfinite(tail[i])) {
      throw Failure(what + ": output not finite (unwritten or NaN) near element " +
                    std::to_string(std::isfinite(head[i]) ? n - count + i : i));
    }
  }
}

void Poison(void* p, size_t bytes, cudaStream_t stream) { Check(cudaMemsetAsync(p, 0xFF, bytes, stream), "poison"); }

// --- ceilings ---------------------------------------------------------------------
void Copy(const Options& o, cudaStream_t stream) {
  const size_t bytes = o.quick ? kGiB / 8 : kGiB;
  Dev<float> src(bytes / 4), dst(bytes / 4);
  Check(FillUniformF32(src.get(), src.size(), 1, -1.0f, 1.0f, stream), "fill");
  Timing t = Time(stream, o.budget_s, [&](int) {
    Check(cudaMemcpyAsync(dst.get(), src.get(), bytes, cudaMemcpyDeviceToDevice, stream), "cudaMemcpyAsync");
  });
  CheckFinite(dst.get(), dst.size(), 1024, "copy");
  Json()
      .Str("bench", "copy")
      .Int("bytes", static_cast<int64_t>(bytes))
      .Num("ms", t.median_ms)
      .Num("min_ms", t.min_ms)
      .Int("reps", t.reps)
      .Num("gb_s", 2.0 * bytes / (t.median_ms * 1e6))
      .Num("read_gb_s", 1.0 * bytes / (t.median_ms * 1e6))
      .Str("counted", "bytes read + bytes written")
      .Emit();
}

void Gemm(const Options& o, cudaStream_t stream) {
  const int n = o.quick ? 4096 : 8192;
  const size_t elems = static_cast<size_t>(n) * n;
  Dev<uint16_t> a(elems), b(elems), c(elems);
  Check(FillUniformBf16(a.get(), elems, 2, -1.0f, 1.0f, stream), "fill");
  Check(FillUniformBf16(b.get(), elems, 3, -1.0f, 1.0f, stream), "fill");
  cublasHandle_t h;
  CheckBlas(cublasCreate(&h), "cublasCreate");
  struct Guard {
    cublasHandle_t h;
    ~Guard() { cublasDestroy(h); }
  } guard{h};
  CheckBlas(cublasSetStream(h, stream), "cublasSetStream");
  const float alpha = 1.0f, beta = 0.0f;
  Timing t = Time(stream, o.budget_s, [&](int) {
    CheckBlas(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a.get(), CUDA_R_16BF, n, b.get(),
                           CUDA_R_16BF, n, &beta, c.get(), CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              "cublasGemmEx");
  });
  Check(cudaStreamSynchronize(stream), "gemm");
  Json()
      .Str("bench", "gemm")
      .Str("dtype", "bf16")
      .Int("m", n)
      .Int("n", n)
      .Int("k", n)
      .Num("ms", t.median_ms)
      .Num("min_ms", t.min_ms)
      .Int("reps", t.reps)
      .Num("tflops", 2.0 * n * double(n) * n / (t.median_ms * 1e9))
      .Emit();
}

// --- attention --------------------------------------------------------------------
enum class Variant { kCausal, kStair };

void SetVariant(AttentionParams* p, Variant v) {
  if (v == Variant::kCausal) {
    p->mode = AttentionPositionMode::kNone;  // keys stored rotated: plain causal attention
    return;
  }
  p->mode = AttentionPositionMode::kRopeRaw;
  p->rel.kind = RelativePosition::Kind::kStair;
  p->rel.n = 512;
  p->rel.e = 50;
  p->rope = RopeParams{kHeadDim, kHeadDim, 500000.0f, 1.0f, false};
  p->logn_train_length = 8192;
}

const char* VariantName(Variant v) { return v == Variant::kCausal ? "causal" : "stair"; }

// K/V of `n` elements of `kv` (f32 or bf16), uniform in [-1, 1).
struct KvBuf {
  Dev<uint8_t> bytes;
  KvBuf(DType kv, size_t n, uint64_t seed, cudaStream_t stream) : bytes(n * (kv == DType::kF32 ? 4 : 2)) {
    if (kv == DType::kF32) {
      Check(FillUniformF32(reinterpret_cast<float*>(bytes.get()), n, seed, -1.0f, 1.0f, stream), "fill K/V");
    } else {
      Check(FillUniformBf16(reinterpret_cast<uint16_t*>(bytes.get()), n, seed, -1.0f, 1.0f, stream), "fill K/V");
    }
  }
};

Json AttentionLine(const char* phase, Variant v, int64_t n_q, int64_t n_kv, const AttentionParams& p,
                   const Timing& t) {
  Json j;
  j.Str("bench", "attention")
      .Str("phase", phase)
      .Str("variant", VariantName(v))
      .Int("n_q", n_q)
      .Int("n_kv", n_kv)
      .Int("n_head", kHeads)
      .Int("n_head_kv", kKvHeads)
      .Int("head_dim", kHeadDim)
      .Str("kv_type", std::string(DTypeName(p.kv_type)))
      .Int("splits", cuda::AttentionKeySplits(p))
      .Num("ms", t.median_ms)
      .Num("min_ms", t.min_ms)
      .Int("reps", t.reps);
  return j;
}

// The benchmark's shape (kHeads / kKvHeads x kHeadDim, keys from position 0, stride n_kv)
// for n_q queries over n_kv keys of `kv`; K and V are set by the caller.
AttentionParams BenchParams(int64_t n_q, int64_t n_kv, const float* q, float* out, const int64_t* pos, DType kv,
                            Variant v) {
  AttentionParams p;
  p.q = q;
  p.kv_type = kv;
  p.out = out;
  p.n_q = n_q;
  p.n_kv = n_kv;
  p.kv_stride = n_kv;
  p.kv_pos0 = 0;
  p.q_pos = pos;
  p.n_head = kHeads;
  p.n_head_kv = kKvHeads;
  p.head_dim = kHeadDim;
  p.scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  SetVariant(&p, v);
  return p;
}

void AttentionPrefill(const Options& o, int64_t n, Variant v, DType kv, cudaStream_t stream) {
  Dev<float> q(n * kHeads * kHeadDim), out(n * kHeads * kHeadDim);
  KvBuf k(kv, n * kKvHeads * kHeadDim, 20 + n, stream), val(kv, n * kKvHeads * kHeadDim, 30 + n, stream);
  Dev<int64_t> pos(n);
  Check(FillUniformF32(q.get(), q.size(), 10 + n, -1.0f, 1.0f, stream), "fill q");
  Check(FillIota64(pos.get(), n, 0, stream), "fill positions");
  AttentionParams p = BenchParams(n, n, q.get(), out.get(), pos.get(), kv, v);
  p.k = k.bytes.get();
  p.v = val.bytes.get();
  Dev<uint8_t> scratch(cuda::AttentionScratchBytes(p));
  Poison(out.get(), out.bytes(), stream);
  Timing t = Time(stream, o.budget_s, [&](int) { Check(cuda::Attention(p, scratch.get(), stream), "Attention"); });
  CheckFinite(out.get(), out.size(), kHeads * kHeadDim, "attention prefill");
  const double pairs = 0.5 * double(n) * double(n + 1);  // causal: query i sees i + 1 keys
  const double flops = 4.0 * kHeadDim * kHeads * pairs;
  AttentionLine("prefill", v, n, n, p, t).Num("tflops", flops / (t.median_ms * 1e9)).Emit();
}

void AttentionDecode(const Options& o, int64_t n, Variant v, DType kv, cudaStream_t stream) {
  const size_t layer_elems = static_cast<size_t>(n) * kKvHeads * kHeadDim;
  const size_t elem = kv == DType::kF32 ? 4 : 2;
  const size_t kv_bytes = 2 * layer_elems * elem;  // K and V of one layer
  const int layers = static_cast<int>(std::clamp<size_t>((kGiB + kv_bytes - 1) / kv_bytes, 2, 64));
  KvBuf k(kv, layer_elems * layers, 40 + n, stream), val(kv, layer_elems * layers, 50 + n, stream);
  Dev<float> q(kHeads * kHeadDim), out(kHeads * kHeadDim);
  Dev<int64_t> pos(1);
  Check(FillUniformF32(q.get(), q.size(), 60 + n, -1.0f, 1.0f, stream), "fill q");
  Check(FillIota64(pos.get(), 1, n - 1, stream), "fill position");
  AttentionParams p = BenchParams(1, n, q.get(), out.get(), pos.get(), kv, v);
  Dev<uint8_t> scratch(cuda::AttentionScratchBytes(p));
  Poison(out.get(), out.bytes(), stream);
  Timing t = Time(stream, o.budget_s, [&](int rep) {
    AttentionParams pl = p;
    pl.k = k.bytes.get() + (rep % layers) * layer_elems * elem;
    pl.v = val.bytes.get() + (rep % layers) * layer_elems * elem;
    Check(cuda::Attention(pl, scratch.get(), stream), "Attention");
  });
  CheckFinite(out.get(), out.size(), out.size(), "attention decode");
  AttentionLine("decode", v, 1, n, p, t)
      .Int("kv_bytes", static_cast<int64_t>(kv_bytes))
      .Int("layers_cycled", layers)
      .Num("gb_s", kv_bytes / (t.median_ms * 1e6))
      .Emit();
}

// --- matmul -----------------------------------------------------------------------
bool ParseType(const std::string& s, DType* t) {
  static const std::pair<const char*, DType> kTypes[] = {
      {"f32", DType::kF32},   {"f16", DType::kF16},   {"bf16", DType::kBF16}, {"q4_0", DType::kQ4_0},
      {"q8_0", DType::kQ8_0}, {"q4_k", DType::kQ4_K}, {"q5_k", DType::kQ5_K}, {"q6_k", DType::kQ6_K}};
  for (const auto& [name, type] : kTypes) {
    if (s == name) {
      *t = type;
      return true;
    }
  }
  return false;
}

void MatMulType(const Options& o, const std::string& name, cudaStream_t stream, cublasHandle_t blas) {
  DType type = DType::kF32;
  if (!ParseType(name, &type)) throw Failure("unknown weight type " + name);
  if (!cuda::SupportedWeightType(type)) throw Failure("the CUDA kernels do not read " + name);
  const int64_t rows = o.mm_rows, cols = o.mm_cols, m_big = 512;
  std::mt19937 rng(static_cast<uint32_t>(static_cast<int>(type) * 7919 + 1));
  const std::vector<uint8_t> host = testing::RandomWeights(type, rows, cols, rng);
  const size_t wbytes = host.size();
  const int copies = static_cast<int>(std::clamp<size_t>((kGiB + wbytes - 1) / wbytes, 2, 32));
  std::vector<std::unique_ptr<Dev<uint8_t>>> w;
  for (int i = 0; i < copies; ++i) {
    w.push_back(std::make_unique<Dev<uint8_t>>(wbytes));
    Check(cudaMemcpy(w.back()->get(), host.data(), wbytes, cudaMemcpyHostToDevice), "upload weights");
  }
  Dev<float> x(m_big * cols), out(m_big * rows);
  Check(FillUniformF32(x.get(), x.size(), 70, -1.0f, 1.0f, stream), "fill x");
  cuda::MatMulWorkspace ws;
  ws.cublas = blas;
  const size_t ws_bytes = cuda::MatMulWorkspaceBytes(rows, cols, m_big);
  Dev<uint8_t> ws_buf(ws_bytes);
  ws.buffer = ws_bytes ? ws_buf.get() : nullptr;
  ws.bytes = ws_bytes;
  for (int64_t m : {int64_t{1}, m_big}) {
    Poison(out.get(), m * rows * sizeof(float), stream);
    Timing t = Time(stream, o.budget_s, [&](int rep) {
      cuda::DeviceWeight dw{type, rows, cols, w[rep % copies]->get()};
      Check(cuda::MatMul(dw, x.get(), m, out.get(), ws, stream), "MatMul");
    });
    CheckFinite(out.get(), m * rows, std::min<int64_t>(rows, 4096), "matmul " + name);
    Json j;
    j.Str("bench", "matmul")
        .Str("type", name)
        .Int("m", m)
        .Int("rows", rows)
        .Int("cols", cols)
        .Int("weight_bytes", static_cast<int64_t>(wbytes))
        .Int("copies_cycled", copies)
        .Num("ms", t.median_ms)
        .Num("min_ms", t.min_ms)
        .Int("reps", t.reps)
        .Num("gb_s", wbytes / (t.median_ms * 1e6))
        .Num("tflops", 2.0 * m * double(rows) * cols / (t.median_ms * 1e9));
    j.Emit();
  }
}

// --- driver -----------------------------------------------------------------------
int failures = 0;

// Runs f; a failure becomes {"bench": what, <tags>, "error": ...} and the run goes on.
void Attempt(const std::string& what, const std::vector<std::pair<std::string, std::string>>& tags,
             const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    ++failures;
    std::string where = what;
    Json j;
    j.Str("bench", what);
    for (const auto& [k, v] : tags) {
      j.Str(k, v);
      where += " " + k + "=" + v;
    }
    std::fprintf(stderr, "gpu_bench: %s: %s\n", where.c_str(), e.what());
    j.Str("error", e.what()).Emit();
    cudaGetLastError();
  }
}

[[noreturn]] void Usage(const std::string& why) {
  std::fprintf(stderr,
               "gpu_bench: %s\nusage: gpu_bench [--parts ceilings,attention,matmul] [--keys 4096,16384,65536]\n"
               "         [--types f32,f16,bf16,q4_0,q8_0,q4_k,q5_k,q6_k] [--matmul-shape ROWSxCOLS]\n"
               "         [--budget SECONDS] [--device N] [--quick]\n",
               why.c_str());
  std::exit(2);
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s + ",") {
    if (c == ',') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  return out;
}

int64_t ParsePositive(const std::string& s, const std::string& flag) {
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || v <= 0) Usage(flag + " takes positive integers, got '" + s + "'");
  return v;
}

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Usage(a + " needs a value");
      return argv[++i];
    };
    if (a == "--parts") {
      o.parts.clear();
      for (const auto& p : Split(value())) {
        if (p != "ceilings" && p != "attention" && p != "matmul") Usage("unknown part '" + p + "'");
        o.parts.insert(p);
      }
      if (o.parts.empty()) Usage("--parts is empty");
    } else if (a == "--keys") {
      o.keys.clear();
      for (const auto& k : Split(value())) o.keys.push_back(ParsePositive(k, "--keys"));
      if (o.keys.empty()) Usage("--keys is empty");
    } else if (a == "--types") {
      o.types = Split(value());
      DType t;
      for (const auto& s : o.types) {
        if (!ParseType(s, &t)) Usage("unknown weight type '" + s + "'");
      }
    } else if (a == "--matmul-shape") {
      const std::string v = value();
      const size_t x = v.find('x');
      if (x == std::string::npos) Usage("--matmul-shape takes ROWSxCOLS, e.g. 14336x4096");
      o.mm_rows = ParsePositive(v.substr(0, x), "--matmul-shape");
      o.mm_cols = ParsePositive(v.substr(x + 1), "--matmul-shape");
    } else if (a == "--budget") {
      const std::string v = value();
      char* end = nullptr;
      o.budget_s = std::strtod(v.c_str(), &end);
      if (*end != '\0' || !(o.budget_s > 0)) Usage("--budget takes seconds > 0, got '" + v + "'");
    } else if (a == "--device") {
      const std::string v = value();
      char* end = nullptr;
      const long d = std::strtol(v.c_str(), &end, 10);
      if (v.empty() || *end != '\0' || d < 0 || d > 1024) Usage("--device takes a device index, got '" + v + "'");
      o.device = static_cast<int>(d);
    } else if (a == "--quick") {
      o.quick = true;
    } else if (a == "-h" || a == "--help") {
      Usage("the device's ceilings and Mesa's CUDA kernels, one JSON line per measurement");
    } else {
      Usage("unknown argument '" + a + "'");
    }
  }
  return o;
}

int Main(int argc, char** argv) {
  const Options o = Parse(argc, argv);
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0 || o.device >= count) {
    const std::string why = e != cudaSuccess ? std::string("no CUDA device: ") + cudaGetErrorString(e)
                            : count == 0     ? std::string("no CUDA device: the runtime found 0 devices")
                                             : "no CUDA device " + std::to_string(o.device) + " (" +
                                                   std::to_string(count) + " found)";
    std::fprintf(stderr, "gpu_bench: %s\n", why.c_str());
    Json().Str("bench", "device").Str("error", why).Emit();
    return 1;
  }
  Check(cudaSetDevice(o.device), "cudaSetDevice");
  cudaDeviceProp prop{};
  Check(cudaGetDeviceProperties(&prop, o.device), "cudaGetDeviceProperties");
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  Json()
      .Str("bench", "device")
      .Str("name", prop.name)
      .Str("sm", std::to_string(prop.major) + "." + std::to_string(prop.minor))
      .Int("multiprocessors", prop.multiProcessorCount)
      .Num("memory_gib", prop.totalGlobalMem / double(kGiB))
      .Num("l2_mib", prop.l2CacheSize / 1048576.0)
      .Int("driver", driver)
      .Int("runtime", runtime)
      .Bool("quick", o.quick)
      .Emit();
  cudaStream_t stream;
  Check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  if (o.parts.count("ceilings")) {
    Attempt("copy", {}, [&] { Copy(o, stream); });
    Attempt("gemm", {}, [&] { Gemm(o, stream); });
  }
  if (o.parts.count("attention")) {
    for (int64_t n : o.keys) {
      for (Variant v : {Variant::kCausal, Variant::kStair}) {
        for (DType kv : o.kv_types) {
          Attempt("attention",
                  {{"phase", "decode"}, {"variant", VariantName(v)}, {"n_kv", std::to_string(n)},
                   {"kv_type", std::string(DTypeName(kv))}},
                  [&] { AttentionDecode(o, n, v, kv, stream); });
        }
      }
    }
    for (int64_t n : o.keys) {  // the longest prefill last: it takes the most time
      for (Variant v : {Variant::kCausal, Variant::kStair}) {
        for (DType kv : o.kv_types) {
          Attempt("attention",
                  {{"phase", "prefill"}, {"variant", VariantName(v)}, {"n_kv", std::to_string(n)},
                   {"kv_type", std::string(DTypeName(kv))}},
                  [&] { AttentionPrefill(o, n, v, kv, stream); });
        }
      }
    }
  }
  if (o.parts.count("matmul")) {
    cublasHandle_t blas = nullptr;
    Attempt("matmul", {}, [&] {
      CheckBlas(cublasCreate(&blas), "cublasCreate");
      CheckBlas(cublasSetStream(blas, stream), "cublasSetStream");
    });
    if (blas) {
      for (const auto& t : o.types) Attempt("matmul", {{"type", t}}, [&] { MatMulType(o, t, stream, blas); });
      cublasDestroy(blas);
    }
  }
  cudaStreamDestroy(stream);
  return failures ? 1 : 0;
}

}  // namespace
}  // namespace mesa::bench

int main(int argc, char** argv) {
  try {
    return mesa::bench::Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gpu_bench: %s\n", e.what());
    mesa::bench::Json().Str("bench", "device").Str("error", e.what()).Emit();
    return 1;
  }
}
