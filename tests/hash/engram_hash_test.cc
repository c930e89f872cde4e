// The Engram hash library against the published V4.1 constants, numpy's
// generator check value, and its own contract (history = earlier tokens,
// fused offsets, refusals). tests/python/test_engram_hash.py checks it
// against an independent numpy restatement on random streams.
#include "hash/engram_hash.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <numeric>

#include "hash/numpy_random.h"

namespace engram {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kV41[] = R"({"text_config": {
  "engram_layer_ids": [1, 14], "engram_max_ngram_size": 4,
  "engram_n_heads": 8, "engram_vocab_size": 16000000,
  "engram_num_embeddings": [384006168, 384016682], "engram_head_dim": 256,
  "engram_pad_token_id": 2, "engram_compressed_vocab_size": 99092,
  "image_token_id": 129264, "vocab_size": 129280}})";

std::vector<int64_t> IdentityMap(int64_t n) {
  std::vector<int64_t> map(n);
  std::iota(map.begin(), map.end(), 0);
  return map;
}

EngramHasher V41() {
  auto config = EngramHashConfig::FromJson(kV41, "config.json");
  EXPECT_TRUE(config.ok()) << config.status();
  auto map = IdentityMap(99092);
  map.resize(129280, 5);  // raw ids past V share one compressed id
  auto hasher = EngramHasher::Create(*config, map);
  EXPECT_TRUE(hasher.ok()) << hasher.status();
  return *std::move(hasher);
}

TEST(NumpyRandomTest, DefaultRngMatchesNumpysCheckValue) {
  numpy_random::Pcg64 rng(10007);
  EXPECT_EQ(rng.Next64(), 0xd2c3f84026661e33ull);
}

TEST(EngramHashTest, V41MultipliersAndTableSizesAreThePublishedOnes) {
  EngramHasher h = V41();
  EXPECT_THAT(h.multipliers(1), ElementsAre(76632096046245, 4839876093313,
                                            35959672319349, 73987337458391));
  EXPECT_THAT(h.multipliers(14), ElementsAre(67716810739261, 51510806800915,
                                             30921347202721, 82619226485591));
  std::span<const int64_t> sizes = h.table_sizes(1);
  ASSERT_EQ(sizes.size(), 24u);
  EXPECT_EQ(sizes[0], 16000057);
  EXPECT_EQ(sizes[1], 16000079);
  EXPECT_EQ(sizes[2], 16000081);
  // Create checked each layer's sum against engram_num_embeddings.
  EXPECT_EQ(std::accumulate(sizes.begin(), sizes.end(), int64_t{0}), 384006168);
  EXPECT_EQ(h.ids_per_position(), 24);
  EXPECT_TRUE(h.table_sizes(2).empty());
}

TEST(EngramHashTest, HistoryIsTheSequencesEarlierTokens) {
  EngramHasher h = V41();
  const std::vector<int64_t> all = {17, 900, 129264, 33, 4, 77};
  std::vector<int64_t> whole(6 * 24), tail(2 * 24);
  ASSERT_TRUE(h.Hash(14, all, 1, {}, false, whole).ok());
  const std::vector<int64_t> history = {129264, 33, 4};
  const std::vector<int64_t> tokens = {77};
  std::vector<int64_t> one(24);
  ASSERT_TRUE(h.Hash(14, tokens, 1, history, false, one).ok());
  EXPECT_EQ(one, std::vector<int64_t>(whole.end() - 24, whole.end()));
  // Fused ids add each table's offset.
  std::vector<int64_t> fused(24);
  ASSERT_TRUE(h.Hash(14, tokens, 1, history, true, fused).ok());
  int64_t offset = 0;
  std::span<const int64_t> sizes = h.table_sizes(14);
  for (int c = 0; c < 24; ++c) {
    EXPECT_EQ(fused[c], one[c] + offset);
    EXPECT_GE(one[c], 0);
    EXPECT_LT(one[c], sizes[c]);
    offset += sizes[c];
  }
}

// What a routed client and the owners compare: equal models agree, any
// difference in the token map, the config or the layer does not.
TEST(EngramHashTest, TokenModelsNameTheModelAndTheLayer) {
  const EngramHasher a = V41();
  const EngramHasher b = V41();
  EXPECT_EQ(a.fingerprint(), b.fingerprint());
  EXPECT_EQ(a.TokenModel(14), b.TokenModel(14));
  EXPECT_NE(a.TokenModel(1), a.TokenModel(14));
  for (const EngramHasher* h : {&a, &b}) {
    EXPECT_NE(h->TokenModel(14), 0u);
    EXPECT_NE(h->TokenModel(14), kStaleTokenModel);
  }
  auto config = EngramHashConfig::FromJson(kV41, "config.json");
  ASSERT_TRUE(config.ok());
  auto map = IdentityMap(99092);
  map.resize(129280, 5);
  std::swap(map[10], map[11]);  // two raw ids compress the other way
  auto swapped = EngramHasher::Create(*config, map);
  ASSERT_TRUE(swapped.ok()) << swapped.status();
  EXPECT_NE(swapped->fingerprint(), a.fingerprint());
  EXPECT_NE(swapped->TokenModel(14), a.TokenModel(14));
  config->pad_token_id = 3;
  map.assign(a.token_map().begin(), a.token_map().end());
  auto other_pad = EngramHasher::Create(*config, map);
  ASSERT_TRUE(other_pad.ok()) << other_pad.status();
  EXPECT_NE(other_pad->fingerprint(), a.fingerprint());
  // The fingerprint is the hash of what the model is, recomputable.
  EXPECT_EQ(EngramHasher::Fingerprint(a.config(), a.token_map()),
            a.fingerprint());
}

TEST(EngramHashTest, RefusalsNameWhatIsWrong) {
  EngramHasher h = V41();
  std::vector<int64_t> out(24);
  const std::vector<int64_t> bad = {129280};
  absl::Status s = h.Hash(1, bad, 1, {}, false, out);
  EXPECT_THAT(s.message(), HasSubstr("tokens[0, 0] = 129280 is not a raw "
                                     "token id (the token map has 129280)"));
  const std::vector<int64_t> ok = {3};
  EXPECT_THAT(h.Hash(7, ok, 1, {}, false, out).message(),
              HasSubstr("layer 7 is not an Engram layer of this model"));
  const std::vector<int64_t> long_history = {1, 2, 3, 4};
  EXPECT_THAT(h.Hash(1, ok, 1, long_history, false, out).message(),
              HasSubstr("at most 3 (N - 1)"));
  std::vector<int64_t> small(23);
  EXPECT_THAT(h.Hash(1, ok, 1, {}, false, small).message(),
              HasSubstr("out holds 23 ids"));

  auto config = EngramHashConfig::FromJson(kV41, "config.json");
  ASSERT_TRUE(config.ok());
  config->num_embeddings[1] += 1;
  EXPECT_THAT(
      EngramHasher::Create(*config, IdentityMap(99092)).status().message(),
      HasSubstr("layer 14's tables sum to 384016682 rows; "
                "engram_num_embeddings says 384016683"));
  config->num_embeddings[1] -= 1;
  EXPECT_THAT(
      EngramHasher::Create(*config, IdentityMap(99091)).status().message(),
      HasSubstr("the token map has 99091 distinct compressed ids; "
                "engram_compressed_vocab_size is 99092"));
  EXPECT_THAT(EngramHashConfig::FromJson(R"({"engram_layer_ids": [1]})", "c")
                  .status()
                  .message(),
              HasSubstr("c: no engram_max_ngram_size"));
}

}  // namespace
}  // namespace engram
