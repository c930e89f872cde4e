// numpy's default random generator, reproduced bit for bit where DeepSeek's
// Engram hash depends on it: np.random.default_rng(seed) (SeedSequence
// seeding PCG64) and Generator.integers(0, high, dtype=int64) (Lemire's
// bounded integers). Written from the published algorithms; tested
// against Debian's python3-numpy (tests/python/test_engram_hash.py).
#ifndef ENGRAM_HASH_NUMPY_RANDOM_H_
#define ENGRAM_HASH_NUMPY_RANDOM_H_

#include <cstdint>
#include <vector>

namespace engram::numpy_random {

// PCG64 (XSL-RR 128/64) seeded as np.random.default_rng(seed) seeds it.
// Plain value; not thread-safe.
class Pcg64 {
 public:
  explicit Pcg64(uint64_t seed);
  uint64_t Next64();  // bit_generator.random_raw()
  uint32_t Next32();  // low half of a 64-bit draw, then its high half

 private:
  unsigned __int128 state_ = 0;
  unsigned __int128 inc_ = 0;
  bool has_uint32_ = false;
  uint32_t uinteger_ = 0;
};

// np.random.default_rng(seed).integers(0, high, size=n, dtype=np.int64);
// high >= 1.
std::vector<int64_t> Integers(uint64_t seed, int64_t high, int n);

}  // namespace engram::numpy_random

#endif  // ENGRAM_HASH_NUMPY_RANDOM_H_
