// Mesa-Extrapolation in the engine against its engine-level reference
// (engine/reference_forward.h) on random models with odd sizes, RoPE (both styles)
// and ALiBi: the properties of MESA_SPEC section 5.
#include "engine/mesa_phases.h"

#include <cmath>
#include <filesystem>
#include <random>

#include "kernels/cpu/cpu_backend.h"
#include "engine/long_context.h"
#include "engine/model_loader.h"
#include "engine/reference_forward.h"
#include "gtest/gtest.h"
#include "tests/testing/compare.h"
#include "tests/testing/random_model.h"
#include "tests/testing/temp_path.h"
#include "tests/testing/toy_plan.h"

namespace mesa {
namespace {

struct ModelCase {
  const char* name;
  testing::RandomModelSpec spec;
};

void PrintTo(const ModelCase& c, std::ostream* os) { *os << c.name; }

std::vector<ModelCase> Cases() {
  std::vector<ModelCase> out;
  testing::RandomModelSpec llama;
  llama.arch = "llama";
  llama.n_embd = 48;
  llama.n_head = 4;
  llama.n_head_kv = 2;  // grouped-query
  llama.n_ff = 72;
  llama.n_layer = 2;
  llama.context_length = 32;
  llama.tokenizer_source = testing::kSyntheticTokenizer;
  llama.seed = 11;
  out.push_back({"llama_gqa", llama});
  testing::RandomModelSpec qwen = llama;
  qwen.arch = "qwen2";  // neox rope, q/k/v biases
  qwen.n_head_kv = 1;
  qwen.seed = 12;
  out.push_back({"qwen2_bias", qwen});
  testing::RandomModelSpec mpt = llama;
  mpt.arch = "mpt";  // ALiBi, layer norm, GELU, fused qkv
  mpt.n_head = 6;    // not a power of two: the second ALiBi slope sequence
  mpt.n_head_kv = 0;
  mpt.seed = 13;
  out.push_back({"mpt_alibi", mpt});
  return out;
}

std::unique_ptr<Model> Load(const testing::RandomModelSpec& spec, const std::string& name) {
  std::string path = mesa::testing::UniqueTempPath("mesa_phases_" + name + ".gguf");
  absl::Status st = testing::WriteRandomGguf(spec, path);
  EXPECT_TRUE(st.ok()) << st;
  auto m = LoadModel(path);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? std::move(*m) : nullptr;
}

std::vector<int32_t> RandomTokens(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> t(n);
  for (auto& x : t) x = d(rng);
  return t;
}

using testing::ToyOptions;

class MesaPhasesTest : public ::testing::TestWithParam<ModelCase> {};

TEST_P(MesaPhasesTest, ShortInputEqualsBaseModelExactly) {
  auto model = Load(GetParam().spec, GetParam().name);
  ASSERT_NE(model, nullptr);
  CpuBackend backend(2);
  auto tokens = RandomTokens(20, model->config.n_vocab, 1);
  std::vector<float> base, mesa_logits;
  ModelRunner runner(*model, backend);
  KvCache cache = runner.NewCache(20);
  ASSERT_TRUE(runner.Forward(tokens, cache, LogitsMode::kAll, &base).ok());
  LongContextOptions o;
  o.mesa = ToyOptions();
  LongContextRunner lc(*model, backend, o);
  auto info = lc.Prefill(tokens, /*max_new_tokens=*/12, LogitsMode::kAll, &mesa_logits);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_FALSE(info->plan.chunked);
  EXPECT_EQ(base, mesa_logits);  // bit-identical: the same computation
}

TEST_P(MesaPhasesTest, FastMatchesReferenceOnToyPlanWithDecode) {
  auto model = Load(GetParam().spec, GetParam().name);
  ASSERT_NE(model, nullptr);
  const int64_t v = model->config.n_vocab;
  auto prompt = RandomTokens(60, v, 2);
  auto plan = PlanMesa(60, 3, 32, ToyOptions());
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_TRUE(plan->chunked);
  for (bool logn : {true, false}) {
    plan->logn = logn;
    LongContextOptions o;
    o.mesa = ToyOptions();
    o.mesa.logn = logn;
    CpuBackend backend(3);
    LongContextRunner lc(*model, backend, o);
    std::vector<float> fast, step;
    auto info = lc.Prefill(prompt, 3, LogitsMode::kAll, &fast);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->plan.stair_e, plan->stair_e);
    std::vector<int32_t> decode = {5, 9, 2};
    for (int32_t t : decode) {
      ASSERT_TRUE(lc.DecodeStep(t, &step).ok());
      fast.insert(fast.end(), step.begin(), step.end());
    }
    // Decode logits are next-token logits of each appended token: the same rows the
    // reference computes for those tokens.
    std::vector<float> want = reference::MesaLogits(*model, prompt, *plan, decode);
    ASSERT_EQ(fast.size(), want.size());
    EXPECT_LT(testing::MaxRowRelError(fast, want, v), 1e-4) << GetParam().name << " logn=" << logn;
  }
}

TEST_P(MesaPhasesTest, APrefillStopsBetweenPhasesWhenAskedAndRunsWholeOtherwise) {
  auto model = Load(GetParam().spec, GetParam().name);
  ASSERT_NE(model, nullptr);
  auto prompt = RandomTokens(60, model->config.n_vocab, 4);
  auto plan = PlanMesa(60, 3, 32, ToyOptions());
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_GE(plan->middle.size(), 2u);
  LongContextOptions o;
  o.mesa = ToyOptions();
  CpuBackend backend(2);
  // Asked after the anchor and after each middle chunk; stopped at the second ask.
  int asked = 0;
  LongContextRunner stopped(*model, backend, o);
  stopped.SetStopCheck([&] { return ++asked == 2; });
  std::vector<float> logits;
  auto info = stopped.Prefill(prompt, 3, LogitsMode::kLast, &logits);
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.status().code(), absl::StatusCode::kCancelled) << info.status();
  EXPECT_EQ(asked, 2);
  // Never stopping: asked 1 + middle chunks times, and the same logits as no check at all.
  asked = 0;
  LongContextRunner checked(*model, backend, o), plain(*model, backend, o);
  checked.SetStopCheck([&] {
    ++asked;
    return false;
  });
  std::vector<float> a, b;
  ASSERT_TRUE(checked.Prefill(prompt, 3, LogitsMode::kLast, &a).ok());
  ASSERT_TRUE(plain.Prefill(prompt, 3, LogitsMode::kLast, &b).ok());
  EXPECT_EQ(asked, 1 + static_cast<int>(plan->middle.size()));
  EXPECT_EQ(a, b);
}

TEST_P(MesaPhasesTest, StairWithEOneIsOrdinaryAttentionOverTheMesaCache) {
  // MESA_SPEC 5.2: E = 1, N large, log-n off: R(d) = d, the final phase is ordinary
  // attention over the chunked cache, which the reference builds from explicit masks.
  auto model = Load(GetParam().spec, GetParam().name);
  ASSERT_NE(model, nullptr);
  auto prompt = RandomTokens(45, model->config.n_vocab, 3);
  MesaOptions mo = ToyOptions();
  mo.stair_e = 1;
  mo.stair_n = 31;
  mo.logn = false;
  // Keep E = 1: the trained length the planner checks against is large enough.
  auto plan = PlanMesa(45, 0, 32, mo);
  ASSERT_TRUE(plan.ok()) << plan.status();
  plan->stair_e = 1;
  CpuBackend backend(2);
  MesaPhases phases(*model, backend, *plan);
  auto slice = [&](TokenRange r) { return absl::MakeConstSpan(prompt).subspan(r.begin, r.size()); };
  auto anchor = phases.RunAnchor(slice(plan->anchor), nullptr);
  ASSERT_TRUE(anchor.ok());
  std::vector<ChunkKv> mids;
  for (auto r : plan->middle) mids.push_back(*phases.RunMiddle(*anchor, slice(r), r, nullptr));
  std::vector<float> fast;
  auto state = phases.RunFinal(*anchor, mids, slice(plan->last), LogitsMode::kAll, &fast);
  ASSERT_TRUE(state.ok()) << state.status();
  std::vector<float> want = reference::MesaLogits(*model, prompt, *plan);
  const int64_t v = model->config.n_vocab;
  std::vector<float> want_last(want.end() - plan->last.size() * v, want.end());
  ASSERT_EQ(fast.size(), want_last.size());
  EXPECT_LT(testing::MaxRowRelError(fast, want_last, v), 1e-4);
}

// K/V of another shape (a hostile or mixed-up chunk) is refused before a byte is copied.
TEST_P(MesaPhasesTest, ChunksOfAnotherShapeAreRefused) {
  auto model = Load(GetParam().spec, GetParam().name);
  ASSERT_NE(model, nullptr);
  auto prompt = RandomTokens(90, model->config.n_vocab, 4);
  auto plan = PlanMesa(90, 0, 32, ToyOptions());
  ASSERT_TRUE(plan.ok());
  ASSERT_GE(plan->middle.size(), 1u);
  CpuBackend backend(1);
  MesaPhases phases(*model, backend, *plan);
  auto slice = [&](TokenRange r) { return absl::MakeConstSpan(prompt).subspan(r.begin, r.size()); };
  auto anchor = phases.RunAnchor(slice(plan->anchor), nullptr);
  ASSERT_TRUE(anchor.ok());
  ChunkKv bad = *anchor;
  bad.head_dim += 1;  // the sizes no longer add up either
  auto mid = phases.RunMiddle(bad, slice(plan->middle[0]), plan->middle[0], nullptr);
  ASSERT_FALSE(mid.ok());
  EXPECT_EQ(mid.status().code(), absl::StatusCode::kInvalidArgument) << mid.status();
  ChunkKv short_kv = *anchor;
  short_kv.k.pop_back();
  EXPECT_FALSE(phases.RunMiddle(short_kv, slice(plan->middle[0]), plan->middle[0], nullptr).ok());
}

TEST_P(MesaPhasesTest, MiddleChunksAreIndependentOfOrderWorkerAndProcess) {
  auto model = Load(GetParam().spec, GetParam().name);
  ASSERT_NE(model, nullptr);
  auto prompt = RandomTokens(90, model->config.n_vocab, 4);
  auto plan = PlanMesa(90, 0, 32, ToyOptions());
  ASSERT_TRUE(plan.ok());
  ASSERT_GE(plan->middle.size(), 3u);
  auto slice = [&](TokenRange r) { return absl::MakeConstSpan(prompt).subspan(r.begin, r.size()); };
  CpuBackend backend_a(1), backend_b(3);
  MesaPhases a(*model, backend_a, *plan), b(*model, backend_b, *plan);
  auto anchor_a = a.RunAnchor(slice(plan->anchor), nullptr);
  auto anchor_b = b.RunAnchor(slice(plan->anchor), nullptr);
  ASSERT_TRUE(anchor_a.ok() && anchor_b.ok());
  EXPECT_EQ(anchor_a->k, anchor_b->k);
  // In order on worker A; in reverse order on worker B, each passed through bytes.
  std::vector<ChunkKv> in_order, reversed(plan->middle.size());
  for (auto r : plan->middle) in_order.push_back(*a.RunMiddle(*anchor_a, slice(r), r, nullptr));
  for (size_t c = plan->middle.size(); c-- > 0;) {
    auto kv = b.RunMiddle(*anchor_b, slice(plan->middle[c]), plan->middle[c], nullptr);
    ASSERT_TRUE(kv.ok());
    auto round_trip = ChunkKv::Deserialize(kv->Serialize());
    ASSERT_TRUE(round_trip.ok()) << round_trip.status();
    reversed[c] = *std::move(round_trip);
  }
  for (size_t c = 0; c < in_order.size(); ++c) {
    EXPECT_EQ(in_order[c].k, reversed[c].k) << "chunk " << c;
    EXPECT_EQ(in_order[c].v, reversed[c].v) << "chunk " << c;
  }
  std::vector<float> la, lb;
  ASSERT_TRUE(a.RunFinal(*anchor_a, in_order, slice(plan->last), LogitsMode::kAll, &la).ok());
  ASSERT_TRUE(b.RunFinal(*anchor_b, reversed, slice(plan->last), LogitsMode::kAll, &lb).ok());
  EXPECT_EQ(la, lb);
}

TEST_P(MesaPhasesTest, BaselinesMatchReference) {
  auto model = Load(GetParam().spec, GetParam().name);
  ASSERT_NE(model, nullptr);
  const int64_t v = model->config.n_vocab;
  auto tokens = RandomTokens(70, v, 5);
  CpuBackend backend(2);
  struct Variant {
    AttentionMethod method;
    RelativePosition rel;
  };
  RelativePosition rerope{RelativePosition::Kind::kClamp, 0, 1, 12, 1};
  RelativePosition se{RelativePosition::Kind::kSelfExtend, 0, 1, 8, 4};
  RelativePosition exact;
  for (const Variant& var : {Variant{AttentionMethod::kFull, exact}, Variant{AttentionMethod::kReRope, rerope},
                             Variant{AttentionMethod::kSelfExtend, se}}) {
    LongContextOptions o;
    o.method = var.method;
    o.mesa.train_length = 32;
    o.rerope_window = 12;
    o.se_window = 8;
    o.se_group = 4;
    LongContextRunner lc(*model, backend, o);
    std::vector<float> fast;
    auto info = lc.Prefill(tokens, 0, LogitsMode::kAll, &fast);
    ASSERT_TRUE(info.ok()) << info.status();
    std::vector<float> want = reference::WholeLogits(*model, tokens, var.rel);
    ASSERT_EQ(fast.size(), want.size());
    EXPECT_LT(testing::MaxRowRelError(fast, want, v), 1e-4) << AttentionMethodName(var.method);
  }
}

TEST(MesaChunkKvTest, DeserializeRejectsCorruptInput) {
  ChunkKv kv;
  kv.n_layer = 2;
  kv.n_head_kv = 1;
  kv.head_dim = 4;
  kv.range = {10, 13};
  kv.k.assign(2 * 1 * 3 * 4, 1.5f);
  kv.v.assign(kv.k.size(), -2.0f);
  std::vector<uint8_t> bytes = kv.Serialize();
  auto ok = ChunkKv::Deserialize(bytes);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->range.begin, 10);
  EXPECT_EQ(ok->k, kv.k);
  for (size_t cut : {size_t{0}, size_t{7}, size_t{20}, bytes.size() - 1}) {
    EXPECT_FALSE(ChunkKv::Deserialize(absl::MakeConstSpan(bytes).subspan(0, cut)).ok()) << cut;
  }
  bytes[0] = 'X';
  EXPECT_FALSE(ChunkKv::Deserialize(bytes).ok());
}

INSTANTIATE_TEST_SUITE_P(RandomModels, MesaPhasesTest, ::testing::ValuesIn(Cases()),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace mesa
