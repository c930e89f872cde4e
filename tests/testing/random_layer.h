// Test helpers: random layouts and tables, and a reference gather.
#ifndef ENGRAM_TESTS_TESTING_RANDOM_LAYER_H_
#define ENGRAM_TESTS_TESTING_RANDOM_LAYER_H_

#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <vector>

#include "common/layout.h"

namespace engram::testing {

// Random bytes for every head table of `layout`. Float layouts get finite
// values (no NaN bit patterns) so conversions compare exactly.
inline std::vector<std::vector<uint8_t>> RandomTables(const LayerLayout& layout,
                                                      uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::vector<uint8_t>> tables(layout.num_heads());
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int h = 0; h < layout.num_heads(); ++h) {
    tables[h].resize(layout.table_bytes(h));
    const size_t n = tables[h].size() / DTypeSize(layout.dtype);
    for (size_t i = 0; i < n; ++i) {
      uint8_t* p = tables[h].data() + i * DTypeSize(layout.dtype);
      switch (layout.dtype) {
        case DType::kFloat32: {
          float f = normal(rng);
          std::memcpy(p, &f, 4);
          break;
        }
        case DType::kBFloat16: {
          uint16_t v = FloatToBFloat16(normal(rng));
          std::memcpy(p, &v, 2);
          break;
        }
        case DType::kFloat16: {
          uint16_t v = FloatToFloat16(normal(rng));
          std::memcpy(p, &v, 2);
          break;
        }
        case DType::kUInt8:
          *p = static_cast<uint8_t>(rng());
          break;
      }
    }
  }
  return tables;
}

inline std::vector<std::span<const uint8_t>> Spans(
    const std::vector<std::vector<uint8_t>>& tables) {
  return {tables.begin(), tables.end()};
}

// Uniform random valid ids for [batch, length, H].
inline std::vector<int64_t> RandomIds(const LayerLayout& layout, int64_t batch,
                                      int64_t length, uint32_t seed) {
  std::mt19937_64 rng(seed);
  const int64_t heads = layout.num_heads();
  std::vector<int64_t> ids(batch * length * heads);
  for (size_t i = 0; i < ids.size(); ++i) {
    ids[i] = static_cast<int64_t>(rng() % layout.table_vocab_sizes[i % heads]);
  }
  return ids;
}

// Naive gather: row i = table_{i mod H}[ids[i]], converted element by
// element with the scalar conversions.
inline std::vector<uint8_t> ReferenceGather(
    const LayerLayout& layout, const std::vector<std::vector<uint8_t>>& tables,
    const std::vector<int64_t>& ids, DType out_dtype) {
  const size_t dim = static_cast<size_t>(layout.embedding_dim);
  const size_t in_size = DTypeSize(layout.dtype);
  const size_t out_size = DTypeSize(out_dtype);
  std::vector<uint8_t> out(ids.size() * dim * out_size);
  for (size_t i = 0; i < ids.size(); ++i) {
    const uint8_t* row =
        tables[i % layout.num_heads()].data() + ids[i] * dim * in_size;
    for (size_t e = 0; e < dim; ++e) {
      ConvertElements(row + e * in_size, layout.dtype,
                      out.data() + (i * dim + e) * out_size, out_dtype, 1);
    }
  }
  return out;
}

}  // namespace engram::testing

#endif  // ENGRAM_TESTS_TESTING_RANDOM_LAYER_H_
