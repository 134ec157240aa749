// WorkerCore and InProcessKvFetcher on the shared stories260K model (T = 512, so a
// 1500-4000 token prompt has 4-11 middle chunks): chunks computed on 1-3 cores sharing
// one Model, in shuffled order (and concurrently), gathered by a final task through the
// in-process fetcher, give tokens identical to jobs::LongContextGenerator, greedy and
// with seeded sampling; so do whole and short prompts. Also the K/V store: budget
// refusal, leases on an injected clock, release by job/item/attempt; and the errors:
// missing or wrong chunks, cancellation, bad chunk index. Skips visibly without ../shared.
#include "worker/worker_core.h"
#include "worker/kv_wire.h"

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "engine/mesa_phases.h"
#include "engine/model.h"
#include "kernels/cpu/cpu_backend.h"
#include "gtest/gtest.h"
#include "jobs/long_generator.h"
#include "worker/in_process_kv.h"

namespace mesa::worker {
namespace {

std::string SharedPath(const std::string& rel) {
  const char* dir = std::getenv("MESA_SHARED_DIR");
  if (!dir) return "";
  std::string p = std::string(dir) + "/" + rel;
  return std::filesystem::exists(p) ? p : "";
}

SamplingParams Greedy() { return {}; }
SamplingParams Seeded() {
  SamplingParams s;
  s.temperature = 0.9f;
  s.top_k = 40;
  s.top_p = 0.95f;
  s.seed = 1234;
  return s;
}

KvKey Key(int32_t chunk, int64_t item = 0, int32_t attempt = 1, const std::string& job = "job") {
  return KvKey{job, item, chunk, attempt};
}

std::string Address(size_t i) { return absl::StrCat("core", i); }

// K cores on one Model, registered with one in-process fetcher as core0..core{K-1}.
struct Cluster {
  Cluster(const Model& model, int k, WorkerCoreOptions options = {},
          WorkerCore::Clock clock = nullptr) {
    for (int i = 0; i < k; ++i) {
      // Thread counts differ between cores: chunks must not depend on them.
      cores.push_back(std::make_unique<WorkerCore>(model, 1 + i % 2, options, &fetcher, clock));
      EXPECT_TRUE(fetcher.Register(Address(i), cores.back().get()).ok());
    }
  }
  ~Cluster() {
    for (size_t i = 0; i < cores.size(); ++i) fetcher.Unregister(Address(i));
  }
  int64_t bytes_in_use() const {
    int64_t b = 0;
    for (const auto& c : cores) b += c->kv_bytes_in_use();
    return b;
  }
  InProcessKvFetcher fetcher;
  std::vector<std::unique_ptr<WorkerCore>> cores;
};

class WorkerCoreTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string path = SharedPath("models/stories260K-f32.gguf");
    if (path.empty()) return;
    auto m = LoadModel(path);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = std::move(*m).release();
    const std::string text_path = SharedPath("text/tinystories_valid_part1.txt");
    if (!text_path.empty()) {
      std::ifstream f(text_path, std::ios::binary);
      std::string text(40000, '\0');
      f.read(text.data(), static_cast<std::streamsize>(text.size()));
      text.resize(text.rfind(' ', static_cast<size_t>(f.gcount())));
      auto ids = model_->tokenizer->Encode(text, {});
      ASSERT_TRUE(ids.ok()) << ids.status();
      text_tokens_ = new std::vector<int32_t>(std::move(*ids));
    }
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
    delete text_tokens_;
    text_tokens_ = nullptr;
  }
  void SetUp() override {
    if (!model_) GTEST_SKIP() << "shared model not found (set MESA_SHARED_DIR=../shared)";
  }

  const Model& model() const { return *model_; }

  // The first n tokens of the shared stories (random ids if the text is missing).
  static std::vector<int32_t> TextPrompt(int64_t n) {
    if (!text_tokens_ || static_cast<int64_t>(text_tokens_->size()) < n) return RandomPrompt(n, 99);
    return {text_tokens_->begin(), text_tokens_->begin() + n};
  }
  static std::vector<int32_t> RandomPrompt(int64_t n, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<int32_t> id(3, static_cast<int32_t>(model_->config.n_vocab) - 1);
    std::vector<int32_t> p(n);
    for (auto& t : p) t = id(rng);
    if (model_->tokenizer->bos_id() >= 0) p[0] = model_->tokenizer->bos_id();
    return p;
  }

  jobs::GenerationOutput Reference(const std::vector<int32_t>& prompt, int64_t max_new,
                                   const SamplingParams& sampling, LongContextOptions options = {}) {
    CpuBackend backend(2);
    jobs::LongContextGenerator gen(model(), backend, options, sampling);
    auto r = gen.Generate(prompt, max_new);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *std::move(r) : jobs::GenerationOutput{};
  }

  MesaPlan Plan(const std::vector<int32_t>& prompt, int64_t max_new, LongContextOptions options = {}) {
    auto p = PlanFor(model(), options, static_cast<int64_t>(prompt.size()), max_new);
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? *p : MesaPlan{};
  }

  int64_t ChunkBytes(TokenRange r) const {
    const ModelConfig& c = model().config;
    return 2 * c.n_layer * c.n_head_kv * r.size() * c.head_dim * 4;
  }

  static ChunkTask MakeChunk(const std::vector<int32_t>& prompt, int64_t max_new, KvKey key) {
    ChunkTask t;
    t.key = std::move(key);
    t.prompt = prompt;
    t.max_new_tokens = max_new;
    return t;
  }
  static FinalTask MakeFinal(const std::vector<int32_t>& prompt, int64_t max_new,
                             const SamplingParams& sampling, int64_t item = 0) {
    FinalTask t;
    t.key = Key(-1, item);
    t.prompt = prompt;
    t.max_new_tokens = max_new;
    t.sampling = sampling;
    return t;
  }

  // Spreads the item's middle chunks over the cluster's cores at random, computes them
  // in shuffled order (each core on its own thread when `concurrent`), then runs the
  // final on a random core, which fetches the others' chunks. remote_bytes: the K/V
  // the final had to receive.
  absl::StatusOr<FinalResult> RunSpread(Cluster& c, const std::vector<int32_t>& prompt,
                                        int64_t max_new, const SamplingParams& sampling,
                                        uint64_t seed, bool concurrent, int64_t* remote_bytes,
                                        int64_t item = 0) {
    const MesaPlan plan = Plan(prompt, max_new);
    EXPECT_TRUE(plan.chunked);
    const size_t k = c.cores.size(), n_middle = plan.middle.size();
    std::mt19937_64 rng(seed);
    std::vector<size_t> owner(n_middle), order(n_middle);
    for (auto& o : owner) o = rng() % k;
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    const size_t final_core = rng() % k;

    std::vector<absl::Status> status(n_middle);
    auto run_core = [&](size_t core) {
      for (size_t i : order) {
        if (owner[i] != core) continue;
        auto r = c.cores[core]->RunChunk(MakeChunk(prompt, max_new, Key(static_cast<int32_t>(i), item)));
        status[i] = r.status();
        if (r.ok()) {
          EXPECT_EQ(r->kv_bytes, ChunkBytes(plan.middle[i]));
          EXPECT_EQ(r->tokens, plan.anchor.size() + plan.middle[i].size());
        }
      }
    };
    if (concurrent) {
      std::vector<std::thread> threads;
      for (size_t core = 0; core < k; ++core) threads.emplace_back(run_core, core);
      for (auto& t : threads) t.join();
    } else {
      for (size_t core = 0; core < k; ++core) run_core(core);
    }
    for (const auto& s : status) {
      if (!s.ok()) return s;
    }
    // What each core holds is bit for bit the chunk MesaPhases computes on its own.
    CpuBackend backend(2);
    MesaPhases phases(model(), backend, plan);
    const absl::Span<const int32_t> tokens(prompt);
    auto anchor = phases.RunAnchor(tokens.subspan(0, plan.anchor.end), nullptr);
    EXPECT_TRUE(anchor.ok()) << anchor.status();
    for (size_t i = 0; i < n_middle && anchor.ok(); ++i) {
      const TokenRange r = plan.middle[i];
      auto want = phases.RunMiddle(*anchor, tokens.subspan(r.begin, r.size()), r, nullptr);
      auto held = c.cores[owner[i]]->GetKv(Key(static_cast<int32_t>(i), item));
      EXPECT_TRUE(want.ok() && held.ok());
      if (!want.ok() || !held.ok()) continue;
      EXPECT_EQ((*held)->range.begin, r.begin);
      EXPECT_EQ((*held)->range.end, r.end);
      EXPECT_TRUE((*held)->k == want->k && (*held)->v == want->v) << "chunk " << i << " differs";
    }

    FinalTask f = MakeFinal(prompt, max_new, sampling, item);
    *remote_bytes = 0;
    for (size_t i = 0; i < n_middle; ++i) {
      const bool here = owner[i] == final_core;
      f.sources.push_back({static_cast<int32_t>(i), here ? "" : Address(owner[i]),
                           Key(static_cast<int32_t>(i), item)});
      if (!here) *remote_bytes += ChunkBytes(plan.middle[i]);
    }
    return c.cores[final_core]->RunFinal(f);
  }

  static void ExpectSame(const FinalResult& got, const jobs::GenerationOutput& want) {
    EXPECT_EQ(got.tokens, want.tokens);
    EXPECT_EQ(got.stop_reason, want.stop_reason);
    EXPECT_EQ(got.attention, want.attention);
    EXPECT_EQ(got.plan, want.plan) << got.plan.dump() << "\n" << want.plan.dump();
    EXPECT_FALSE(got.tokens.empty());
  }

  static inline Model* model_ = nullptr;
  static inline std::vector<int32_t>* text_tokens_ = nullptr;
};

TEST_F(WorkerCoreTest, SpreadOverOneTwoThreeCoresEqualsLongContextGenerator) {
  const int64_t max_new = 12;
  const std::vector<std::vector<int32_t>> prompts = {TextPrompt(1500), RandomPrompt(4000, 7)};
  for (size_t p = 0; p < prompts.size(); ++p) {
    const MesaPlan plan = Plan(prompts[p], max_new);
    ASSERT_TRUE(plan.chunked);
    ASSERT_GE(plan.middle.size(), 4u);
    int64_t all_bytes = 0;
    for (const TokenRange& r : plan.middle) all_bytes += ChunkBytes(r);
    for (const SamplingParams& sampling : {Greedy(), Seeded()}) {
      const jobs::GenerationOutput want = Reference(prompts[p], max_new, sampling);
      // Greedy on 1, 2 and 3 cores; seeded sampling on 3 (and whole, below).
      for (int k = sampling.temperature > 0 ? 3 : 1; k <= 3; ++k) {
        SCOPED_TRACE(absl::StrCat("prompt ", p, " (", prompts[p].size(), " tokens, ",
                                  plan.middle.size(), " chunks), temperature ",
                                  sampling.temperature, ", ", k, " cores"));
        Cluster c(model(), k);
        int64_t remote = 0;
        auto got = RunSpread(c, prompts[p], max_new, sampling, /*seed=*/10 * p + k,
                             /*concurrent=*/k == 3, &remote);
        ASSERT_TRUE(got.ok()) << got.status();
        ExpectSame(*got, want);
        EXPECT_EQ(got->kv_bytes_received, remote);
        if (k == 1) {
          EXPECT_EQ(remote, 0);
        }
        EXPECT_GE(got->kv_transfer_s, 0);
        EXPECT_GT(got->prefill_s, 0);
        // The final consumed the chunks its own core held (laid into its cache, then
        // dropped); the others stay with their holders until released.
        EXPECT_EQ(c.bytes_in_use(), remote);
        int64_t released = 0;
        for (auto& core : c.cores) released += core->ReleaseKv("job", 0, -1).bytes;
        EXPECT_EQ(released, remote);
        EXPECT_EQ(c.bytes_in_use(), 0);
      }
    }
  }
}

// An item's final fetches from a core that is busy computing another item's chunks.
TEST_F(WorkerCoreTest, FetchWhileTheHolderComputes) {
  const int64_t max_new = 8;
  const std::vector<int32_t> a = TextPrompt(1800), b = RandomPrompt(2500, 3);
  Cluster c(model(), 2);
  const MesaPlan pa = Plan(a, max_new), pb = Plan(b, max_new);
  for (size_t i = 0; i < pa.middle.size(); ++i) {
    ASSERT_TRUE(c.cores[1]->RunChunk(MakeChunk(a, max_new, Key(static_cast<int32_t>(i), 0))).ok());
  }
  FinalTask fa = MakeFinal(a, max_new, Greedy(), 0);
  for (size_t i = 0; i < pa.middle.size(); ++i) {
    fa.sources.push_back({static_cast<int32_t>(i), Address(1), Key(static_cast<int32_t>(i), 0)});
  }
  absl::StatusOr<FinalResult> ra;
  std::thread t([&] { ra = c.cores[0]->RunFinal(fa); });
  FinalTask fb = MakeFinal(b, max_new, Seeded(), 1);
  for (size_t i = 0; i < pb.middle.size(); ++i) {
    ASSERT_TRUE(c.cores[1]->RunChunk(MakeChunk(b, max_new, Key(static_cast<int32_t>(i), 1))).ok());
    fb.sources.push_back({static_cast<int32_t>(i), "", Key(static_cast<int32_t>(i), 1)});
  }
  t.join();
  ASSERT_TRUE(ra.ok()) << ra.status();
  ExpectSame(*ra, Reference(a, max_new, Greedy()));
  auto rb = c.cores[1]->RunFinal(fb);
  ASSERT_TRUE(rb.ok()) << rb.status();
  ExpectSame(*rb, Reference(b, max_new, Seeded()));
  EXPECT_EQ(rb->kv_bytes_received, 0);
}

TEST_F(WorkerCoreTest, WholeEqualsLongContextGenerator) {
  const int64_t max_new = 12;
  WorkerCore core(model(), 2, {}, nullptr);
  for (const auto& prompt : {TextPrompt(1500), RandomPrompt(2000, 5)}) {
    for (const SamplingParams& sampling : {Greedy(), Seeded()}) {
      auto got = core.RunFinal(MakeFinal(prompt, max_new, sampling));
      ASSERT_TRUE(got.ok()) << got.status();
      ExpectSame(*got, Reference(prompt, max_new, sampling));
      EXPECT_EQ(got->plan["plan"]["chunked"], true);
      EXPECT_EQ(got->kv_bytes_received, 0);
    }
  }
  // Other methods run whole too.
  LongContextOptions full;
  full.method = AttentionMethod::kFull;
  FinalTask f = MakeFinal(TextPrompt(700), max_new, Greedy());
  f.options = full;
  auto got = core.RunFinal(f);
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSame(*got, Reference(f.prompt, max_new, Greedy(), full));
  EXPECT_EQ(got->attention, "full");
  EXPECT_EQ(core.kv_entries(), 0);
}

// A final task with a huge generation budget (a job line may ask 2^40 tokens) used to
// allocate its K/V cache for prompt + budget up front: std::bad_alloc, the worker gone.
// Now the cache grows as decoding goes: the task runs until EOS or a cancel, and its
// tokens are those of a normal budget.
TEST_F(WorkerCoreTest, HugeBudgetDoesNotAllocateAhead) {
  WorkerCore core(model(), 2, {}, nullptr);
  for (const auto& prompt : {TextPrompt(200), TextPrompt(1500)}) {
    const int64_t huge = int64_t{1} << 39;
    CancelFlag cancel{false};
    std::thread stopper([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(1500));
      cancel = true;
    });
    auto got = core.RunFinal(MakeFinal(prompt, huge, Greedy()), &cancel);
    stopper.join();
    if (got.ok()) {  // EOS first: the same tokens as any budget that reaches it
      EXPECT_EQ(got->stop_reason, "eos");
      auto want = core.RunFinal(MakeFinal(prompt, static_cast<int64_t>(got->tokens.size()) + 5, Greedy()));
      ASSERT_TRUE(want.ok()) << want.status();
      EXPECT_EQ(got->tokens, want->tokens);
    } else {
      EXPECT_EQ(got.status().code(), absl::StatusCode::kCancelled) << got.status();
    }
  }
  // Past the planner's limit: refused, not overflowed.
  auto refused = core.RunFinal(MakeFinal(TextPrompt(200), INT64_MAX, Greedy()));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
  ChunkTask hostile = MakeChunk({1, 2, 3}, 16, Key(0));
  hostile.prompt_length = int64_t{1} << 50;
  EXPECT_EQ(core.RunChunk(hostile).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core.kv_entries(), 0);
}

TEST_F(WorkerCoreTest, ShortPromptIsUnchunkedAndEqual) {
  const int64_t max_new = 16;
  const std::vector<int32_t> prompt = TextPrompt(200);
  WorkerCore core(model(), 2, {}, nullptr);
  for (const SamplingParams& sampling : {Greedy(), Seeded()}) {
    auto got = core.RunFinal(MakeFinal(prompt, max_new, sampling));
    ASSERT_TRUE(got.ok()) << got.status();
    ExpectSame(*got, Reference(prompt, max_new, sampling));
    EXPECT_EQ(got->plan["plan"]["chunked"], false);
  }
  // Neither chunk tasks nor sources make sense for it.
  auto chunk = core.RunChunk(MakeChunk(prompt, max_new, Key(0)));
  EXPECT_EQ(chunk.status().code(), absl::StatusCode::kInvalidArgument) << chunk.status();
  FinalTask f = MakeFinal(prompt, max_new, Greedy());
  f.sources.push_back({0, "", Key(0)});
  EXPECT_EQ(core.RunFinal(f).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core.kv_entries(), 0);
}

TEST_F(WorkerCoreTest, BudgetRefusesAndKeepsNothing) {
  const int64_t max_new = 8;
  const std::vector<int32_t> prompt = TextPrompt(1500);
  const MesaPlan plan = Plan(prompt, max_new);
  ASSERT_GE(plan.middle.size(), 2u);
  const int64_t b0 = ChunkBytes(plan.middle[0]), b1 = ChunkBytes(plan.middle[1]);
  {
    WorkerCore core(model(), 1, {.kv_memory_bytes = b0 + b1 - 1}, nullptr);
    ASSERT_TRUE(core.RunChunk(MakeChunk(prompt, max_new, Key(0))).ok());
    EXPECT_EQ(core.kv_bytes_in_use(), b0);
    auto refused = core.RunChunk(MakeChunk(prompt, max_new, Key(1)));
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
    EXPECT_NE(refused.status().message().find("budget"), std::string::npos) << refused.status();
    EXPECT_EQ(core.kv_entries(), 1);
    EXPECT_EQ(core.kv_bytes_in_use(), b0);
    // Room again once the first is released.
    EXPECT_EQ(core.ReleaseKv("job", 0, 1).bytes, b0);
    ASSERT_TRUE(core.RunChunk(MakeChunk(prompt, max_new, Key(1))).ok());
    EXPECT_EQ(core.kv_bytes_in_use(), b1);
  }
  WorkerCore tiny(model(), 1, {.kv_memory_bytes = b0 - 1}, nullptr);
  EXPECT_EQ(tiny.RunChunk(MakeChunk(prompt, max_new, Key(0))).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(tiny.kv_entries(), 0);
  EXPECT_EQ(tiny.kv_bytes_in_use(), 0);
}

TEST_F(WorkerCoreTest, LeasesExpireOnTheInjectedClockAndFetchRefreshesThem) {
  const int64_t max_new = 8;
  const std::vector<int32_t> prompt = TextPrompt(1500);
  auto now = std::make_shared<std::atomic<int64_t>>(1000);
  Cluster c(model(), 1, {.default_lease_ms = 5000}, [now] { return now->load(); });
  WorkerCore& core = *c.cores[0];
  ChunkTask short_lease = MakeChunk(prompt, max_new, Key(0));
  short_lease.lease_ms = 100;
  ASSERT_TRUE(core.RunChunk(short_lease).ok());                      // expires at 1100
  ASSERT_TRUE(core.RunChunk(MakeChunk(prompt, max_new, Key(1))).ok());  // at 6000
  ASSERT_TRUE(core.RunChunk(MakeChunk(prompt, max_new, Key(2))).ok());  // at 6000
  const int64_t b1 = core.GetKv(Key(1)).value()->bytes();

  *now = 1099;
  EXPECT_EQ(core.ExpireLeases().entries, 0);
  ASSERT_TRUE(c.fetcher.Fetch(Address(0), Key(0), 1000).ok());  // refreshed: 1199
  *now = 1150;
  EXPECT_EQ(core.ExpireLeases().entries, 0);
  *now = 1199;
  WorkerCore::Released r = core.ExpireLeases();
  EXPECT_EQ(r.entries, 1);
  EXPECT_EQ(core.GetKv(Key(0)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(core.kv_entries(), 2);

  *now = 5999;
  ASSERT_TRUE(core.GetKv(Key(2)).ok());  // refreshed: 10999
  *now = 6000;
  r = core.ExpireLeases();
  EXPECT_EQ(r.entries, 1);
  EXPECT_EQ(r.bytes, b1);
  EXPECT_TRUE(core.GetKv(Key(2)).ok());
  EXPECT_EQ(core.GetKv(Key(1)).status().code(), absl::StatusCode::kNotFound);
  *now = 20000;
  EXPECT_EQ(core.ExpireLeases().entries, 1);
  EXPECT_EQ(core.kv_bytes_in_use(), 0);
}

TEST_F(WorkerCoreTest, ReleaseByJobItemAttempt) {
  const int64_t max_new = 8;
  const std::vector<int32_t> prompt = TextPrompt(1500);
  WorkerCore core(model(), 2, {}, nullptr);
  const std::vector<KvKey> keys = {Key(0, 0, 1, "a"), Key(1, 0, 1, "a"), Key(0, 0, 2, "a"),
                                   Key(0, 1, 1, "a"), Key(2, 1, 3, "a"), Key(0, 0, 1, "b")};
  for (const KvKey& k : keys) ASSERT_TRUE(core.RunChunk(MakeChunk(prompt, max_new, k)).ok());
  EXPECT_EQ(core.kv_entries(), 6);
  const int64_t total = core.kv_bytes_in_use();

  EXPECT_EQ(core.ReleaseKv("a", 0, 1).entries, 2);   // item 0, attempt 1: chunks 0 and 1
  EXPECT_EQ(core.ReleaseKv("a", 0, 1).entries, 0);
  EXPECT_EQ(core.ReleaseKv("a", 1, -1).entries, 2);  // item 1, every attempt
  EXPECT_EQ(core.ReleaseKv("c", -1, -1).entries, 0);
  EXPECT_TRUE(core.GetKv(keys[2]).ok());
  EXPECT_TRUE(core.GetKv(keys[5]).ok());
  WorkerCore::Released r = core.ReleaseKv("a", -1, -1);
  EXPECT_EQ(r.entries, 1);
  EXPECT_EQ(core.kv_entries(), 1);
  r = core.ReleaseAll();
  EXPECT_EQ(r.entries, 1);
  EXPECT_EQ(core.kv_entries(), 0);
  EXPECT_EQ(core.kv_bytes_in_use(), 0);
  EXPECT_GT(total, 0);
}

// With a pool, a released chunk's memory goes back only once its last holder lets go
// (here a reader, as a FetchKv stream still sending it would be).
TEST_F(WorkerCoreTest, ReleasedChunksGoBackToThePoolOnlyWhenNoOneHoldsThem) {
  const int64_t max_new = 8;
  const std::vector<int32_t> prompt = TextPrompt(1500);
  WorkerCoreOptions options;
  options.kv_pool = std::make_shared<KvBufferPool>(int64_t{1} << 30);
  WorkerCore core(model(), 2, options, nullptr);
  ASSERT_TRUE(core.RunChunk(MakeChunk(prompt, max_new, Key(0))).ok());
  ASSERT_TRUE(core.RunChunk(MakeChunk(prompt, max_new, Key(1))).ok());
  auto reader = core.GetKv(Key(0));
  ASSERT_TRUE(reader.ok());
  const std::vector<float> k = (*reader)->k, v = (*reader)->v;
  EXPECT_EQ(core.ReleaseKv("job", -1, -1).entries, 2);
  EXPECT_EQ(options.kv_pool->held_buffers(), 2);  // chunk 1's k and v only
  EXPECT_TRUE((*reader)->k == k && (*reader)->v == v);
  reader->reset();
  EXPECT_EQ(options.kv_pool->held_buffers(), 4);
}

// A fetcher that hands out a chosen chunk whatever is asked (and can raise a cancel flag).
class FixedFetcher : public KvFetcher {
 public:
  absl::StatusOr<std::shared_ptr<const ChunkKv>> Fetch(const std::string&, const KvKey&,
                                                       int64_t) override {
    if (cancel_on_fetch) cancel_on_fetch->store(true);
    return kv;
  }
  std::shared_ptr<const ChunkKv> kv;
  CancelFlag* cancel_on_fetch = nullptr;
};

// A fetcher that says which CRC32C it checked the bytes against (FetchWithCrc).
class CheckedFetcher : public FixedFetcher {
 public:
  absl::StatusOr<std::shared_ptr<const ChunkKv>> FetchWithCrc(const std::string& a, const KvKey& k, int64_t t,
                                                              std::optional<uint32_t>* crc32c) override {
    *crc32c = checked;
    return Fetch(a, k, t);
  }
  std::optional<uint32_t> checked;
};

TEST_F(WorkerCoreTest, LoadKvKeepsTheCrcTheFetchCheckedAndComputesItOtherwise) {
  const std::vector<int32_t> prompt = TextPrompt(1500);
  Cluster source(model(), 1);
  ASSERT_TRUE(source.cores[0]->RunChunk(MakeChunk(prompt, 8, Key(0))).ok());
  auto kv = source.cores[0]->GetKv(Key(0));
  ASSERT_TRUE(kv.ok());
  const uint32_t real = KvCrc32c(**kv);
  for (const std::optional<uint32_t>& told : {std::optional<uint32_t>(real ^ 1u), std::optional<uint32_t>()}) {
    CheckedFetcher fetcher;
    fetcher.kv = *kv;
    fetcher.checked = told;
    WorkerCore core(model(), 1, WorkerCoreOptions{}, &fetcher);
    ASSERT_TRUE(core.LoadKv(KvSourceRef{0, "elsewhere:1", Key(0)}, 0).ok());
    uint32_t kept = 0;
    ASSERT_TRUE(core.GetKv(Key(0), &kept).ok());
    // Taken as given when the fetch checked it (a marked value proves no second pass),
    // computed from the bytes when it did not.
    EXPECT_EQ(kept, told ? *told : real);
  }
}

TEST_F(WorkerCoreTest, MissingOrWrongChunksFailTheFinal) {
  const int64_t max_new = 8;
  const std::vector<int32_t> prompt = TextPrompt(1500);
  const MesaPlan plan = Plan(prompt, max_new);
  Cluster c(model(), 2);
  for (size_t i = 0; i < plan.middle.size(); ++i) {
    ASSERT_TRUE(c.cores[1]->RunChunk(MakeChunk(prompt, max_new, Key(static_cast<int32_t>(i)))).ok());
  }
  auto final_with = [&](auto source_of) {
    FinalTask f = MakeFinal(prompt, max_new, Greedy());
    for (size_t i = 0; i < plan.middle.size(); ++i) f.sources.push_back(source_of(static_cast<int32_t>(i)));
    return f;
  };
  auto remote = [](int32_t i) { return KvSourceRef{i, Address(1), Key(i)}; };
  ASSERT_TRUE(c.cores[0]->RunFinal(final_with(remote)).ok());

  // Said to be held here, but core 0 has nothing.
  auto r = c.cores[0]->RunFinal(final_with([](int32_t i) { return KvSourceRef{i, "", Key(i)}; }));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound) << r.status();
  EXPECT_NE(r.status().message().find("chunk K/V missing"), std::string::npos) << r.status();
  // The holder released it.
  ASSERT_EQ(c.cores[1]->ReleaseKv("job", 0, 1).entries, static_cast<int64_t>(plan.middle.size()));
  // A remote source that fails is ABORTED (the source failed, not this worker), with
  // the source's own code in the message.
  r = c.cores[0]->RunFinal(final_with(remote));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAborted) << r.status();
  EXPECT_NE(r.status().message().find("chunk K/V missing"), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("NOT_FOUND"), std::string::npos) << r.status();
  // Unknown worker.
  r = c.cores[0]->RunFinal(final_with([](int32_t i) { return KvSourceRef{i, "nowhere", Key(i)}; }));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAborted) << r.status();
  EXPECT_NE(r.status().message().find("UNAVAILABLE"), std::string::npos) << r.status();
  // A remote source on a core without a fetcher.
  WorkerCore lone(model(), 1, {}, nullptr);
  EXPECT_EQ(lone.RunFinal(final_with(remote)).status().code(), absl::StatusCode::kFailedPrecondition);
  // Sources that do not follow the plan.
  FinalTask f = final_with(remote);
  f.sources.pop_back();
  EXPECT_EQ(c.cores[0]->RunFinal(f).status().code(), absl::StatusCode::kInvalidArgument);
  f = final_with(remote);
  std::swap(f.sources[0], f.sources[1]);
  EXPECT_EQ(c.cores[0]->RunFinal(f).status().code(), absl::StatusCode::kInvalidArgument);
}

// Serves the chunks `holder` computed, failing chunk `fail_chunk` (-1: none).
class CoreFetcher : public KvFetcher {
 public:
  explicit CoreFetcher(WorkerCore& holder) : holder_(holder) {}
  absl::StatusOr<std::shared_ptr<const ChunkKv>> Fetch(const std::string&, const KvKey& key, int64_t) override {
    ++fetches;
    if (key.chunk == fail_chunk) return absl::UnavailableError("the holder went away");
    return holder_.GetKv(key);
  }
  std::atomic<int> fetches{0};
  std::atomic<int32_t> fail_chunk{-1};

 private:
  WorkerCore& holder_;
};

// The final fetches ahead (kv_prefetch.h) with any window and parallelism and still lays
// the chunks in plan order; a failure names the chunk that failed, even a later one.
TEST_F(WorkerCoreTest, PrefetchedFinalEqualsOneChunkAtATimeAndNamesTheChunkThatFailed) {
  const int64_t max_new = 8;
  const std::vector<int32_t> prompt = TextPrompt(1500);
  const MesaPlan plan = Plan(prompt, max_new);
  const int32_t n_middle = static_cast<int32_t>(plan.middle.size());
  ASSERT_GE(n_middle, 4);
  WorkerCore holder(model(), 1, {}, nullptr);
  for (int32_t i = 0; i < n_middle; ++i) ASSERT_TRUE(holder.RunChunk(MakeChunk(prompt, max_new, Key(i))).ok());
  const jobs::GenerationOutput want = Reference(prompt, max_new, Greedy());
  FinalTask f = MakeFinal(prompt, max_new, Greedy());
  for (int32_t i = 0; i < n_middle; ++i) f.sources.push_back({i, "holder:1", Key(i)});
  for (const int64_t window : {int64_t{0}, ChunkBytes(plan.middle[0]) * 2, int64_t{1} << 30}) {
    for (const int parallel : {1, 4}) {
      SCOPED_TRACE(absl::StrCat("window ", window, ", parallel ", parallel));
      CoreFetcher fetcher(holder);
      WorkerCoreOptions o;
      o.final_prefetch_bytes = window;
      o.final_fetch_parallel = parallel;
      WorkerCore core(model(), 1, o, &fetcher);
      auto r = core.RunFinal(f);
      ASSERT_TRUE(r.ok()) << r.status();
      ExpectSame(*r, want);
      EXPECT_EQ(fetcher.fetches.load(), n_middle);
      int64_t all = 0;
      for (const TokenRange& m : plan.middle) all += ChunkBytes(m);
      EXPECT_EQ(r->kv_bytes_received, all);

      fetcher.fail_chunk = n_middle - 1;
      r = core.RunFinal(f);
      EXPECT_EQ(r.status().code(), absl::StatusCode::kAborted) << r.status();
      EXPECT_NE(r.status().message().find(absl::StrCat("chunk ", n_middle - 1, " (")), std::string::npos)
          << r.status();
      EXPECT_NE(r.status().message().find("UNAVAILABLE: the holder went away"), std::string::npos) << r.status();
    }
  }
  // The holder still has every chunk (fetching does not consume a remote holder's).
  EXPECT_EQ(holder.kv_entries(), n_middle);
}

TEST_F(WorkerCoreTest, FetchedChunkWithWrongRangeOrShapeIsDataLoss) {
  const int64_t max_new = 8;
  const std::vector<int32_t> prompt = TextPrompt(1500);
  const MesaPlan plan = Plan(prompt, max_new);
  WorkerCore holder(model(), 1, {}, nullptr);
  ASSERT_TRUE(holder.RunChunk(MakeChunk(prompt, max_new, Key(1))).ok());
  std::shared_ptr<const ChunkKv> chunk1 = holder.GetKv(Key(1)).value();

  FixedFetcher fetcher;
  WorkerCore core(model(), 1, {}, &fetcher);
  FinalTask f = MakeFinal(prompt, max_new, Greedy());
  for (size_t i = 0; i < plan.middle.size(); ++i) {
    f.sources.push_back({static_cast<int32_t>(i), "elsewhere", Key(static_cast<int32_t>(i))});
  }
  fetcher.kv = chunk1;  // asked for chunk 0, gets chunk 1
  auto r = core.RunFinal(f);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();

  auto truncated = std::make_shared<ChunkKv>(*chunk1);
  truncated->range = plan.middle[0];
  truncated->k.resize(truncated->k.size() / 2);
  fetcher.kv = truncated;
  r = core.RunFinal(f);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
  EXPECT_EQ(core.kv_entries(), 0);
}

TEST_F(WorkerCoreTest, CancelFlagStopsTasks) {
  const int64_t max_new = 8;
  const std::vector<int32_t> prompt = TextPrompt(1500);
  const MesaPlan plan = Plan(prompt, max_new);
  CancelFlag cancel{true};
  FixedFetcher fetcher;
  WorkerCore core(model(), 1, {}, &fetcher);
  auto chunk = core.RunChunk(MakeChunk(prompt, max_new, Key(0)), &cancel);
  EXPECT_EQ(chunk.status().code(), absl::StatusCode::kCancelled) << chunk.status();
  EXPECT_EQ(core.kv_entries(), 0);
  auto whole = core.RunFinal(MakeFinal(prompt, max_new, Greedy()), &cancel);
  EXPECT_EQ(whole.status().code(), absl::StatusCode::kCancelled) << whole.status();

  // Raised while the final gathers its chunks: it stops before the next one.
  ASSERT_TRUE(core.RunChunk(MakeChunk(prompt, max_new, Key(0))).ok());
  fetcher.kv = core.GetKv(Key(0)).value();
  cancel = false;
  fetcher.cancel_on_fetch = &cancel;
  FinalTask f = MakeFinal(prompt, max_new, Greedy());
  for (size_t i = 0; i < plan.middle.size(); ++i) {
    f.sources.push_back({static_cast<int32_t>(i), "elsewhere", Key(static_cast<int32_t>(i))});
  }
  auto spread = core.RunFinal(f, &cancel);
  EXPECT_EQ(spread.status().code(), absl::StatusCode::kCancelled) << spread.status();
}

TEST_F(WorkerCoreTest, RepeatKeyAnswersAtOnceAndBadChunkIndexIsInvalid) {
  const int64_t max_new = 8;
  const std::vector<int32_t> prompt = TextPrompt(1500);
  const MesaPlan plan = Plan(prompt, max_new);
  WorkerCore core(model(), 1, {}, nullptr);
  auto first = core.RunChunk(MakeChunk(prompt, max_new, Key(2)));
  ASSERT_TRUE(first.ok()) << first.status();
  const auto kv = core.GetKv(Key(2)).value();
  // Answered from the store: the same result, nothing recomputed, even if cancelled.
  CancelFlag cancel{true};
  auto again = core.RunChunk(MakeChunk(prompt, max_new, Key(2)), &cancel);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->compute_s, first->compute_s);
  EXPECT_EQ(again->kv_bytes, first->kv_bytes);
  EXPECT_EQ(core.GetKv(Key(2)).value(), kv);
  EXPECT_EQ(core.kv_entries(), 1);

  const int32_t n_middle = static_cast<int32_t>(plan.middle.size());
  for (int32_t bad : {-1, n_middle, n_middle + 5}) {
    auto r = core.RunChunk(MakeChunk(prompt, max_new, Key(bad)));
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad << ": " << r.status();
  }
  ChunkTask full = MakeChunk(prompt, max_new, Key(0));
  full.options.method = AttentionMethod::kFull;
  EXPECT_EQ(core.RunChunk(full).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core.kv_entries(), 1);
}

// A chunk task may carry only the anchor's and its chunk's tokens (plus the prompt's
// length): the same K/V bit for bit as with the whole prompt; a wrong count is refused.
TEST_F(WorkerCoreTest, SlicedChunkTaskEqualsWholePromptTask) {
  const int64_t max_new = 8;
  const std::vector<int32_t> prompt = TextPrompt(2000);
  const MesaPlan plan = Plan(prompt, max_new);
  ASSERT_GE(plan.middle.size(), 2u);
  WorkerCore core(model(), 1, {}, nullptr);
  for (int32_t c : {0, static_cast<int32_t>(plan.middle.size()) - 1}) {
    ASSERT_TRUE(core.RunChunk(MakeChunk(prompt, max_new, Key(c, 0))).ok());
    ChunkTask sliced = MakeChunk(prompt, max_new, Key(c, 1));
    const TokenRange a = plan.anchor, m = plan.middle[c];
    sliced.prompt.assign(prompt.begin() + a.begin, prompt.begin() + a.end);
    sliced.prompt.insert(sliced.prompt.end(), prompt.begin() + m.begin, prompt.begin() + m.end);
    sliced.prompt_length = static_cast<int64_t>(prompt.size());
    ASSERT_TRUE(core.RunChunk(sliced).ok());
    const auto whole_kv = core.GetKv(Key(c, 0)).value();
    const auto sliced_kv = core.GetKv(Key(c, 1)).value();
    EXPECT_EQ(sliced_kv->range.begin, whole_kv->range.begin);
    EXPECT_EQ(sliced_kv->range.end, whole_kv->range.end);
    EXPECT_EQ(sliced_kv->k, whole_kv->k) << "chunk " << c;
    EXPECT_EQ(sliced_kv->v, whole_kv->v) << "chunk " << c;
  }
  ChunkTask wrong = MakeChunk(prompt, max_new, Key(0, 2));
  wrong.prompt.resize(plan.anchor.size() + plan.middle[0].size() + 1);
  wrong.prompt_length = static_cast<int64_t>(prompt.size());
  EXPECT_EQ(core.RunChunk(wrong).status().code(), absl::StatusCode::kInvalidArgument);
}

// The registry alone (no model is run: the cores hold nothing).
// LoadKv: core 0 (the final's worker) takes chunks core 1 computed, under the same keys;
// the final then reads them locally, consumes them, and equals the reference.
TEST_F(WorkerCoreTest, LoadKvHoldsTheChunkHereAndTheFinalConsumesIt) {
  const int64_t max_new = 8;
  const std::vector<int32_t> prompt = TextPrompt(1500);
  const MesaPlan plan = Plan(prompt, max_new);
  ASSERT_GE(plan.middle.size(), 3u);
  const int32_t n = static_cast<int32_t>(plan.middle.size());
  Cluster c(model(), 2);
  for (int32_t i = 0; i < n; ++i) ASSERT_TRUE(c.cores[1]->RunChunk(MakeChunk(prompt, max_new, Key(i))).ok());
  int64_t loaded = 0;
  for (int32_t i = 0; i + 1 < n; ++i) {  // all but the last
    auto r = c.cores[0]->LoadKv(KvSourceRef{i, Address(1), Key(i)}, /*lease_ms=*/0);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->kv_bytes, ChunkBytes(plan.middle[i]));
    EXPECT_GE(r->transfer_s, 0);
    loaded += r->kv_bytes;
    auto here = c.cores[0]->GetKv(Key(i));
    auto there = c.cores[1]->GetKv(Key(i));
    ASSERT_TRUE(here.ok() && there.ok());
    EXPECT_TRUE((*here)->k == (*there)->k && (*here)->v == (*there)->v);
  }
  EXPECT_EQ(c.cores[0]->kv_bytes_in_use(), loaded);
  auto again = c.cores[0]->LoadKv(KvSourceRef{0, Address(1), Key(0)}, 0);  // held: at once
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->transfer_s, 0);
  EXPECT_EQ(c.cores[0]->kv_bytes_in_use(), loaded);
  // The holder lets its copies go (the coordinator's ReleaseKv after KvMoved).
  for (int32_t i = 0; i + 1 < n; ++i) EXPECT_EQ(c.cores[1]->ReleaseKv("job", 0, 1).entries > 0, i == 0);
  EXPECT_EQ(c.cores[1]->kv_entries(), 0);
  ASSERT_TRUE(c.cores[1]->RunChunk(MakeChunk(prompt, max_new, Key(n - 1))).ok());  // the last one, again

  FinalTask f = MakeFinal(prompt, max_new, Greedy());
  for (int32_t i = 0; i < n; ++i) f.sources.push_back({i, i + 1 < n ? "" : Address(1), Key(i)});
  auto got = c.cores[0]->RunFinal(f);
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSame(*got, Reference(prompt, max_new, Greedy()));
  EXPECT_EQ(got->kv_bytes_received, ChunkBytes(plan.middle[n - 1]));
  EXPECT_EQ(c.cores[0]->kv_bytes_in_use(), 0);  // consumed: never two copies
  EXPECT_EQ(c.cores[0]->kv_entries(), 0);
}

TEST_F(WorkerCoreTest, LoadKvRefusesWhatTheBudgetCannotHoldAndPassesFetchErrorsThrough) {
  const int64_t max_new = 8;
  const std::vector<int32_t> prompt = TextPrompt(1500);
  const MesaPlan plan = Plan(prompt, max_new);
  Cluster c(model(), 1);
  for (int32_t i = 0; i < 2; ++i) ASSERT_TRUE(c.cores[0]->RunChunk(MakeChunk(prompt, max_new, Key(i))).ok());
  const int64_t b0 = ChunkBytes(plan.middle[0]);
  {
    WorkerCore tiny(model(), 1, {.kv_memory_bytes = b0 - 1}, &c.fetcher);
    auto r = tiny.LoadKv(KvSourceRef{0, Address(0), Key(0)}, 0);
    EXPECT_TRUE(absl::IsResourceExhausted(r.status())) << r.status();
    EXPECT_EQ(tiny.kv_bytes_in_use(), 0);
  }
  {
    WorkerCore one(model(), 1, {.kv_memory_bytes = b0}, &c.fetcher);
    ASSERT_TRUE(one.LoadKv(KvSourceRef{0, Address(0), Key(0)}, 0).ok());
    auto full = one.LoadKv(KvSourceRef{1, Address(0), Key(1)}, 0);  // no room left: refused before fetching
    EXPECT_TRUE(absl::IsResourceExhausted(full.status())) << full.status();
    EXPECT_EQ(one.kv_bytes_in_use(), b0);
    EXPECT_EQ(one.kv_entries(), 1);
  }
  WorkerCore other(model(), 1, {}, &c.fetcher);
  EXPECT_TRUE(absl::IsNotFound(other.LoadKv(KvSourceRef{5, Address(0), Key(5)}, 0).status()));
  EXPECT_TRUE(absl::IsUnavailable(other.LoadKv(KvSourceRef{0, "nowhere", Key(0)}, 0).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(other.LoadKv(KvSourceRef{0, "", Key(0)}, 0).status()));
  CancelFlag cancel{true};
  EXPECT_TRUE(absl::IsCancelled(other.LoadKv(KvSourceRef{0, Address(0), Key(0)}, 0, &cancel).status()));
  EXPECT_EQ(other.kv_entries(), 0);
  WorkerCore no_fetcher(model(), 1, {}, nullptr);
  EXPECT_TRUE(absl::IsFailedPrecondition(no_fetcher.LoadKv(KvSourceRef{0, Address(0), Key(0)}, 0).status()));
}

// A fetcher whose address "gate" blocks until opened; others go to an in-process fetcher.
class GateFetcher : public KvFetcher {
 public:
  explicit GateFetcher(KvFetcher& next) : next_(next) {}
  absl::StatusOr<std::shared_ptr<const ChunkKv>> Fetch(const std::string& address, const KvKey& key,
                                                       int64_t timeout_ms) override {
    if (address != "gate") return next_.Fetch(address, key, timeout_ms);
    std::unique_lock<std::mutex> lock(mu_);
    entered_ = true;
    cv_.notify_all();
    cv_.wait(lock, [&] { return open_; });
    return absl::NotFoundError("the gate was opened");
  }
  void WaitEntered() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return entered_; });
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }

 private:
  KvFetcher& next_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool entered_ = false, open_ = false;
};

// LoadKv does not wait for the engine: it completes while a task holds it.
TEST_F(WorkerCoreTest, LoadKvRunsWhileATaskHoldsTheEngine) {
  const int64_t max_new = 8;
  const std::vector<int32_t> prompt = TextPrompt(1500);
  const MesaPlan plan = Plan(prompt, max_new);
  Cluster c(model(), 1);
  ASSERT_TRUE(c.cores[0]->RunChunk(MakeChunk(prompt, max_new, Key(0))).ok());
  GateFetcher gate(c.fetcher);
  WorkerCore busy(model(), 1, {}, &gate);
  FinalTask f = MakeFinal(prompt, max_new, Greedy(), /*item=*/1);
  for (size_t i = 0; i < plan.middle.size(); ++i) {
    f.sources.push_back({static_cast<int32_t>(i), "gate", Key(static_cast<int32_t>(i), 1)});
  }
  absl::StatusOr<FinalResult> final_result;
  std::thread t([&] { final_result = busy.RunFinal(f); });  // holds the engine, stuck in a fetch
  gate.WaitEntered();
  auto r = busy.LoadKv(KvSourceRef{0, Address(0), Key(0)}, 0);
  EXPECT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(busy.kv_entries(), 1);
  gate.Open();
  t.join();
  EXPECT_TRUE(absl::IsAborted(final_result.status())) << final_result.status();
}

// A sample of `name` with `labels` (counter or gauge value; histogram: its count).
double Sample(const ops::Metrics& metrics, const std::string& name, const prometheus::Labels& labels = {}) {
  for (const prometheus::MetricFamily& f : metrics.Collect()) {
    if (f.name != name) continue;
    for (const prometheus::ClientMetric& m : f.metric) {
      prometheus::Labels got;
      for (const auto& l : m.label) got[l.name] = l.value;
      if (got != labels) continue;
      switch (f.type) {
        case prometheus::MetricType::Counter: return m.counter.value;
        case prometheus::MetricType::Gauge: return m.gauge.value;
        case prometheus::MetricType::Histogram: return static_cast<double>(m.histogram.sample_count);
        default: return -1;
      }
    }
  }
  ADD_FAILURE() << "no sample " << name;
  return -1;
}

// The worker's metrics (worker/worker_metrics.h) count what its tasks did: tasks by
// outcome, tokens prefilled and generated, K/V fetched by a load and by a final, and the
// K/V gauges follow the store back to 0.
TEST_F(WorkerCoreTest, MetricsCountTasksTokensAndKv) {
  const int64_t max_new = 6;
  const std::vector<int32_t> prompt = TextPrompt(1500);
  const MesaPlan plan = Plan(prompt, max_new);
  ASSERT_GE(plan.middle.size(), 3u);
  const int32_t n = static_cast<int32_t>(plan.middle.size());
  InProcessKvFetcher fetcher;
  WorkerCoreOptions oa, ob;
  oa.metrics = ops::Metrics::Create();
  ob.metrics = ops::Metrics::Create();
  ob.kv_memory_bytes = int64_t{1} << 30;
  WorkerCore a(model(), 1, oa, &fetcher), b(model(), 1, ob, &fetcher);
  ASSERT_TRUE(fetcher.Register("a", &a).ok());
  ASSERT_TRUE(fetcher.Register("b", &b).ok());
  int64_t chunk_tokens = 0;
  for (int32_t i = 0; i < n; ++i) {
    auto r = b.RunChunk(MakeChunk(prompt, max_new, Key(i)));
    ASSERT_TRUE(r.ok()) << r.status();
    chunk_tokens += r->tokens;
  }
  EXPECT_FALSE(b.RunChunk(MakeChunk(prompt, max_new, Key(n + 5))).ok());  // chunk index out of range
  EXPECT_EQ(Sample(*ob.metrics, "mesa_worker_tasks_total", {{"kind", "chunk"}, {"outcome", "ok"}}), n);
  EXPECT_EQ(Sample(*ob.metrics, "mesa_worker_tasks_total", {{"kind", "chunk"}, {"outcome", "error"}}), 1);
  EXPECT_EQ(Sample(*ob.metrics, "mesa_worker_task_seconds", {{"kind", "chunk"}}), n);
  EXPECT_EQ(Sample(*ob.metrics, "mesa_worker_prefill_tokens_total", {{"kind", "chunk"}}), chunk_tokens);
  EXPECT_EQ(chunk_tokens, n * plan.anchor.size() + std::accumulate(plan.middle.begin(), plan.middle.end(), int64_t{0},
                                                                  [](int64_t s, TokenRange r) { return s + r.size(); }));
  EXPECT_EQ(Sample(*ob.metrics, "mesa_worker_kv_bytes_in_use"), b.kv_bytes_in_use());
  EXPECT_EQ(Sample(*ob.metrics, "mesa_worker_kv_entries"), n);
  EXPECT_EQ(Sample(*ob.metrics, "mesa_worker_kv_budget_bytes"), ob.kv_memory_bytes);

  ASSERT_TRUE(a.LoadKv(KvSourceRef{0, "b", Key(0)}, 0).ok());  // a move ahead of the final
  EXPECT_EQ(Sample(*oa.metrics, "mesa_worker_kv_fetched_bytes_total", {{"via", "load"}}), ChunkBytes(plan.middle[0]));
  EXPECT_EQ(Sample(*oa.metrics, "mesa_worker_kv_fetch_seconds", {{"via", "load"}}), 1);
  EXPECT_EQ(Sample(*oa.metrics, "mesa_worker_kv_bytes_in_use"), ChunkBytes(plan.middle[0]));
  FinalTask f = MakeFinal(prompt, max_new, Greedy());
  for (int32_t i = 0; i < n; ++i) f.sources.push_back({i, i == 0 ? "" : "b", Key(i)});
  auto got = a.RunFinal(f);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(Sample(*oa.metrics, "mesa_worker_tasks_total", {{"kind", "final"}, {"outcome", "ok"}}), 1);
  EXPECT_EQ(Sample(*oa.metrics, "mesa_worker_prefill_tokens_total", {{"kind", "final"}}),
            plan.anchor.size() + plan.last.size());
  EXPECT_EQ(Sample(*oa.metrics, "mesa_worker_generated_tokens_total"), got->tokens.size());
  EXPECT_EQ(Sample(*oa.metrics, "mesa_worker_kv_fetched_bytes_total", {{"via", "final"}}), got->kv_bytes_received);
  EXPECT_EQ(Sample(*oa.metrics, "mesa_worker_kv_fetch_seconds", {{"via", "final"}}), n - 1);
  EXPECT_EQ(Sample(*oa.metrics, "mesa_worker_kv_prefetch_bytes"), 0);  // the final laid everything it fetched
  EXPECT_EQ(Sample(*oa.metrics, "mesa_worker_kv_bytes_in_use"), 0);  // the loaded chunk was consumed
  b.ReleaseKv("job", 0, 1);
  EXPECT_EQ(Sample(*ob.metrics, "mesa_worker_kv_bytes_in_use"), 0);
  EXPECT_EQ(Sample(*ob.metrics, "mesa_worker_kv_entries"), 0);
  fetcher.Unregister("a");
  fetcher.Unregister("b");
}

TEST(InProcessKvFetcherTest, RegistryRefusesDuplicatesAndForgetsUnregistered) {
  Model empty;
  WorkerCore a(empty, 1, {}, nullptr), b(empty, 1, {}, nullptr);
  InProcessKvFetcher fetcher;
  EXPECT_EQ(fetcher.Fetch("a", Key(0), 10).status().code(), absl::StatusCode::kUnavailable);
  ASSERT_TRUE(fetcher.Register("a", &a).ok());
  EXPECT_EQ(fetcher.Register("a", &b).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(fetcher.Fetch("a", Key(0), 10).status().code(), absl::StatusCode::kNotFound);
  fetcher.Unregister("a");
  EXPECT_EQ(fetcher.Fetch("a", Key(0), 10).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(fetcher.Register("a", &b).ok());
}

}  // namespace
}  // namespace mesa::worker
