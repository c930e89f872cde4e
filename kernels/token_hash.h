// DeepSeek's Engram n-gram hash for one output row, as the token lookups on
// the GPU compute it inside the gather (kernels/gather.cu), written once for
// host and device so the CPU tests hold it bit for bit to hash/'s
// EngramHasher (tests/kernels/token_hash_test.cc). Plain data and inline
// functions only: no CUDA types, no Abseil.
#ifndef ENGRAM_KERNELS_TOKEN_HASH_H_
#define ENGRAM_KERNELS_TOKEN_HASH_H_

#include <cstdint>

#include "kernels/host_device.h"

namespace engram::gpu {

// Orders hashed at most (max_ngram); DeepSeek's models use 3.
inline constexpr int kMaxTokenNgram = 8;

// One layer's hash and the tokens of one lookup. The table sizes (the
// hash's primes) are the view's row counts, which the caller has checked
// against the model. Pointers are device-readable when a kernel uses them.
struct TokenHashArgs {
  const int64_t* tokens = nullptr;   // [batch, length] raw ids
  const int64_t* history = nullptr;  // [batch, history_length] raw ids
  int64_t batch = 0;
  int64_t length = 0;
  int64_t history_length = 0;          // <= ngram - 1
  const int64_t* token_map = nullptr;  // raw id -> compressed id
  int64_t map_size = 0;
  int64_t pad = 0;           // the compressed pad id
  int64_t image_token = -1;  // raw id hashed as the pad; -1: none
  int32_t ngram = 0;         // N: orders 2..N
  int32_t heads = 0;         // tables per order (H)
  int64_t multipliers[kMaxTokenNgram] = {};
};

// A raw id outside the token map: the row's id is this (never a row).
inline constexpr int64_t kBadTokenRow = -1;

// The row id of output row `row` (rows are [batch, length, (N-1) * H],
// order 2's heads first) in a table of `table_rows` rows, or kBadTokenRow
// when a token it hashes is not a raw id of the map. Products and XOR wrap
// as uint64; the modulo is the floor modulo of the signed result, as numpy's
// int64 computes it.
ENGRAM_HOST_DEVICE int64_t TokenRowId(const TokenHashArgs& a, uint64_t row,
                                      int64_t table_rows) {
  const uint64_t per_position = static_cast<uint64_t>(a.ngram - 1) * a.heads;
  const uint64_t position = row / per_position;
  const int table = static_cast<int>(row - position * per_position);
  const int order = table / a.heads + 1;  // tokens back: 1 .. N-1
  const int64_t b = static_cast<int64_t>(position / a.length);
  const int64_t t = static_cast<int64_t>(position) - b * a.length;
  const int64_t p = a.history_length + t;  // in history ++ tokens
  uint64_t mix = 0;
  for (int k = 0; k <= order; ++k) {
    const int64_t src = p - k;
    int64_t value = a.pad;
    if (src >= 0) {
      const int64_t raw =
          src < a.history_length
              ? a.history[b * a.history_length + src]
              : a.tokens[b * a.length + (src - a.history_length)];
      if (raw < 0 || raw >= a.map_size) return kBadTokenRow;
      if (raw != a.image_token) value = a.token_map[raw];
    }
    mix ^=
        static_cast<uint64_t>(value) * static_cast<uint64_t>(a.multipliers[k]);
  }
  const int64_t r = static_cast<int64_t>(mix) % table_rows;
  return r < 0 ? r + table_rows : r;
}

}  // namespace engram::gpu

#endif  // ENGRAM_KERNELS_TOKEN_HASH_H_
