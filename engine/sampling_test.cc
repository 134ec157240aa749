#include "engine/sampling.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace mesa {
namespace {

TEST(SamplerTest, GreedyPicksArgmaxLowestIndexOnTies) {
  Sampler s({});
  std::vector<float> l = {0.1f, 3.0f, -1.0f, 3.0f};
  EXPECT_EQ(s.Sample(l), 1);
  EXPECT_EQ(Sampler::Argmax(l), 1);
}

TEST(SamplerTest, SeededSamplingIsDeterministic) {
  std::vector<float> l = {1.0f, 1.5f, 0.2f, 2.0f, 1.9f};
  SamplingParams p{0.8f, 0, 1.0f, 42};
  Sampler a(p), b(p);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(a.Sample(l), b.Sample(l));
  SamplingParams q = p;
  q.seed = 43;
  Sampler c(p), d(q);
  int differ = 0;
  for (int i = 0; i < 100; ++i) differ += c.Sample(l) != d.Sample(l);
  EXPECT_GT(differ, 0);
}

TEST(SamplerTest, TopKOneAndTinyTopPAreGreedy) {
  std::vector<float> l = {0.5f, 0.1f, 0.4f, 0.45f};
  Sampler k1({2.0f, 1, 1.0f, 7});
  Sampler p0({2.0f, 0, 1e-6f, 7});
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(k1.Sample(l), 0);
    EXPECT_EQ(p0.Sample(l), 0);
  }
}

TEST(SamplerTest, FrequenciesFollowSoftmax) {
  std::vector<float> l = {0.0f, std::log(2.0f), std::log(3.0f)};  // probs 1/6, 2/6, 3/6
  Sampler s({1.0f, 0, 1.0f, 123});
  std::vector<int> count(3);
  const int n = 30000;
  for (int i = 0; i < n; ++i) count[s.Sample(l)]++;
  EXPECT_NEAR(count[0] / double(n), 1 / 6.0, 0.01);
  EXPECT_NEAR(count[1] / double(n), 2 / 6.0, 0.01);
  EXPECT_NEAR(count[2] / double(n), 3 / 6.0, 0.01);
}

TEST(SamplerTest, TopKExcludesTheRest) {
  std::vector<float> l = {5.0f, 4.9f, 4.8f, 0.0f};
  Sampler s({1.0f, 2, 1.0f, 9});
  for (int i = 0; i < 500; ++i) EXPECT_LT(s.Sample(l), 2);
}

}  // namespace
}  // namespace mesa
