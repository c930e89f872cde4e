// The per-row hash the GPU token lookups run (kernels/token_hash.h), on the
// CPU, against hash/'s EngramHasher: every row id equal on random streams of
// the V4.1 config and a demo-style one, with histories of every length,
// several sequences, the image token and raw ids that share a compressed
// id; a raw id outside the token map fails exactly the rows that hash it.
#include "kernels/token_hash.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "hash/engram_hash.h"

namespace engram {
namespace {

constexpr char kV41[] = R"({"text_config": {
  "engram_layer_ids": [1, 14], "engram_max_ngram_size": 4,
  "engram_n_heads": 8, "engram_vocab_size": 16000000,
  "engram_num_embeddings": [384006168, 384016682], "engram_head_dim": 256,
  "engram_pad_token_id": 2, "engram_compressed_vocab_size": 1000,
  "image_token_id": 1500, "vocab_size": 2000}})";
constexpr char kDemo[] = R"({"engram_layer_ids": [1, 15],
  "engram_max_ngram_size": 3, "engram_n_heads": 8,
  "engram_vocab_size": [5003, 7001], "engram_pad_token_id": 0,
  "engram_compressed_vocab_size": 300})";

// Raw ids 0..raw-1 onto `compressed` distinct ids, shuffled, every one used.
std::vector<int64_t> RandomMap(int64_t raw, int64_t compressed,
                               std::mt19937_64& rng) {
  std::vector<int64_t> map(raw);
  for (int64_t i = 0; i < raw; ++i) map[i] = i % compressed;
  std::shuffle(map.begin(), map.end(), rng);
  return map;
}

EngramHasher Make(const char* json, int64_t raw, std::mt19937_64& rng) {
  auto config = EngramHashConfig::FromJson(json, "config.json");
  EXPECT_TRUE(config.ok()) << config.status();
  auto hasher = EngramHasher::Create(
      *config, RandomMap(raw, config->compressed_vocab, rng));
  EXPECT_TRUE(hasher.ok()) << hasher.status();
  return *std::move(hasher);
}

gpu::TokenHashArgs ArgsFor(const EngramHasher& h, int64_t layer,
                           const std::vector<int64_t>& tokens,
                           const std::vector<int64_t>& history, int64_t batch) {
  gpu::TokenHashArgs a;
  a.tokens = tokens.data();
  a.history = history.data();
  a.batch = batch;
  a.length = static_cast<int64_t>(tokens.size()) / batch;
  a.history_length = static_cast<int64_t>(history.size()) / batch;
  a.token_map = h.token_map().data();
  a.map_size = static_cast<int64_t>(h.token_map().size());
  a.pad = h.compressed_pad();
  a.image_token = h.config().image_token_id.value_or(-1);
  a.ngram = h.config().max_ngram;
  a.heads = h.config().heads;
  std::span<const int64_t> mult = h.multipliers(layer);
  std::copy(mult.begin(), mult.end(), a.multipliers);
  return a;
}

// Every row of one call, by both.
void ExpectSameIds(const EngramHasher& h, int64_t layer,
                   const std::vector<int64_t>& tokens,
                   const std::vector<int64_t>& history, int64_t batch) {
  const int per = h.ids_per_position();
  std::vector<int64_t> want(tokens.size() * per);
  ASSERT_TRUE(
      h.Hash(layer, tokens, batch, history, /*fused=*/false, want).ok());
  const gpu::TokenHashArgs a = ArgsFor(h, layer, tokens, history, batch);
  std::span<const int64_t> sizes = h.table_sizes(layer);
  for (size_t row = 0; row < want.size(); ++row) {
    ASSERT_EQ(gpu::TokenRowId(a, row, sizes[row % per]), want[row])
        << "row " << row << " (layer " << layer << ", batch " << batch
        << ", history " << a.history_length << ")";
  }
}

TEST(TokenHashTest, EveryRowEqualsTheHashLibrarysOnRandomStreams) {
  std::mt19937_64 rng(7);
  for (const char* json : {kV41, kDemo}) {
    const EngramHasher h = Make(json, 2000, rng);
    const int64_t image = h.config().image_token_id.value_or(0);
    std::uniform_int_distribution<int64_t> raw(0, 1999);
    for (int64_t layer : h.config().layer_ids) {
      for (int64_t hist = 0; hist < h.config().max_ngram; ++hist) {
        for (int64_t batch : {1, 3}) {
          const int64_t length = batch == 1 ? 1 : 37;  // decode, prefill
          std::vector<int64_t> tokens(batch * length), history(batch * hist);
          for (int64_t& t : tokens) t = rng() % 10 == 0 ? image : raw(rng);
          for (int64_t& t : history) t = rng() % 10 == 0 ? image : raw(rng);
          ExpectSameIds(h, layer, tokens, history, batch);
        }
      }
    }
  }
}

TEST(TokenHashTest, ABadRawIdFailsOnlyTheRowsThatHashIt) {
  std::mt19937_64 rng(11);
  const EngramHasher h = Make(kDemo, 2000, rng);
  const int per = h.ids_per_position();              // (3 - 1) * 8
  std::vector<int64_t> tokens = {5, 6, 2000, 7, 8};  // 2000: past the map
  std::vector<int64_t> history;
  std::vector<int64_t> ids(tokens.size() * per);
  EXPECT_FALSE(h.Hash(1, tokens, 1, history, false, ids).ok());
  const gpu::TokenHashArgs a = ArgsFor(h, 1, tokens, history, 1);
  std::span<const int64_t> sizes = h.table_sizes(1);
  for (int64_t t = 0; t < 5; ++t) {
    for (int j = 0; j < per; ++j) {
      const int order = j / 8 + 1;  // tokens back it reaches
      const bool reaches = t >= 2 && t - order <= 2;
      const int64_t id = gpu::TokenRowId(a, t * per + j, sizes[j]);
      EXPECT_EQ(id == gpu::kBadTokenRow, reaches) << "t " << t << " j " << j;
      if (!reaches) {
        EXPECT_GE(id, 0);
        EXPECT_LT(id, sizes[j]);
      }
    }
  }
  tokens[2] = -3;
  EXPECT_EQ(gpu::TokenRowId(ArgsFor(h, 1, tokens, history, 1), 2 * per, 7),
            gpu::kBadTokenRow);
}

}  // namespace
}  // namespace engram
