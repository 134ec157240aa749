// The K/V byte form (worker/kv_wire.h): CRC32C, manifest and pieces on the sender's
// side, the checking assembler on the receiver's, and KvKeyString
// (worker/kv_transport.h). The CRC has two paths behind one dispatch: the SSE4.2 crc32
// instruction on three interleaved streams (its latency is 3 cycles, its throughput 1
// per cycle) joined by zero-shift tables, and a slicing-by-8 table loop elsewhere.
#include "worker/kv_wire.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <iterator>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/kv_transport.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace mesa::worker {

static_assert(std::endian::native == std::endian::little,
              "the K/V wire form is little-endian f32: a big-endian host must swap bytes");

namespace {

constexpr uint32_t kPoly = 0x82F63B78;  // CRC-32C, reflected

// ---- Portable: slicing-by-8 ----

using ByteTables = std::array<std::array<uint32_t, 256>, 8>;

constexpr ByteTables MakeByteTables() {
  ByteTables t{};
  for (uint32_t n = 0; n < 256; ++n) {
    uint32_t c = n;
    for (int bit = 0; bit < 8; ++bit) c = (c >> 1) ^ ((c & 1) ? kPoly : 0);
    t[0][n] = c;
  }
  for (int k = 1; k < 8; ++k) {
    for (uint32_t n = 0; n < 256; ++n) t[k][n] = (t[k - 1][n] >> 8) ^ t[0][t[k - 1][n] & 0xff];
  }
  return t;
}
constexpr ByteTables kByteTables = MakeByteTables();

uint64_t Load64(const uint8_t* p) {
  uint64_t w;
  std::memcpy(&w, p, sizeof(w));
  return w;
}

// ---- Zero shifts: the CRC register after appending `len` zero bytes, as 4 byte tables ----

// A GF(2) 32x32 matrix as its columns: M * v = XOR of cols[i] for each set bit i of v.
using Gf2Matrix = std::array<uint32_t, 32>;

constexpr uint32_t Gf2Times(const Gf2Matrix& m, uint32_t v) {
  uint32_t sum = 0;
  for (int i = 0; v != 0; ++i, v >>= 1) {
    if (v & 1) sum ^= m[i];
  }
  return sum;
}
constexpr Gf2Matrix Gf2Square(const Gf2Matrix& m) {
  Gf2Matrix sq{};
  for (int i = 0; i < 32; ++i) sq[i] = Gf2Times(m, m[i]);
  return sq;
}

using ShiftTables = std::array<std::array<uint32_t, 256>, 4>;

// `len_bytes` must be a power of two.
constexpr ShiftTables MakeShiftTables(size_t len_bytes) {
  Gf2Matrix op{};  // one zero bit: bit 0 leaves and folds in the polynomial
  op[0] = kPoly;
  for (int i = 1; i < 32; ++i) op[i] = uint32_t{1} << (i - 1);
  for (size_t bits = 1; bits < 8 * len_bytes; bits *= 2) op = Gf2Square(op);
  ShiftTables t{};
  for (uint32_t n = 0; n < 256; ++n) {
    for (int k = 0; k < 4; ++k) t[k][n] = Gf2Times(op, n << (8 * k));
  }
  return t;
}

[[maybe_unused]] inline uint32_t Shift(const ShiftTables& t, uint32_t crc) {
  return t[0][crc & 0xff] ^ t[1][(crc >> 8) & 0xff] ^ t[2][(crc >> 16) & 0xff] ^ t[3][crc >> 24];
}

#if defined(__x86_64__)
constexpr size_t kLongBlock = 8192;  // bytes per stream in the 3-way loop
constexpr size_t kShortBlock = 256;  // the same for what is left
constexpr ShiftTables kLongShift = MakeShiftTables(kLongBlock);
constexpr ShiftTables kShortShift = MakeShiftTables(kShortBlock);

// Three independent crc32 streams over blocks [0, B), [B, 2B), [2B, 3B), joined as
// crc(a || b) = shift_B(crc(a)) ^ crc_from_zero(b). Registers are raw (pre-inverted).
template <size_t kBlock>
__attribute__((target("sse4.2"))) uint64_t Crc3Way(uint64_t c0, const ShiftTables& shift,
                                                   const uint8_t*& p, size_t& size) {
  while (size >= 3 * kBlock) {
    uint64_t c1 = 0, c2 = 0;
    for (size_t i = 0; i < kBlock; i += 8) {
      c0 = _mm_crc32_u64(c0, Load64(p + i));
      c1 = _mm_crc32_u64(c1, Load64(p + kBlock + i));
      c2 = _mm_crc32_u64(c2, Load64(p + 2 * kBlock + i));
    }
    c0 = Shift(shift, static_cast<uint32_t>(c0)) ^ c1;
    c0 = Shift(shift, static_cast<uint32_t>(c0)) ^ c2;
    p += 3 * kBlock;
    size -= 3 * kBlock;
  }
  return c0;
}

// Crc3Way that also copies what it reads to `dst` with streaming stores (movnti: 8 bytes,
// no alignment beyond 8, no read of the destination line), so the bytes are loaded once.
template <size_t kBlock>
__attribute__((target("sse4.2"))) uint64_t CopyCrc3Way(uint64_t c0, const ShiftTables& shift,
                                                       uint8_t*& dst, const uint8_t*& p,
                                                       size_t& size) {
  while (size >= 3 * kBlock) {
    uint64_t c1 = 0, c2 = 0;
    for (size_t i = 0; i < kBlock; i += 8) {
      const uint64_t w0 = Load64(p + i), w1 = Load64(p + kBlock + i), w2 = Load64(p + 2 * kBlock + i);
      c0 = _mm_crc32_u64(c0, w0);
      c1 = _mm_crc32_u64(c1, w1);
      c2 = _mm_crc32_u64(c2, w2);
      _mm_stream_si64(reinterpret_cast<long long*>(dst + i), static_cast<long long>(w0));
      _mm_stream_si64(reinterpret_cast<long long*>(dst + kBlock + i), static_cast<long long>(w1));
      _mm_stream_si64(reinterpret_cast<long long*>(dst + 2 * kBlock + i), static_cast<long long>(w2));
    }
    c0 = Shift(shift, static_cast<uint32_t>(c0)) ^ c1;
    c0 = Shift(shift, static_cast<uint32_t>(c0)) ^ c2;
    p += 3 * kBlock;
    dst += 3 * kBlock;
    size -= 3 * kBlock;
  }
  return c0;
}
#endif

// Floats read from bytes at any alignment, as a random-access iterator: lets
// vector::insert append a piece's bytes without the zero-fill of resize.
struct UnalignedFloats {
  using iterator_category = std::random_access_iterator_tag;
  using value_type = float;
  using difference_type = std::ptrdiff_t;
  using pointer = const float*;
  using reference = float;
  const uint8_t* p;
  float operator*() const {
    float f;
    std::memcpy(&f, p, sizeof(f));
    return f;
  }
  float operator[](difference_type n) const { return *(*this + n); }
  UnalignedFloats& operator++() { return *this += 1; }
  UnalignedFloats operator++(int) { return {std::exchange(p, p + 4)}; }
  UnalignedFloats& operator--() { return *this += -1; }
  UnalignedFloats operator--(int) { return {std::exchange(p, p - 4)}; }
  UnalignedFloats& operator+=(difference_type n) { p += 4 * n; return *this; }
  UnalignedFloats& operator-=(difference_type n) { p -= 4 * n; return *this; }
  UnalignedFloats operator+(difference_type n) const { return {p + 4 * n}; }
  UnalignedFloats operator-(difference_type n) const { return {p - 4 * n}; }
  difference_type operator-(const UnalignedFloats& o) const { return (p - o.p) / 4; }
  auto operator<=>(const UnalignedFloats& o) const = default;
};

}  // namespace

namespace internal {

uint32_t Crc32cPortable(const void* data, size_t size, uint32_t crc) {
  const auto& t = kByteTables;
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t c = ~crc;
  for (; size >= 8; p += 8, size -= 8) {
    const uint64_t w = Load64(p) ^ c;
    const auto lo = static_cast<uint32_t>(w), hi = static_cast<uint32_t>(w >> 32);
    c = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^ t[4][lo >> 24] ^
        t[3][hi & 0xff] ^ t[2][(hi >> 8) & 0xff] ^ t[1][(hi >> 16) & 0xff] ^ t[0][hi >> 24];
  }
  for (; size > 0; ++p, --size) c = (c >> 8) ^ t[0][(c ^ *p) & 0xff];
  return ~c;
}

#if defined(__x86_64__)
bool Crc32cSse42Available() {
  static const bool available = __builtin_cpu_supports("sse4.2");
  return available;
}

__attribute__((target("sse4.2"))) uint32_t Crc32cSse42(const void* data, size_t size,
                                                       uint32_t crc) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint64_t c = ~crc;
  for (; size > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0; ++p, --size) {
    c = _mm_crc32_u8(static_cast<uint32_t>(c), *p);
  }
  c = Crc3Way<kLongBlock>(c, kLongShift, p, size);
  c = Crc3Way<kShortBlock>(c, kShortShift, p, size);
  for (; size >= 8; p += 8, size -= 8) c = _mm_crc32_u64(c, Load64(p));
  for (; size > 0; ++p, --size) c = _mm_crc32_u8(static_cast<uint32_t>(c), *p);
  return ~static_cast<uint32_t>(c);
}

__attribute__((target("sse4.2"))) uint32_t CopyCrc32cSse42(void* dst_ptr, const void* src,
                                                           size_t size, uint32_t crc) {
  // Below this, plain stores: a small copy's lines are as likely to be read soon as not,
  // and the fence would cost more than the stores.
  constexpr size_t kStreamMin = 4096;
  auto* dst = static_cast<uint8_t*>(dst_ptr);
  const auto* p = static_cast<const uint8_t*>(src);
  if (size < kStreamMin) {
    std::memcpy(dst, p, size);
    return Crc32cSse42(p, size, crc);
  }
  uint64_t c = ~crc;
  for (; (reinterpret_cast<uintptr_t>(dst) & 7) != 0; ++p, ++dst, --size) {  // size >= 8 here
    *dst = *p;
    c = _mm_crc32_u8(static_cast<uint32_t>(c), *p);
  }
  c = CopyCrc3Way<kLongBlock>(c, kLongShift, dst, p, size);
  c = CopyCrc3Way<kShortBlock>(c, kShortShift, dst, p, size);
  for (; size >= 8; p += 8, dst += 8, size -= 8) {
    const uint64_t w = Load64(p);
    c = _mm_crc32_u64(c, w);
    _mm_stream_si64(reinterpret_cast<long long*>(dst), static_cast<long long>(w));
  }
  for (; size > 0; ++p, ++dst, --size) {
    *dst = *p;
    c = _mm_crc32_u8(static_cast<uint32_t>(c), *p);
  }
  _mm_sfence();  // streaming stores are weakly ordered: visible before anyone is told
  return ~static_cast<uint32_t>(c);
}
#else
bool Crc32cSse42Available() { return false; }
uint32_t Crc32cSse42(const void* data, size_t size, uint32_t crc) {
  return Crc32cPortable(data, size, crc);
}
uint32_t CopyCrc32cSse42(void* dst, const void* src, size_t size, uint32_t crc) {
  return CopyCrc32cPortable(dst, src, size, crc);
}
#endif

uint32_t CopyCrc32cPortable(void* dst, const void* src, size_t size, uint32_t crc) {
  std::memcpy(dst, src, size);
  return Crc32cPortable(src, size, crc);
}

}  // namespace internal

uint32_t Crc32c(const void* data, size_t size, uint32_t crc) {
  return internal::Crc32cSse42Available() ? internal::Crc32cSse42(data, size, crc)
                                          : internal::Crc32cPortable(data, size, crc);
}

uint32_t CopyCrc32c(void* dst, const void* src, size_t size, uint32_t crc) {
  return internal::Crc32cSse42Available() ? internal::CopyCrc32cSse42(dst, src, size, crc)
                                          : internal::CopyCrc32cPortable(dst, src, size, crc);
}

uint32_t Crc32cCombine(uint32_t crc_a, uint32_t crc_b, int64_t len_b) {
  if (crc_a == 0) return crc_b;  // zeros shift to zeros: a single lane costs nothing here
  // As zlib's crc32_combine: the register after len_b zero bytes is op^(8 len_b) applied
  // to crc_a (the pre- and post-inversions cancel out between the two halves).
  Gf2Matrix op{};  // one zero bit
  op[0] = kPoly;
  for (int i = 1; i < 32; ++i) op[i] = uint32_t{1} << (i - 1);
  op = Gf2Square(Gf2Square(Gf2Square(op)));  // one zero byte
  for (uint64_t n = static_cast<uint64_t>(len_b); n != 0; n >>= 1, op = Gf2Square(op)) {
    if (n & 1) crc_a = Gf2Times(op, crc_a);
  }
  return crc_a ^ crc_b;
}

KvByteRange KvLaneRange(int64_t total_bytes, int lanes, int lane) {
  const auto cut = [&](int i) -> int64_t {
    if (i >= lanes) return total_bytes;
    // total * i / lanes without overflow (total < 2^63, lanes <= 16), down to 64 bytes
    const int64_t share = total_bytes / lanes * i + total_bytes % lanes * i / lanes;
    return share / 64 * 64;
  };
  return KvByteRange{cut(lane), cut(lane + 1)};
}

int KvLanesFor(int64_t total_bytes, int wanted, int64_t min_lane_bytes) {
  int64_t lanes = std::clamp(wanted, 1, kMaxKvLanes);
  if (min_lane_bytes > 0) lanes = std::min<int64_t>(lanes, std::max<int64_t>(1, total_bytes / min_lane_bytes));
  return static_cast<int>(lanes);
}

std::string KvKeyString(const KvKey& key) {
  return absl::StrCat(key.job_id, "/", key.item, "/", key.chunk, "/", key.attempt);
}

uint32_t KvCrc32c(const ChunkKv& kv) {
  const uint32_t crc = Crc32c(kv.k.data(), kv.k.size() * sizeof(float));
  return Crc32c(kv.v.data(), kv.v.size() * sizeof(float), crc);
}

KvManifestInfo MakeManifest(const ChunkKv& kv, std::optional<uint32_t> crc32c) {
  KvManifestInfo m;
  m.n_layer = kv.n_layer;
  m.n_head_kv = kv.n_head_kv;
  m.head_dim = kv.head_dim;
  m.range_begin = kv.range.begin;
  m.range_end = kv.range.end;
  m.dtype = "f32";
  m.total_bytes = static_cast<int64_t>(kv.bytes());
  m.crc32c = crc32c.has_value() ? *crc32c : KvCrc32c(kv);
  return m;
}

std::vector<KvPiece> SplitPieces(const ChunkKv& kv, int64_t piece_bytes) {
  return SplitPieces(kv, piece_bytes, KvByteRange{0, static_cast<int64_t>(kv.bytes())});
}

std::vector<KvPiece> SplitPieces(const ChunkKv& kv, int64_t piece_bytes, KvByteRange range) {
  if (piece_bytes <= 0) piece_bytes = kKvPieceBytes;
  std::vector<KvPiece> pieces;
  int64_t offset = 0;  // of the part's first byte
  for (const std::vector<float>* part : {&kv.k, &kv.v}) {
    const auto* base = reinterpret_cast<const uint8_t*>(part->data());
    const auto size = static_cast<int64_t>(part->size() * sizeof(float));
    const int64_t begin = std::clamp(range.begin - offset, int64_t{0}, size);
    const int64_t end = std::clamp(range.end - offset, int64_t{0}, size);
    for (int64_t at = begin; at < end; at += piece_bytes) {
      const int64_t n = std::min(piece_bytes, end - at);
      pieces.push_back({offset + at, absl::Span<const uint8_t>(base + at, n)});
    }
    offset += size;
  }
  return pieces;
}

absl::StatusOr<KvAssembler> KvAssembler::Start(const KvManifestInfo& m, int64_t max_bytes,
                                               KvBufferPool* pool) {
  if (m.n_layer <= 0 || m.n_head_kv <= 0 || m.head_dim <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("K/V manifest: shapes must be positive, got ",
                                                   m.n_layer, " layers, ", m.n_head_kv,
                                                   " kv heads, head_dim ", m.head_dim));
  }
  if (m.range_begin < 0 || m.range_end <= m.range_begin) {
    return absl::InvalidArgumentError(absl::StrCat("K/V manifest: bad token range [",
                                                   m.range_begin, ", ", m.range_end, ")"));
  }
  if (m.dtype != "f32") {
    return absl::InvalidArgumentError(
        absl::StrCat("K/V manifest: dtype \"", m.dtype, "\" (only \"f32\" is supported)"));
  }
  int64_t expected = 2 * static_cast<int64_t>(sizeof(float));
  for (int64_t factor : {m.n_layer, m.n_head_kv, m.range_end - m.range_begin, m.head_dim}) {
    if (__builtin_mul_overflow(expected, factor, &expected)) {
      return absl::InvalidArgumentError("K/V manifest: shape overflows 64-bit byte counts");
    }
  }
  if (m.total_bytes != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("K/V manifest: total_bytes ", m.total_bytes, " does not match the shape (",
                     m.n_layer, " x ", m.n_head_kv, " x ", m.range_end - m.range_begin, " x ",
                     m.head_dim, " x 2 x 4 = ", expected, ")"));
  }
  if (m.total_bytes > max_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "K/V manifest announces ", m.total_bytes, " bytes, over the limit of ", max_bytes));
  }
  const int lanes = m.lanes == 0 ? 1 : m.lanes;
  if (lanes < 1 || lanes > kMaxKvLanes) {
    return absl::InvalidArgumentError(
        absl::StrCat("K/V manifest: ", m.lanes, " lanes (1 to ", kMaxKvLanes, ")"));
  }
  KvAssembler a;
  a.pool_ = pool;
  a.manifest_ = m;
  a.manifest_.lanes = lanes;
  for (int i = 0; i < lanes; ++i) {
    const KvByteRange range = KvLaneRange(m.total_bytes, lanes, i);
    a.lanes_.push_back(Lane{range, range.begin, 0});
  }
  a.kv_.n_layer = m.n_layer;
  a.kv_.n_head_kv = m.n_head_kv;
  a.kv_.head_dim = m.head_dim;
  a.kv_.range = TokenRange{m.range_begin, m.range_end};
  // Room only (memory used before from the pool, else fresh in huge pages): Add appends
  // the bytes, so each byte of the cache is written once, by the copy (resize would
  // zero-fill it first).
  const auto elements = static_cast<size_t>(m.total_bytes / 2 / sizeof(float));
  for (std::vector<float>* part : {&a.kv_.k, &a.kv_.v}) {
    *part = pool != nullptr ? pool->Take(elements) : ReserveFloats(elements);
    // Lanes fill the memory out of order, so it must be sized: fresh memory is zeroed
    // here (it is faulted in either way; the cold case only).
    if (lanes > 1 && part->size() != elements) part->resize(elements);
  }
  return a;
}

KvAssembler::~KvAssembler() {
  if (pool_ == nullptr) return;
  pool_->Give(std::move(kv_.k));  // empty after Finish or a move: nothing to give
  pool_->Give(std::move(kv_.v));
}

absl::Status KvAssembler::Add(int64_t offset, absl::Span<const uint8_t> bytes) {
  return Add(0, offset, absl::MakeConstSpan(&bytes, 1));
}

absl::Status KvAssembler::Add(int64_t offset, absl::Span<const absl::Span<const uint8_t>> parts) {
  return Add(0, offset, parts);
}

absl::Status KvAssembler::Add(int lane_index, int64_t offset,
                              absl::Span<const absl::Span<const uint8_t>> parts) {
  if (finished_) return absl::FailedPreconditionError("K/V stream: piece after Finish");
  if (lane_index < 0 || lane_index >= static_cast<int>(lanes_.size())) {
    return absl::DataLossError(absl::StrCat("K/V stream: a piece for lane ", lane_index, " of ",
                                            lanes_.size()));
  }
  Lane& lane = lanes_[lane_index];
  // For error messages only (built on the error path: Add runs once per piece).
  const auto where = [&]() -> std::string {
    return lanes_.size() > 1 ? absl::StrCat(" (lane ", lane_index, " of ", lanes_.size(), ")") : "";
  };
  if (offset != lane.next) {
    return absl::DataLossError(absl::StrCat("K/V stream: piece out of order at offset ", offset,
                                            ", expected offset ", lane.next, where()));
  }
  int64_t size = 0;
  for (absl::Span<const uint8_t> part : parts) size += static_cast<int64_t>(part.size());
  if (size == 0) {
    return absl::DataLossError(absl::StrCat("K/V stream: empty piece at offset ", offset, where()));
  }
  if (size > lane.range.end - lane.next) {
    return absl::DataLossError(absl::StrCat(
        "K/V stream: piece of ", size, " bytes at offset ", offset, " runs past ",
        lanes_.size() > 1 ? absl::StrCat("the lane's end at ", lane.range.end, where())
                          : absl::StrCat("the announced ", manifest_.total_bytes, " bytes")));
  }
  for (absl::Span<const uint8_t> part : parts) Write(lane, part.data(), static_cast<int64_t>(part.size()));
  return absl::OkStatus();
}

void KvAssembler::Write(Lane& lane, const uint8_t* src, int64_t size) {
  const int64_t k_bytes = manifest_.total_bytes / 2;  // a whole number of floats
  while (size > 0) {
    const bool in_k = lane.next < k_bytes;
    std::vector<float>& dst = in_k ? kv_.k : kv_.v;
    const int64_t at = in_k ? lane.next : lane.next - k_bytes;  // byte offset within dst
    const int64_t n = std::min(size, (in_k ? k_bytes : manifest_.total_bytes) - lane.next);
    if (static_cast<int64_t>(dst.size() * sizeof(float)) == k_bytes) {
      // Sized memory (from the pool, or for lanes): overwrite in place, CRC and copy in
      // one pass.
      lane.crc = CopyCrc32c(reinterpret_cast<uint8_t*>(dst.data()) + at, src, static_cast<size_t>(n), lane.crc);
    } else {
      lane.crc = Crc32c(src, static_cast<size_t>(n), lane.crc);  // while the bytes are in cache
      Append(dst, src, n);
    }
    src += n, size -= n, lane.next += n;
  }
}

int64_t KvAssembler::received() const {
  int64_t n = 0;
  for (const Lane& lane : lanes_) n += lane.next - lane.range.begin;
  return n;
}

void KvAssembler::Append(std::vector<float>& dst, const uint8_t* src, int64_t n) {
  if (carry_bytes_ > 0) {  // complete the float begun by the previous piece
    const int64_t take = std::min<int64_t>(n, 4 - carry_bytes_);
    std::memcpy(carry_ + carry_bytes_, src, take);
    carry_bytes_ += static_cast<int>(take), src += take, n -= take;
    if (carry_bytes_ < 4) return;
    float f;
    std::memcpy(&f, carry_, 4);
    dst.push_back(f);
    carry_bytes_ = 0;
  }
  const int64_t whole = n / 4;
  dst.insert(dst.end(), UnalignedFloats{src}, UnalignedFloats{src + 4 * whole});
  src += 4 * whole, n -= 4 * whole;
  std::memcpy(carry_, src, n);
  carry_bytes_ = static_cast<int>(n);
}

absl::StatusOr<ChunkKv> KvAssembler::Finish() {
  if (finished_) return absl::FailedPreconditionError("K/V stream: Finish called twice");
  uint32_t crc = 0;
  for (size_t i = 0; i < lanes_.size(); ++i) {
    const Lane& lane = lanes_[i];
    if (lane.next != lane.range.end) {
      return absl::DataLossError(absl::StrCat(
          "K/V stream truncated: received ", received(), " of ", manifest_.total_bytes, " bytes",
          lanes_.size() > 1 ? absl::StrCat(" (lane ", i, " of ", lanes_.size(), " stopped at ",
                                           lane.next, " of [", lane.range.begin, ", ",
                                           lane.range.end, "))")
                            : ""));
    }
    crc = Crc32cCombine(crc, lane.crc, lane.range.end - lane.range.begin);
  }
  if (crc != manifest_.crc32c) {
    return absl::DataLossError(absl::StrFormat(
        "K/V stream corrupt: CRC32C expected 0x%08x (manifest), actual 0x%08x (bytes received)",
        manifest_.crc32c, crc));
  }
  finished_ = true;
  return std::move(kv_);
}

}  // namespace mesa::worker
