// The Engram hash on the CPU: ids per second on one core for DeepSeek-V4.1's
// config (24 tables per layer), at decode and prefill shapes, against the
// 20 M ids/s floor issue 24 sets, and against a peer measured in the same
// run: one int64 floor modulo per id by the same primes (the work no hash
// can skip).
#include <chrono>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "bench/bench_util.h"
#include "hash/engram_hash.h"

namespace engram::bench {
namespace {

constexpr char kV41[] = R"({"text_config": {
  "engram_layer_ids": [1, 14], "engram_max_ngram_size": 4,
  "engram_n_heads": 8, "engram_vocab_size": 16000000,
  "engram_num_embeddings": [384006168, 384016682],
  "engram_pad_token_id": 2, "engram_compressed_vocab_size": 99092,
  "image_token_id": 129264}})";

template <typename F>
double IdsPerSecond(int64_t ids_per_call, double seconds, F&& call) {
  call();
  int64_t calls = 0;
  const auto start = std::chrono::steady_clock::now();
  double elapsed = 0;
  while (elapsed < seconds) {
    call();
    ++calls;
    elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
  }
  return static_cast<double>(calls * ids_per_call) / elapsed;
}

int Main(int argc, char** argv) {
  ParseBenchFlags(argc, argv,
                  "hash_bench: the Engram hash's ids/s on one core");
  auto config = EngramHashConfig::FromJson(kV41, "config");
  std::vector<int64_t> map(129280);
  std::iota(map.begin(), map.begin() + 99092, 0);
  std::mt19937_64 rng(3);
  for (size_t i = 99092; i < map.size(); ++i) map[i] = rng() % 99092;
  auto hasher = EngramHasher::Create(*config, map);
  if (!hasher.ok()) {
    std::fprintf(stderr, "%s\n", hasher.status().ToString().c_str());
    return 1;
  }
  const int per = hasher->ids_per_position();
  std::span<const int64_t> primes = hasher->table_sizes(14);
  std::printf(
      "hash_bench: DeepSeek-V4.1 config, %d ids per position, one "
      "core, fused ids\n",
      per);
  std::printf("  %-22s %14s %14s %9s %10s\n", "shape", "hash ids/s",
              "modulo ids/s", "vs mod", "vs 20M/s");
  struct Shape {
    const char* name;
    int64_t batch, tokens, history;
  };
  for (const Shape& s :
       {Shape{"decode B=1", 1, 1, 3}, Shape{"decode B=64", 64, 1, 3},
        Shape{"prefill B=1 T=4096", 1, 4096, 0},
        Shape{"prefill B=8 T=1024", 8, 1024, 0}}) {
    std::vector<int64_t> tokens(s.batch * s.tokens),
        history(s.batch * s.history);
    for (auto& t : tokens) t = rng() % map.size();
    for (auto& t : history) t = rng() % map.size();
    std::vector<int64_t> out(tokens.size() * per);
    const int64_t ids = static_cast<int64_t>(out.size());
    const double hashed = IdsPerSecond(ids, 1.0, [&] {
      (void)hasher->Hash(14, tokens, s.batch, history, true, out);
    });
    std::vector<int64_t> mixes(tokens.size());
    for (auto& m : mixes) m = static_cast<int64_t>(rng());
    const double modulo = IdsPerSecond(ids, 1.0, [&] {
      for (size_t t = 0; t < mixes.size(); ++t) {
        for (int c = 0; c < per; ++c) {
          int64_t r = mixes[t] % primes[c];
          out[t * per + c] = r < 0 ? r + primes[c] : r;
        }
      }
      asm volatile("" : : "r"(out.data()) : "memory");
    });
    std::printf("  %-22s %14.0f %14.0f %8.2fx %9.2fx\n", s.name, hashed, modulo,
                hashed / modulo, hashed / 20e6);
  }
  return 0;
}

}  // namespace
}  // namespace engram::bench

int main(int argc, char** argv) { return engram::bench::Main(argc, argv); }
