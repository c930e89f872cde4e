// In-process gather throughput against its floor: a plain loop that
// memcpy's the same random rows from the same tables, on the same threads.
//
//   build/bench/gather_bench [--rows_per_head=N] [--threads=T]
#include <cstdio>
#include <cstring>
#include <random>
#include <string>

#include "absl/flags/flag.h"
#include "bench/bench_util.h"
#include "store/gather.h"
#include "store/layer_builder.h"

ABSL_FLAG(int64_t, rows_per_head, 1 << 18, "rows of each of the 16 heads");
ABSL_FLAG(int, threads, 2, "gather threads");

namespace engram {
namespace {

double Best(int reps, const std::function<void()>& fn) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    auto t0 = bench::Clock::now();
    fn();
    best = std::min(
        best, std::chrono::duration<double>(bench::Clock::now() - t0).count());
  }
  return best;
}

int Main(int argc, char** argv) {
  bench::ParseBenchFlags(argc, argv, "gather_bench: the CPU gather, in process");
  const int64_t rows_per_head = absl::GetFlag(FLAGS_rows_per_head);
  const int threads = absl::GetFlag(FLAGS_threads);
  const int heads = 16;
  std::printf("gather_bench: H = %d, %lld rows per head, %d threads\n", heads,
              static_cast<long long>(rows_per_head), threads);
  std::printf("%-10s %-8s %12s %12s %12s %8s\n", "dtype", "D", "gather Mr/s",
              "memcpy Mr/s", "gather GB/s", "ratio");
  ThreadPool pool(threads);
  for (auto [dtype, dim] : {std::pair{DType::kFloat32, int64_t{64}},
                            std::pair{DType::kFloat32, int64_t{80}},
                            std::pair{DType::kBFloat16, int64_t{128}}}) {
    LayerLayout layout{std::vector<int64_t>(heads, rows_per_head), dim, dtype};
    MemoryBudget budget(uint64_t{1} << 40);
    auto builder = LayerBuilder::Create(1, layout, &budget, false);
    if (!builder.ok()) {
      std::fprintf(stderr, "%s\n", builder.status().ToString().c_str());
      return 1;
    }
    std::string rows(layout.table_bytes(0), '\x3c');
    for (int h = 0; h < heads; ++h) (void)(*builder)->AddChunk(h, 0, rows);
    std::shared_ptr<const Layer> layer = *(*builder)->Finish();

    const int64_t n = 256 * 256 * heads / 16 * 4;  // 262144 rows per pass
    std::mt19937_64 rng(1);
    std::vector<int64_t> ids(n);
    for (auto& id : ids) id = static_cast<int64_t>(rng() % rows_per_head);
    const size_t row_bytes = layout.row_bytes();
    std::vector<uint8_t> out(n * row_bytes);

    auto gather = [&] {
      GatherParallel(&pool, *layer, ids.data(), n, dtype, out.data());
    };
    // Floor: the same split over the same threads, a bare memcpy per row.
    auto floor = [&] {
      std::vector<std::thread> ts;
      for (int t = 0; t < threads; ++t) {
        ts.emplace_back([&, t] {
          const int64_t begin = n * t / threads, end = n * (t + 1) / threads;
          for (int64_t i = begin; i < end; ++i) {
            std::memcpy(out.data() + i * row_bytes,
                        layer->table(i % heads) + ids[i] * row_bytes,
                        row_bytes);
          }
        });
      }
      for (auto& t : ts) t.join();
    };
    // Alternate the two so machine noise hits both alike; keep each best.
    double gather_s = 1e30, memcpy_s = 1e30;
    for (int rep = 0; rep < 15; ++rep) {
      gather_s = std::min(gather_s, Best(1, gather));
      memcpy_s = std::min(memcpy_s, Best(1, floor));
    }
    std::printf("%-10s %-8lld %12.1f %12.1f %12.2f %7.2fx\n", DTypeName(dtype),
                static_cast<long long>(dim), n / gather_s / 1e6,
                n / memcpy_s / 1e6, n * row_bytes / gather_s / 1e9,
                memcpy_s / gather_s);
  }
  std::printf(
      "ratio = gather rows/s over memcpy-loop rows/s (target >= 0.8x)\n");
  return 0;
}

}  // namespace
}  // namespace engram

int main(int argc, char** argv) { return engram::Main(argc, argv); }
