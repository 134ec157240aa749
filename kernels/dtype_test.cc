// Tests of the type table and the F16 / BF16 conversions in kernels/dtype.cc:
// exhaustive round trips, subnormals, infinities, NaNs, and ties-to-even rounding,
// checked against the F16C hardware conversion where the CPU has it.
#include "kernels/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

namespace mesa {
namespace {

float FromBits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}
uint32_t ToBits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

TEST(DTypeTest, TableMatchesGgml) {
  EXPECT_EQ(GetDTypeInfo(DType::kQ8_0).block_bytes, 34);
  EXPECT_EQ(GetDTypeInfo(DType::kQ4_0).block_bytes, 18);
  EXPECT_EQ(GetDTypeInfo(DType::kQ4_K).block_bytes, 144);
  EXPECT_EQ(GetDTypeInfo(DType::kQ5_K).block_bytes, 176);
  EXPECT_EQ(GetDTypeInfo(DType::kQ6_K).block_bytes, 210);
  EXPECT_EQ(RowBytes(DType::kQ4_K, 4096), 16 * 144);
  EXPECT_EQ(RowBytes(DType::kBF16, 7), 14);
  EXPECT_EQ(FindDTypeInfo(30)->name, "bf16");
  EXPECT_EQ(FindDTypeInfo(4), nullptr);  // removed Q4_2
}

TEST(F16Test, RoundTripsEveryHalf) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = F16ToF32(static_cast<uint16_t>(h));
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0) {
      EXPECT_TRUE(std::isnan(f)) << h;
      EXPECT_TRUE(std::isnan(F16ToF32(F32ToF16(f)))) << h;
    } else {
      EXPECT_EQ(F32ToF16(f), h) << h;
    }
  }
}

TEST(F16Test, SpecialValues) {
  EXPECT_EQ(F16ToF32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(F16ToF32(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(F16ToF32(0x0400), std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_EQ(F16ToF32(0x7bff), 65504.0f);
  EXPECT_EQ(F16ToF32(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(F16ToF32(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_EQ(ToBits(F16ToF32(0x8000)), 0x80000000u);  // -0 keeps its sign
  EXPECT_EQ(F32ToF16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(F32ToF16(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_EQ(F32ToF16(1e10f), 0x7c00);     // overflow
  EXPECT_EQ(F32ToF16(65519.0f), 0x7bff);  // below the halfway point to 65536
  EXPECT_EQ(F32ToF16(65520.0f), 0x7c00);  // tie between 65504 and 65536: even -> inf
  EXPECT_EQ(F32ToF16(1e-10f), 0x0000);    // underflow
  EXPECT_EQ(F32ToF16(-1e-10f), 0x8000);
  const uint16_t nan = F32ToF16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7c00, 0x7c00);
  EXPECT_NE(nan & 0x3ff, 0);
  EXPECT_NE(F32ToF16(FromBits(0x7f800001)) & 0x3ff, 0);  // signalling NaN stays NaN
}

TEST(F16Test, RoundsTiesToEven) {
  const float ulp1 = std::ldexp(1.0f, -10);          // ulp of half at 1.0
  EXPECT_EQ(F32ToF16(1.0f + ulp1 / 2), 0x3c00);      // tie, even below
  EXPECT_EQ(F32ToF16(1.0f + 3 * ulp1 / 2), 0x3c02);  // tie, even above
  EXPECT_EQ(F32ToF16(std::nextafter(1.0f + ulp1 / 2, 2.0f)), 0x3c01);
  // Subnormal ties: 0.5 and 1.5 of the smallest subnormal.
  const float sub = std::ldexp(1.0f, -24);
  EXPECT_EQ(F32ToF16(sub / 2), 0x0000);
  EXPECT_EQ(F32ToF16(3 * sub / 2), 0x0002);
  EXPECT_EQ(F32ToF16(std::nextafter(sub / 2, 1.0f)), 0x0001);
  // Rounding up out of the subnormal range gives the smallest normal.
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -14) - std::ldexp(1.0f, -26)), 0x0400);
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("f16c"))) uint16_t HardwareF16(float f) {
  return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
}

// F16C implements IEEE conversion exactly; sample every 257th float bit pattern.
TEST(F16Test, MatchesF16cOnSampledFloats) {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_F16C)) GTEST_SKIP() << "no F16C";
  for (uint64_t b = 0; b < (uint64_t{1} << 32); b += 257) {
    const float f = FromBits(static_cast<uint32_t>(b));
    const uint16_t want = HardwareF16(f);
    const uint16_t got = F32ToF16(f);
    if (std::isnan(f)) {
      ASSERT_TRUE((got & 0x7c00) == 0x7c00 && (got & 0x3ff) != 0) << b;
    } else {
      ASSERT_EQ(got, want) << "bits " << b;
    }
  }
}
#endif

TEST(BF16Test, RoundTripsEveryBF16) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = BF16ToF32(static_cast<uint16_t>(h));
    EXPECT_EQ(ToBits(f), h << 16);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(BF16ToF32(F32ToBF16(f)))) << h;
    } else {
      EXPECT_EQ(F32ToBF16(f), h) << h;
    }
  }
}

TEST(BF16Test, RoundingAndSpecials) {
  EXPECT_EQ(F32ToBF16(FromBits(0x3f808000)), 0x3f80);  // tie, even below
  EXPECT_EQ(F32ToBF16(FromBits(0x3f818000)), 0x3f82);  // tie, even above
  EXPECT_EQ(F32ToBF16(FromBits(0x3f808001)), 0x3f81);
  EXPECT_EQ(F32ToBF16(FromBits(0x3f807fff)), 0x3f80);
  EXPECT_EQ(F32ToBF16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(F32ToBF16(-std::numeric_limits<float>::infinity()), 0xff80);
  EXPECT_EQ(F32ToBF16(std::numeric_limits<float>::max()), 0x7f80);  // rounds to inf
  EXPECT_EQ(F32ToBF16(FromBits(0x00010000)), 0x0001);               // subnormals keep their bits
  EXPECT_EQ(F32ToBF16(FromBits(0x00018000)), 0x0002);               // subnormal tie -> even
  // Every NaN, signalling included, stays NaN (never rounds into infinity).
  for (uint32_t bits : {0x7f800001u, 0x7fffffffu, 0xff800001u, 0x7fc00000u}) {
    EXPECT_TRUE(std::isnan(BF16ToF32(F32ToBF16(FromBits(bits))))) << bits;
  }
}

}  // namespace
}  // namespace mesa
