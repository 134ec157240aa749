// The backend seam (kernels/backend.h) is complete: the forward pass, the KV cache and
// Mesa's phases run on a backend whose memory the host cannot read, as a GPU's.
//
// OpaqueBackend is a test double for the seam (not for the thing tested): it computes
// with the CPU backend, but every pointer it hands out has bit 62 flipped, which makes
// it a non-canonical x86-64 address: any place in engine/ that dereferences backend
// memory directly, or passes it to a CPU kernel, or uses a host weight instead of a
// placed one, faults at once. Its ops flip the bit back before computing. Results must
// be bit-identical to the CPU backend's, on every architecture (Llama GQA, Qwen2 with
// biases, MPT with ALiBi and fused qkv) and through Mesa's phases.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "engine/forward.h"
#include "engine/long_context.h"
#include "engine/mesa_phases.h"
#include "engine/model_loader.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/profiling_backend.h"
#include "tests/testing/compare.h"
#include "tests/testing/opaque_backend.h"
#include "tests/testing/random_model.h"
#include "tests/testing/temp_path.h"

namespace mesa {
namespace {

using testing::OpaqueBackend;

struct Case {
  const char* name;
  testing::RandomModelSpec spec;
};

class BackendSeamTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    testing::RandomModelSpec spec = GetParam().spec;
    spec.tokenizer_source = testing::kSyntheticTokenizer;
    path_ = testing::UniqueTempPath(std::string("seam-") + GetParam().name + ".gguf");
    ASSERT_TRUE(testing::WriteRandomGguf(spec, path_).ok());
    auto m = LoadModel(path_);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = *std::move(m);
  }
  void TearDown() override { std::remove(path_.c_str()); }

  // A 300-token prompt through LongContextRunner (Mesa with a trained length of 128, or
  // full attention for an ALiBi model: Stair PE needs RoPE), every token's logits, then
  // `decode_steps` decode steps' logits.
  static constexpr int64_t kLongPrompt = 300;
  std::vector<float> RunLong(Backend& backend, int decode_steps) {
    const std::vector<int32_t> prompt = testing::RandomTokens(kLongPrompt, model_->config.n_vocab, 11);
    LongContextOptions o;
    o.method = model_->config.position == PositionType::kRope ? AttentionMethod::kMesa : AttentionMethod::kFull;
    o.mesa.train_length = 128;
    o.mesa.anchor = 16;
    o.mesa.last_chunk = 40;
    LongContextRunner runner(*model_, backend, o);
    std::vector<float> logits, step;
    auto info = runner.Prefill(prompt, 4, LogitsMode::kAll, &logits);
    EXPECT_TRUE(info.ok()) << info.status();
    if (info.ok()) {
      EXPECT_EQ(info->method, o.method);
    }
    for (int i = 0; i < decode_steps; ++i) {
      EXPECT_TRUE(runner.DecodeStep(3 + 2 * i, &step).ok());
      logits.insert(logits.end(), step.begin(), step.end());
    }
    return logits;
  }

  std::string path_;
  std::unique_ptr<Model> model_;
};

// Prefill in micro-batches, then decode steps (the cache grows through Reserve on the
// backend), logits of every token: identical on both backends.
TEST_P(BackendSeamTest, ForwardIsBitIdenticalOnAnOpaqueBackend) {
  const std::vector<int32_t> tokens = testing::RandomTokens(45, model_->config.n_vocab, 7);
  auto run = [&](Backend& backend) {
    ModelRunner runner(*model_, backend, /*max_batch=*/16);
    EXPECT_TRUE(runner.status().ok()) << runner.status();
    KvCache cache = runner.NewCache(8);
    std::vector<float> all, one;
    EXPECT_TRUE(runner.Forward(absl::MakeConstSpan(tokens).subspan(0, 40), cache, LogitsMode::kAll, &all).ok());
    for (size_t i = 40; i < tokens.size(); ++i) {
      EXPECT_TRUE(runner.Forward({&tokens[i], 1}, cache, LogitsMode::kLast, &one).ok());
      all.insert(all.end(), one.begin(), one.end());
    }
    return all;
  };
  CpuBackend cpu(2);
  OpaqueBackend opaque(2);
  const std::vector<float> a = run(cpu);
  const std::vector<float> b = run(opaque);
  ASSERT_EQ(a.size(), tokens.size() * model_->config.n_vocab);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
}

// The profiling wrapper (mesa bench --profile) changes no result, on a host backend and
// on an opaque one (which it synchronizes after every op), and counts what ran: the
// matrix products' flops are 2 x rows x cols per token of every weight matrix (the
// output too: every token's logits were asked for), attention's are 4 x head_dim per
// visible (query, key, head) -- causal: token i sees i + 1 keys -- and the decode phase
// holds only what ran after SetPhase(1).
TEST_P(BackendSeamTest, ProfilingChangesNothingAndCountsTheWork) {
  const ModelConfig& c = model_->config;
  const std::vector<int32_t> tokens = testing::RandomTokens(41, c.n_vocab, 9);
  auto run = [&](Backend& backend, ProfilingBackend* prof) {
    ModelRunner runner(*model_, backend, /*max_batch=*/16);
    EXPECT_TRUE(runner.status().ok()) << runner.status();
    KvCache cache = runner.NewCache(8);
    std::vector<float> all, one;
    EXPECT_TRUE(runner.Forward(absl::MakeConstSpan(tokens).subspan(0, 40), cache, LogitsMode::kAll, &all).ok());
    if (prof) prof->SetPhase(1);
    EXPECT_TRUE(runner.Forward({&tokens[40], 1}, cache, LogitsMode::kLast, &one).ok());
    all.insert(all.end(), one.begin(), one.end());
    return all;
  };
  CpuBackend cpu(2);
  const std::vector<float> plain = run(cpu, nullptr);
  double matrix_elems = static_cast<double>(model_->weights.output.rows * model_->weights.output.cols);
  for (const LayerWeights& l : model_->weights.layers) {
    for (const WeightView* v : {&l.wq, &l.wk, &l.wv, &l.wqkv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) {
      if (v->data != nullptr) matrix_elems += static_cast<double>(v->rows * v->cols);
    }
  }
  for (bool opaque : {false, true}) {
    SCOPED_TRACE(opaque ? "opaque backend" : "cpu backend");
    CpuBackend cpu2(2);
    OpaqueBackend opq(2);
    Backend& inner = opaque ? static_cast<Backend&>(opq) : static_cast<Backend&>(cpu2);
    ProfilingBackend prof(inner);
    const std::vector<float> got = run(prof, &prof);
    ASSERT_EQ(got.size(), plain.size());
    EXPECT_EQ(0, std::memcmp(got.data(), plain.data(), got.size() * sizeof(float)));
    using Op = ProfilingBackend::Op;
    const auto& mm = prof.stats(0, Op::kMatMul);
    EXPECT_GT(mm.calls, 0);
    EXPECT_DOUBLE_EQ(mm.flops, 2.0 * 40 * matrix_elems);
    EXPECT_GT(mm.seconds, 0);
    const auto& at = prof.stats(0, Op::kAttention);
    EXPECT_EQ(at.calls, 3 * c.n_layer);  // micro-batches of 16, 16 and 8 tokens
    if (!opaque) {  // positions readable: causal pairs 1 + 2 + ... + 40
      EXPECT_DOUBLE_EQ(at.flops, 4.0 * c.head_dim * c.n_head * (40 * 41 / 2) * c.n_layer);
    } else {  // every (query, key) of each call's keys counted
      EXPECT_GE(at.flops, 4.0 * c.head_dim * c.n_head * (40 * 41 / 2) * c.n_layer);
    }
    EXPECT_GT(prof.stats(0, Op::kNorm).calls, 0);
    EXPECT_GE(prof.OpSeconds(0), mm.seconds + at.seconds);
    // Decode: one token, the last token's logits only.
    EXPECT_DOUBLE_EQ(prof.stats(1, Op::kMatMul).flops, 2.0 * matrix_elems);
    if (!opaque) {
      EXPECT_DOUBLE_EQ(prof.stats(1, Op::kAttention).flops, 4.0 * c.head_dim * c.n_head * 41 * c.n_layer);
    }
    EXPECT_EQ(prof.stats(1, Op::kAttention).calls, c.n_layer);
    prof.Reset();
    EXPECT_EQ(prof.OpSeconds(0) + prof.OpSeconds(1), 0.0);
  }
}

// Mesa's phases (anchor, middle chunks, the final chunk with Stair PE, decode) move K/V
// between the host and the backend only through its copies.
TEST_P(BackendSeamTest, LongContextIsBitIdenticalOnAnOpaqueBackend) {
  CpuBackend cpu(2);
  OpaqueBackend opaque(2);
  const std::vector<float> a = RunLong(cpu, /*decode_steps=*/3);
  const std::vector<float> b = RunLong(opaque, 3);
  ASSERT_EQ(a.size(), (kLongPrompt + 3) * model_->config.n_vocab);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
}

// A backend that keeps K/V as f16 or bf16 (as a GPU does by default): the forward pass
// stores rounded keys and values and Mesa's phases move them through f32 chunks; the
// logits stay within the rounding's reach of the f32 ones.
TEST_P(BackendSeamTest, HalfPrecisionKvStaysCloseToF32) {
  CpuBackend cpu(2);
  const std::vector<float> want = RunLong(cpu, 0);
  for (DType t : {DType::kF16, DType::kBF16}) {
    OpaqueBackend opaque(2);
    ASSERT_TRUE(opaque.set_kv_type(t).ok());
    const std::vector<float> got = RunLong(opaque, 0);
    ASSERT_EQ(got.size(), want.size());
    const double err = testing::MaxRowRelError(got, want, model_->config.n_vocab);
    std::printf("%s K/V: max row relative error of the logits %.2e\n", std::string(DTypeName(t)).c_str(), err);
    EXPECT_GT(err, 0.0) << "the K/V was not rounded";
    EXPECT_LT(err, t == DType::kBF16 ? 1e-2 : 2e-3) << DTypeName(t);
  }
  // The CPU backend refuses what its attention cannot read.
  EXPECT_FALSE(cpu.set_kv_type(DType::kBF16).ok());
  EXPECT_EQ(cpu.kv_type(), DType::kF32);
}

// Every buffer the engine allocates on a backend is given back.
TEST_P(BackendSeamTest, NothingLeaksOnTheBackend) {
  OpaqueBackend opaque(1);
  {
    ModelRunner runner(*model_, opaque);
    KvCache cache = runner.NewCache(4);
    std::vector<float> logits;
    const std::vector<int32_t> t = testing::RandomTokens(9, model_->config.n_vocab, 3);
    ASSERT_TRUE(runner.Forward(t, cache, LogitsMode::kLast, &logits).ok());
    KvCache copy = cache.Copy();
    EXPECT_EQ(copy.size(), cache.size());
  }
  // What stays: the placed weights, held until the backend goes.
  EXPECT_GT(opaque.placed(), 0);
  EXPECT_EQ(opaque.live(), opaque.placed());
}

testing::RandomModelSpec Spec(const char* arch, int64_t n_head_kv) {
  testing::RandomModelSpec s;
  s.arch = arch;
  s.n_embd = 64;
  s.n_head = 4;
  s.n_head_kv = n_head_kv;
  s.n_ff = 96;
  s.n_layer = 2;
  s.n_vocab = 300;
  s.context_length = 128;
  return s;
}

INSTANTIATE_TEST_SUITE_P(Architectures, BackendSeamTest,
                         ::testing::Values(Case{"llama_gqa", Spec("llama", 2)}, Case{"qwen2", Spec("qwen2", 4)},
                                           Case{"mpt", Spec("mpt", 0)}),
                         [](const ::testing::TestParamInfo<Case>& i) { return std::string(i.param.name); });

// Asking for a device that does not exist is an error naming it, never a crash.
TEST(BackendTest, UnusableDevicesAreClearErrors) {
  absl::StatusOr<std::unique_ptr<Backend>> b = MakeBackend("cuda:99", 0);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(std::string(b.status().message()).find("cuda:99"), std::string::npos) << b.status();
  for (const char* bad : {"tpu", "cuda:", "cuda:-1", "cuda:x", "CPU", ""}) {
    absl::StatusOr<std::unique_ptr<Backend>> r = MakeBackend(bad, 1);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_FALSE(DeviceSyntaxError(bad).empty()) << bad;
  }
  absl::StatusOr<std::unique_ptr<Backend>> cpu = MakeBackend("cpu", 1);
  ASSERT_TRUE(cpu.ok());
  EXPECT_EQ((*cpu)->Name(), "cpu");
  EXPECT_TRUE(DeviceSyntaxError("cuda:3").empty());
}

}  // namespace
}  // namespace mesa
