#include "hash/numpy_random.h"

#include <array>
#include <cstddef>

namespace engram::numpy_random {
namespace {

// SeedSequence's constants.
constexpr uint32_t kInitA = 0x43b0d7e5u;
constexpr uint32_t kMultA = 0x931e8875u;
constexpr uint32_t kInitB = 0x8b51f9ddu;
constexpr uint32_t kMultB = 0x58f38dedu;
constexpr uint32_t kMixMultL = 0xca01f9ddu;
constexpr uint32_t kMixMultR = 0x4973f715u;
constexpr int kXShift = 16;
constexpr int kPoolSize = 4;

uint32_t HashMix(uint32_t value, uint32_t* hash_const) {
  value ^= *hash_const;
  *hash_const *= kMultA;
  value *= *hash_const;
  value ^= value >> kXShift;
  return value;
}

uint32_t Mix(uint32_t x, uint32_t y) {
  uint32_t result = kMixMultL * x - kMixMultR * y;
  result ^= result >> kXShift;
  return result;
}

// SeedSequence(seed).generate_state(4, np.uint64).
std::array<uint64_t, 4> SeedState(uint64_t seed) {
  // The seed as little-endian 32-bit words (0 is one zero word).
  std::vector<uint32_t> entropy;
  do {
    entropy.push_back(static_cast<uint32_t>(seed));
    seed >>= 32;
  } while (seed != 0);
  std::array<uint32_t, kPoolSize> pool{};
  uint32_t hash_const = kInitA;
  for (int i = 0; i < kPoolSize; ++i) {
    pool[i] = HashMix(i < static_cast<int>(entropy.size()) ? entropy[i] : 0,
                      &hash_const);
  }
  for (int src = 0; src < kPoolSize; ++src) {
    for (int dst = 0; dst < kPoolSize; ++dst) {
      if (src != dst)
        pool[dst] = Mix(pool[dst], HashMix(pool[src], &hash_const));
    }
  }
  for (size_t src = kPoolSize; src < entropy.size(); ++src) {
    for (int dst = 0; dst < kPoolSize; ++dst) {
      pool[dst] = Mix(pool[dst], HashMix(entropy[src], &hash_const));
    }
  }
  std::array<uint32_t, 8> words;
  uint32_t out_const = kInitB;
  for (int i = 0; i < 8; ++i) {
    uint32_t v = pool[i % kPoolSize];
    v ^= out_const;
    out_const *= kMultB;
    v *= out_const;
    v ^= v >> kXShift;
    words[i] = v;
  }
  std::array<uint64_t, 4> state;
  for (int i = 0; i < 4; ++i) {
    state[i] = words[2 * i] | (static_cast<uint64_t>(words[2 * i + 1]) << 32);
  }
  return state;
}

constexpr unsigned __int128 kPcgMultiplier =
    (static_cast<unsigned __int128>(0x2360ED051FC65DA4ull) << 64) |
    0x4385DF649FCCF645ull;

}  // namespace

Pcg64::Pcg64(uint64_t seed) {
  const std::array<uint64_t, 4> s = SeedState(seed);
  const unsigned __int128 init_state =
      (static_cast<unsigned __int128>(s[0]) << 64) | s[1];
  const unsigned __int128 init_seq =
      (static_cast<unsigned __int128>(s[2]) << 64) | s[3];
  state_ = 0;
  inc_ = (init_seq << 1) | 1;
  state_ = state_ * kPcgMultiplier + inc_;
  state_ += init_state;
  state_ = state_ * kPcgMultiplier + inc_;
}

uint64_t Pcg64::Next64() {
  state_ = state_ * kPcgMultiplier + inc_;
  const uint64_t xored =
      static_cast<uint64_t>(state_ >> 64) ^ static_cast<uint64_t>(state_);
  const unsigned rot = static_cast<unsigned>(state_ >> 122);
  return (xored >> rot) | (xored << ((64 - rot) & 63));
}

uint32_t Pcg64::Next32() {
  if (has_uint32_) {
    has_uint32_ = false;
    return uinteger_;
  }
  const uint64_t next = Next64();
  has_uint32_ = true;
  uinteger_ = static_cast<uint32_t>(next >> 32);
  return static_cast<uint32_t>(next);
}

std::vector<int64_t> Integers(uint64_t seed, int64_t high, int n) {
  Pcg64 rng(seed);
  const uint64_t range = static_cast<uint64_t>(high) - 1;  // inclusive
  std::vector<int64_t> out(n, 0);
  if (range == 0) return out;
  for (int i = 0; i < n; ++i) {
    uint64_t v;
    if (range <= 0xFFFFFFFFull) {
      const uint32_t r = static_cast<uint32_t>(range);
      if (r == 0xFFFFFFFFu) {
        v = rng.Next32();
      } else {  // Lemire, 32-bit
        const uint32_t excl = r + 1;
        uint64_t m = static_cast<uint64_t>(rng.Next32()) * excl;
        uint32_t leftover = static_cast<uint32_t>(m);
        if (leftover < excl) {
          const uint32_t threshold = (0xFFFFFFFFu - r) % excl;
          while (leftover < threshold) {
            m = static_cast<uint64_t>(rng.Next32()) * excl;
            leftover = static_cast<uint32_t>(m);
          }
        }
        v = m >> 32;
      }
    } else if (range == ~uint64_t{0}) {
      v = rng.Next64();
    } else {  // Lemire, 64-bit
      const uint64_t excl = range + 1;
      unsigned __int128 m = static_cast<unsigned __int128>(rng.Next64()) * excl;
      uint64_t leftover = static_cast<uint64_t>(m);
      if (leftover < excl) {
        const uint64_t threshold = (~uint64_t{0} - range) % excl;
        while (leftover < threshold) {
          m = static_cast<unsigned __int128>(rng.Next64()) * excl;
          leftover = static_cast<uint64_t>(m);
        }
      }
      v = static_cast<uint64_t>(m >> 64);
    }
    out[i] = static_cast<int64_t>(v);
  }
  return out;
}

}  // namespace engram::numpy_random
