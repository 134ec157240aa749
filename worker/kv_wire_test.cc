// Tests of the K/V byte form (worker/kv_wire.h): CRC32C on both paths against
// published vectors and a bit-at-a-time reference; manifest + pieces round trips over
// odd shapes and piece sizes; and every way a stream can go wrong (a flipped bit, a
// missing tail, swapped or repeated pieces, a piece past the end, bad or oversized
// manifests) must be an error, never a cache.
#include "worker/kv_wire.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <thread>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "worker/kv_testing.h"
#include "worker/kv_transport.h"

namespace mesa::worker {
namespace {

using ::testing::HasSubstr;

// The definition, one bit at a time: the reference both fast paths must match.
uint32_t Crc32cBitwise(const uint8_t* p, size_t n, uint32_t crc = 0) {
  uint32_t c = ~crc;
  for (size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int b = 0; b < 8; ++b) c = (c >> 1) ^ ((c & 1) ? 0x82F63B78u : 0u);
  }
  return ~c;
}

using CrcFn = uint32_t (*)(const void*, size_t, uint32_t);

struct CrcPath {
  const char* name;
  CrcFn fn;
  bool available;
};
void PrintTo(const CrcPath& path, std::ostream* os) { *os << path.name; }

std::vector<uint8_t> RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> bytes(n);
  for (auto& b : bytes) b = static_cast<uint8_t>(rng());
  return bytes;
}

class Crc32cPath : public ::testing::TestWithParam<CrcPath> {
 protected:
  void SetUp() override {
    if (!GetParam().available) GTEST_SKIP() << GetParam().name << ": the CPU lacks SSE4.2";
  }
  uint32_t Crc(const void* data, size_t n, uint32_t crc = 0) { return GetParam().fn(data, n, crc); }
};

TEST_P(Crc32cPath, KnownVectors) {
  std::vector<uint8_t> ascending(32), descending(32);
  for (int i = 0; i < 32; ++i) ascending[i] = i, descending[i] = 31 - i;
  const std::string digits = "123456789", fox = "The quick brown fox jumps over the lazy dog";
  const std::vector<uint8_t> zeros(32, 0), ones(32, 0xff);
  EXPECT_EQ(Crc(digits.data(), digits.size()), 0xE3069283u);
  EXPECT_EQ(Crc(fox.data(), fox.size()), 0x22620404u);
  EXPECT_EQ(Crc(nullptr, 0), 0u);
  // RFC 3720 (iSCSI) appendix B.4.
  EXPECT_EQ(Crc(zeros.data(), 32), 0x8A9136AAu);
  EXPECT_EQ(Crc(ones.data(), 32), 0x62A8AB43u);
  EXPECT_EQ(Crc(ascending.data(), 32), 0x46DD794Eu);
  EXPECT_EQ(Crc(descending.data(), 32), 0x113FDB5Cu);
}

// Sizes around the 8-byte words and the 3 x 256 and 3 x 8192 interleaved blocks of the
// SSE4.2 path, at every alignment, against the bitwise reference.
TEST_P(Crc32cPath, MatchesReferenceOverSizesAndAlignments) {
  const std::vector<uint8_t> buf = RandomBytes(3 * 8192 * 3 + 64, 1);
  const size_t sizes[] = {0,    1,    7,    8,    9,    15,    255,   256,   767,   768,  769,
                          775,  1000, 4096, 8191, 24575, 24576, 24577, 24583, 25344, 49152,
                          50000, 3 * 8192 * 3};
  for (size_t align = 0; align < 8; ++align) {
    for (size_t n : sizes) {
      const uint8_t* p = buf.data() + align;
      ASSERT_EQ(Crc(p, n), Crc32cBitwise(p, n)) << "size " << n << " align " << align;
    }
  }
}

TEST_P(Crc32cPath, ChainsAcrossSplits) {
  const std::vector<uint8_t> buf = RandomBytes(30000, 2);
  const uint32_t whole = Crc32cBitwise(buf.data(), buf.size());
  for (size_t split : {size_t{0}, size_t{1}, size_t{5}, size_t{777}, size_t{24576},
                       size_t{29999}, buf.size()}) {
    EXPECT_EQ(Crc(buf.data() + split, buf.size() - split, Crc(buf.data(), split)), whole)
        << "split " << split;
  }
}

// The copying form: the CRC of the source and its bytes at the destination, for every
// size around the 3-way blocks and the streaming threshold, every alignment of source and
// destination; nothing written outside [dst, dst + n).
TEST_P(Crc32cPath, CopyingFormCopiesExactlyAndMatches) {
  using CopyFn = uint32_t (*)(void*, const void*, size_t, uint32_t);
  const CopyFn copy = GetParam().fn == internal::Crc32cPortable ? internal::CopyCrc32cPortable
                      : GetParam().fn == internal::Crc32cSse42
                          ? internal::CopyCrc32cSse42
                          : [](void* d, const void* s, size_t n, uint32_t c) { return CopyCrc32c(d, s, n, c); };
  const std::vector<uint8_t> src = RandomBytes(3 * 8192 * 3 + 64, 3);
  const size_t sizes[] = {0,    1,    7,    8,    9,    255,  4095,  4096,  4097,  4103,
                          8191, 24575, 24576, 24577, 24583, 25344, 49152, 50000, 3 * 8192 * 3};
  std::vector<uint8_t> dst(src.size() + 32);
  for (size_t src_align : {0, 1, 4, 7}) {
    for (size_t dst_align : {0, 3, 4, 8}) {
      for (size_t n : sizes) {
        std::fill(dst.begin(), dst.end(), 0xA5);
        const uint8_t* s = src.data() + src_align;
        uint8_t* d = dst.data() + 8 + dst_align;
        ASSERT_EQ(copy(d, s, n, 0x1234u), Crc32cBitwise(s, n, 0x1234u))
            << "size " << n << " src align " << src_align << " dst align " << dst_align;
        ASSERT_EQ(std::memcmp(d, s, n), 0) << "size " << n;
        for (const uint8_t* q = dst.data(); q < d; ++q) ASSERT_EQ(*q, 0xA5) << "wrote before";
        for (const uint8_t* q = d + n; q < dst.data() + dst.size(); ++q) ASSERT_EQ(*q, 0xA5) << "wrote after";
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllPaths, Crc32cPath,
    ::testing::Values(
        CrcPath{"portable", internal::Crc32cPortable, true},
        CrcPath{"sse42", internal::Crc32cSse42, internal::Crc32cSse42Available()},
        CrcPath{"dispatch", [](const void* d, size_t n, uint32_t c) { return Crc32c(d, n, c); },
                true}),
    [](const ::testing::TestParamInfo<CrcPath>& info) { return std::string(info.param.name); });

TEST(KvKeyString, NamesEveryId) {
  EXPECT_EQ(KvKeyString(KvKey{"job-7", 3, 2, 1}), "job-7/3/2/1");
}

TEST(KvWire, ManifestDescribesTheChunk) {
  const ChunkKv kv = RandomChunkKv(2, 3, 5, 7, 100, 3);
  const KvManifestInfo m = MakeManifest(kv);
  EXPECT_EQ(m.n_layer, 2);
  EXPECT_EQ(m.n_head_kv, 3);
  EXPECT_EQ(m.head_dim, 7);
  EXPECT_EQ(m.range_begin, 100);
  EXPECT_EQ(m.range_end, 105);
  EXPECT_EQ(m.dtype, "f32");
  EXPECT_EQ(m.total_bytes, 2 * 2 * 3 * 5 * 7 * 4);
  std::vector<uint8_t> bytes(m.total_bytes);
  std::memcpy(bytes.data(), kv.k.data(), m.total_bytes / 2);
  std::memcpy(bytes.data() + m.total_bytes / 2, kv.v.data(), m.total_bytes / 2);
  EXPECT_EQ(m.crc32c, Crc32cBitwise(bytes.data(), bytes.size()));
}

// (n_layer, n_head_kv, tokens, head_dim, piece_bytes)
using Shape = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t>;
class KvWireRoundTrip : public ::testing::TestWithParam<Shape> {};

TEST_P(KvWireRoundTrip, PiecesReassembleBitForBit) {
  const auto [n_layer, n_head_kv, tokens, head_dim, piece_bytes] = GetParam();
  const ChunkKv kv = RandomChunkKv(n_layer, n_head_kv, tokens, head_dim, 40, 4);
  const KvManifestInfo m = MakeManifest(kv);
  const std::vector<KvPiece> pieces = SplitPieces(kv, piece_bytes);
  const auto k_bytes = static_cast<int64_t>(kv.k.size() * sizeof(float));

  int64_t next = 0;
  for (const KvPiece& p : pieces) {
    const auto n = static_cast<int64_t>(p.bytes.size());
    ASSERT_EQ(p.offset, next);
    ASSERT_GT(n, 0);
    ASSERT_LE(n, piece_bytes);
    ASSERT_TRUE(p.offset + n <= k_bytes || p.offset >= k_bytes) << "piece spans k/v";
    const uint8_t* expect = p.offset < k_bytes
                                ? reinterpret_cast<const uint8_t*>(kv.k.data()) + p.offset
                                : reinterpret_cast<const uint8_t*>(kv.v.data()) + (p.offset - k_bytes);
    ASSERT_EQ(p.bytes.data(), expect) << "pieces are views, not copies";
    next += n;
  }
  ASSERT_EQ(next, m.total_bytes);

  // Fresh memory (appended), then pool memory holding another chunk's stale values
  // (overwritten in place); each piece also arrives split in two parts at an odd byte,
  // as a transport's slices cut it.
  auto pool = std::make_shared<KvBufferPool>(int64_t{1} << 30);
  for (std::vector<float>* stale : {new std::vector<float>(kv.k.size(), -7.5f),
                                    new std::vector<float>(kv.v.size(), 1e30f)}) {
    pool->Give(std::move(*stale));
    delete stale;
  }
  for (KvBufferPool* from : {static_cast<KvBufferPool*>(nullptr), pool.get()}) {
    for (bool split : {false, true}) {
      SCOPED_TRACE(testing::Message() << (from ? "pool" : "fresh") << (split ? ", split" : ""));
      absl::StatusOr<KvAssembler> a = KvAssembler::Start(m, m.total_bytes, from);
      ASSERT_TRUE(a.ok()) << a.status();
      for (const KvPiece& p : pieces) {
        const size_t cut = split ? p.bytes.size() / 3 + (p.bytes.size() > 1 ? 1 : 0) : p.bytes.size();
        const absl::Span<const uint8_t> parts[2] = {p.bytes.subspan(0, cut), p.bytes.subspan(cut)};
        ASSERT_TRUE(a->Add(p.offset, absl::MakeConstSpan(parts, cut < p.bytes.size() ? 2 : 1)).ok());
      }
      EXPECT_EQ(a->received(), m.total_bytes);
      absl::StatusOr<ChunkKv> out = a->Finish();
      ASSERT_TRUE(out.ok()) << out.status();
      EXPECT_TRUE(SameBits(*out, kv));
      if (from != nullptr) {
        pool->Give(std::move(out->k));  // back for the next round, values and all
        pool->Give(std::move(out->v));
      }
    }
  }
  EXPECT_GE(pool->reused(), 4);
}

INSTANTIATE_TEST_SUITE_P(
    OddShapesAndPieces, KvWireRoundTrip,
    ::testing::Values(Shape{1, 1, 1, 1, 1}, Shape{1, 1, 1, 1, 3}, Shape{1, 1, 1, 1, kKvPieceBytes},
                      Shape{2, 3, 5, 7, 1}, Shape{2, 3, 5, 7, 3}, Shape{2, 3, 5, 7, 13},
                      Shape{2, 3, 5, 7, 419}, Shape{2, 3, 5, 7, 420}, Shape{2, 3, 5, 7, 421},
                      Shape{3, 2, 17, 64, 1000}, Shape{3, 2, 17, 64, 4096},
                      Shape{4, 8, 129, 64, kKvPieceBytes}));

// A piece stream that can be tampered with: owned copies of the pieces of a chunk.
struct Stream {
  ChunkKv kv;
  KvManifestInfo manifest;
  std::vector<std::pair<int64_t, std::vector<uint8_t>>> pieces;
};

Stream MakeStream(int64_t piece_bytes) {
  Stream s;
  s.kv = RandomChunkKv(2, 2, 9, 16, 0, 5);  // 4608 bytes
  s.manifest = MakeManifest(s.kv);
  for (const KvPiece& p : SplitPieces(s.kv, piece_bytes)) {
    s.pieces.emplace_back(p.offset, std::vector<uint8_t>(p.bytes.begin(), p.bytes.end()));
  }
  return s;
}

// Feeds every piece (stopping at the first refusal), then finishes: into fresh memory
// and into pool memory that holds the untampered chunk's own bytes (so a check that
// looked at the cache instead of the bytes received would pass wrongly); both must agree.
absl::Status FeedInto(const Stream& s, KvBufferPool* pool) {
  absl::StatusOr<KvAssembler> a = KvAssembler::Start(s.manifest, int64_t{1} << 30, pool);
  if (!a.ok()) return a.status();
  for (const auto& [offset, bytes] : s.pieces) {
    absl::Status st = a->Add(offset, bytes);
    if (!st.ok()) return st;
  }
  return a->Finish().status();
}

absl::Status Feed(const Stream& s) {
  KvBufferPool pool(int64_t{1} << 30);
  const ChunkKv original = RandomChunkKv(2, 2, 9, 16, 0, 5);  // as MakeStream's
  pool.Give(std::vector<float>(original.k));
  pool.Give(std::vector<float>(original.v));
  const absl::Status fresh = FeedInto(s, nullptr), pooled = FeedInto(s, &pool);
  EXPECT_EQ(fresh, pooled) << "fresh and pooled memory disagree";
  return fresh;
}

TEST(KvWireErrors, UntamperedStreamPasses) { EXPECT_TRUE(Feed(MakeStream(500)).ok()); }

TEST(KvWireErrors, FlippedBitIsDataLossNamingBothCrcs) {
  for (size_t piece : {size_t{0}, size_t{4}, size_t{9}}) {
    Stream s = MakeStream(500);
    s.pieces[piece].second[123 % s.pieces[piece].second.size()] ^= 0x10;
    const absl::Status st = Feed(s);
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr("CRC32C"));
    char expected[16];
    std::snprintf(expected, sizeof(expected), "0x%08x", s.manifest.crc32c);
    EXPECT_THAT(std::string(st.message()), HasSubstr(expected));
  }
}

TEST(KvWireErrors, WrongCrcInManifestIsDataLoss) {
  Stream s = MakeStream(500);
  s.manifest.crc32c ^= 1;
  EXPECT_EQ(Feed(s).code(), absl::StatusCode::kDataLoss);
}

TEST(KvWireErrors, TruncatedStreamIsDataLoss) {
  Stream s = MakeStream(500);
  s.pieces.pop_back();
  const absl::Status st = Feed(s);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(st.message()), HasSubstr("truncated"));
  s.pieces.back().second.pop_back();  // one byte short of a whole piece as well
  EXPECT_EQ(Feed(s).code(), absl::StatusCode::kDataLoss);
}

TEST(KvWireErrors, ReorderedPiecesAreDataLoss) {
  Stream s = MakeStream(500);
  std::swap(s.pieces[2], s.pieces[3]);
  const absl::Status st = Feed(s);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(st.message()), HasSubstr("out of order"));
}

TEST(KvWireErrors, DuplicatedPieceIsDataLoss) {
  Stream s = MakeStream(500);
  s.pieces.insert(s.pieces.begin() + 2, s.pieces[1]);
  const absl::Status st = Feed(s);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(st.message()), HasSubstr("out of order"));
}

TEST(KvWireErrors, PiecePastTheEndIsDataLoss) {
  Stream s = MakeStream(500);
  s.pieces.back().second.push_back(0);
  const absl::Status st = Feed(s);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(st.message()), HasSubstr("past the announced"));
  // A whole extra piece after the last one.
  Stream extra = MakeStream(500);
  extra.pieces.emplace_back(extra.manifest.total_bytes, std::vector<uint8_t>(4, 0));
  EXPECT_EQ(Feed(extra).code(), absl::StatusCode::kDataLoss);
}

TEST(KvWireErrors, EmptyPieceIsDataLoss) {
  Stream s = MakeStream(500);
  s.pieces.insert(s.pieces.begin() + 1, {s.pieces[1].first, {}});
  EXPECT_EQ(Feed(s).code(), absl::StatusCode::kDataLoss);
}

TEST(KvWireErrors, OversizedManifestIsResourceExhausted) {
  const KvManifestInfo m = MakeManifest(RandomChunkKv(2, 2, 9, 16, 0, 6));
  EXPECT_EQ(KvAssembler::Start(m, m.total_bytes - 1).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(KvAssembler::Start(m, m.total_bytes).ok());
  // A huge but self-consistent manifest is refused before any allocation.
  KvManifestInfo huge = m;
  huge.n_layer = 1 << 24;  // 38 GB
  huge.total_bytes = 2 * huge.n_layer * 2 * 9 * 16 * 4;
  EXPECT_EQ(KvAssembler::Start(huge, int64_t{8} << 30).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(KvWireErrors, BadManifestsAreInvalidArgument) {
  const KvManifestInfo good = MakeManifest(RandomChunkKv(2, 2, 9, 16, 10, 7));
  ASSERT_TRUE(KvAssembler::Start(good, good.total_bytes).ok());
  struct Case {
    const char* what;
    void (*edit)(KvManifestInfo&);
  };
  const Case cases[] = {
      {"zero layers", [](KvManifestInfo& m) { m.n_layer = 0; }},
      {"negative heads", [](KvManifestInfo& m) { m.n_head_kv = -2; }},
      {"zero head_dim", [](KvManifestInfo& m) { m.head_dim = 0; }},
      {"empty range", [](KvManifestInfo& m) { m.range_end = m.range_begin; }},
      {"reversed range", [](KvManifestInfo& m) { std::swap(m.range_begin, m.range_end); }},
      {"negative range", [](KvManifestInfo& m) { m.range_begin = -9, m.range_end = 0; }},
      {"dtype f16", [](KvManifestInfo& m) { m.dtype = "f16"; }},
      {"empty dtype", [](KvManifestInfo& m) { m.dtype = ""; }},
      {"total + 4", [](KvManifestInfo& m) { m.total_bytes += 4; }},
      {"total / 2", [](KvManifestInfo& m) { m.total_bytes /= 2; }},
      {"total 0", [](KvManifestInfo& m) { m.total_bytes = 0; }},
      {"shape overflows", [](KvManifestInfo& m) { m.n_layer = m.head_dim = int64_t{1} << 31; }},
      {"17 lanes", [](KvManifestInfo& m) { m.lanes = kMaxKvLanes + 1; }},
      {"negative lanes", [](KvManifestInfo& m) { m.lanes = -1; }},
  };
  for (const Case& c : cases) {
    KvManifestInfo m = good;
    c.edit(m);
    EXPECT_EQ(KvAssembler::Start(m, int64_t{1} << 62).status().code(),
              absl::StatusCode::kInvalidArgument)
        << c.what;
  }
}

TEST(KvWireErrors, FinishHandsOverOnce) {
  const ChunkKv kv = RandomChunkKv(1, 1, 2, 3, 0, 8);
  const KvManifestInfo m = MakeManifest(kv);
  absl::StatusOr<KvAssembler> a = KvAssembler::Start(m, m.total_bytes);
  ASSERT_TRUE(a.ok());
  for (const KvPiece& p : SplitPieces(kv)) ASSERT_TRUE(a->Add(p.offset, p.bytes).ok());
  ASSERT_TRUE(a->Finish().ok());
  EXPECT_EQ(a->Finish().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(a->Add(m.total_bytes, SplitPieces(kv)[0].bytes).code(),
            absl::StatusCode::kFailedPrecondition);
}

// ---- Lanes ----

TEST(KvLanes, RangesTileTheBytesOn64ByteCuts) {
  for (int64_t total : {int64_t{8}, int64_t{64}, int64_t{1000}, int64_t{4608}, int64_t{1} << 20,
                        (int64_t{1} << 40) + 8, std::numeric_limits<int64_t>::max() / 4 * 4}) {
    for (int lanes = 1; lanes <= kMaxKvLanes; ++lanes) {
      int64_t next = 0;
      for (int i = 0; i < lanes; ++i) {
        const KvByteRange r = KvLaneRange(total, lanes, i);
        ASSERT_EQ(r.begin, next) << total << " bytes, lane " << i << " of " << lanes;
        ASSERT_GE(r.end, r.begin);
        if (i + 1 < lanes) {
          ASSERT_EQ(r.end % 64, 0);
        }
        next = r.end;
      }
      ASSERT_EQ(next, total) << lanes << " lanes";
    }
  }
  EXPECT_EQ(KvLanesFor(int64_t{64} << 20, 4), 4);
  EXPECT_EQ(KvLanesFor(int64_t{6} << 20, 4), 1);  // one lane per 4 MiB at least
  EXPECT_EQ(KvLanesFor(int64_t{8} << 20, 4), 2);
  EXPECT_EQ(KvLanesFor(int64_t{1} << 40, 99), kMaxKvLanes);
  EXPECT_EQ(KvLanesFor(int64_t{1} << 40, 0), 1);
  EXPECT_EQ(KvLanesFor(4608, 8, 0), 8);
}

TEST(KvLanes, CombinedCrcEqualsTheWholeCrc) {
  const std::vector<uint8_t> buf = RandomBytes(70000, 9);
  for (size_t split : {size_t{0}, size_t{1}, size_t{63}, size_t{4096}, size_t{69999}, buf.size()}) {
    const uint32_t a = Crc32cBitwise(buf.data(), split);
    const uint32_t b = Crc32cBitwise(buf.data() + split, buf.size() - split);
    EXPECT_EQ(Crc32cCombine(a, b, static_cast<int64_t>(buf.size() - split)),
              Crc32cBitwise(buf.data(), buf.size()))
        << "split " << split;
  }
}

// Each lane's pieces fed by its own thread, all at once, into fresh and pool memory.
TEST(KvLanes, LanesFedConcurrentlyReassembleBitForBit) {
  const ChunkKv kv = RandomChunkKv(3, 2, 37, 64, 5, 10);  // 113664 bytes
  auto pool = std::make_shared<KvBufferPool>(int64_t{1} << 30);
  for (int lanes : {1, 2, 3, 7, kMaxKvLanes}) {
    for (KvBufferPool* from : {static_cast<KvBufferPool*>(nullptr), pool.get()}) {
      SCOPED_TRACE(testing::Message() << lanes << " lanes, " << (from ? "pool" : "fresh"));
      KvManifestInfo m = MakeManifest(kv);
      m.lanes = lanes;
      absl::StatusOr<KvAssembler> a = KvAssembler::Start(m, m.total_bytes, from);
      ASSERT_TRUE(a.ok()) << a.status();
      std::vector<std::thread> threads;
      std::vector<absl::Status> status(lanes);
      for (int lane = 0; lane < lanes; ++lane) {
        threads.emplace_back([&, lane] {
          for (const KvPiece& p : SplitPieces(kv, 1000 + lane, KvLaneRange(m.total_bytes, lanes, lane))) {
            const absl::Span<const uint8_t> part = p.bytes;
            status[lane] = a->Add(lane, p.offset, absl::MakeConstSpan(&part, 1));
            if (!status[lane].ok()) return;
          }
        });
      }
      for (std::thread& t : threads) t.join();
      for (const absl::Status& st : status) ASSERT_TRUE(st.ok()) << st;
      EXPECT_EQ(a->received(), m.total_bytes);
      absl::StatusOr<ChunkKv> out = a->Finish();
      ASSERT_TRUE(out.ok()) << out.status();
      EXPECT_TRUE(SameBits(*out, kv));
      if (from != nullptr) {
        pool->Give(std::move(out->k));
        pool->Give(std::move(out->v));
      }
    }
  }
}

TEST(KvLanes, EveryWayALaneGoesWrongIsDataLoss) {
  const ChunkKv kv = RandomChunkKv(2, 2, 9, 64, 0, 11);  // 18432 bytes
  KvManifestInfo m = MakeManifest(kv);
  m.lanes = 3;
  const auto lane_pieces = [&](int lane) {
    return SplitPieces(kv, 1024, KvLaneRange(m.total_bytes, m.lanes, lane));
  };
  const auto add = [](KvAssembler& a, int lane, int64_t offset, absl::Span<const uint8_t> bytes) {
    return a.Add(lane, offset, absl::MakeConstSpan(&bytes, 1));
  };
  const auto start = [&] {
    absl::StatusOr<KvAssembler> a = KvAssembler::Start(m, m.total_bytes);
    EXPECT_TRUE(a.ok());
    return *std::move(a);
  };
  {  // lane 1's first piece sent on lane 0
    KvAssembler a = start();
    const KvPiece p = lane_pieces(1)[0];
    absl::Status st = add(a, 0, p.offset, p.bytes);
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(st.message(), HasSubstr("lane 0 of 3"));
  }
  {  // a piece for a lane that does not exist
    KvAssembler a = start();
    const KvPiece p = lane_pieces(0)[0];
    EXPECT_EQ(add(a, 3, p.offset, p.bytes).code(), absl::StatusCode::kDataLoss);
    EXPECT_EQ(add(a, -1, p.offset, p.bytes).code(), absl::StatusCode::kDataLoss);
  }
  {  // lane 0 runs on past its end into lane 1's bytes
    KvAssembler a = start();
    for (const KvPiece& p : lane_pieces(0)) ASSERT_TRUE(add(a, 0, p.offset, p.bytes).ok());
    const KvPiece next = lane_pieces(1)[0];
    EXPECT_EQ(add(a, 0, next.offset, next.bytes).code(), absl::StatusCode::kDataLoss);
  }
  {  // a lane that stops early: truncated, naming the lane
    KvAssembler a = start();
    for (int lane = 0; lane < 3; ++lane) {
      std::vector<KvPiece> pieces = lane_pieces(lane);
      if (lane == 1) pieces.pop_back();
      for (const KvPiece& p : pieces) ASSERT_TRUE(add(a, lane, p.offset, p.bytes).ok());
    }
    absl::Status st = a.Finish().status();
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(st.message(), HasSubstr("lane 1 of 3"));
  }
  {  // a flipped bit in the last lane: the combined CRC disagrees
    KvAssembler a = start();
    for (int lane = 0; lane < 3; ++lane) {
      const std::vector<KvPiece> pieces = lane_pieces(lane);
      for (size_t i = 0; i < pieces.size(); ++i) {
        std::vector<uint8_t> bytes(pieces[i].bytes.begin(), pieces[i].bytes.end());
        if (lane == 2 && i + 1 == pieces.size()) bytes[7] ^= 0x10;
        ASSERT_TRUE(add(a, lane, pieces[i].offset, bytes).ok());
      }
    }
    absl::Status st = a.Finish().status();
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(st.message(), HasSubstr("CRC32C"));
  }
}

}  // namespace
}  // namespace mesa::worker
