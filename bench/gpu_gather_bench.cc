// CUDA gather kernel effective bandwidth (row bytes read + ids read + output
// written) against a device-to-device copy of the same output bytes, timed in
// the same run with CUDA events. Needs a GPU; exits 0 with a note otherwise.
//
//   build/bench/gpu_gather_bench [--rows_per_head=1048576]
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "bench/bench_util.h"
#include "common/dtype.h"
#include "kernels/gpu.h"

ABSL_FLAG(int64_t, rows_per_head, 1 << 20, "rows of each head");

namespace engram {
namespace {

struct Shape {
  const char* name;
  int64_t batch, length;
};

struct Work {
  gpu::GatherLaunch launch;
  gpu::Stream stream;
  void* copy_dst;
  const void* copy_src;
  size_t copy_bytes;
};

absl::Status RunGather(void* arg) {
  auto* w = static_cast<Work*>(arg);
  return gpu::LaunchGather(w->launch, w->stream);
}
absl::Status RunCopy(void* arg) {
  auto* w = static_cast<Work*>(arg);
  return gpu::LaunchDeviceCopy(w->copy_dst, w->copy_src, w->copy_bytes,
                               w->stream);
}

#define CHECK_OK(expr)                                                \
  do {                                                                \
    absl::Status _s = (expr);                                         \
    if (!_s.ok()) {                                                   \
      std::fprintf(stderr, "%s: %s\n", #expr, _s.ToString().c_str()); \
      return 1;                                                       \
    }                                                                 \
  } while (0)

template <typename T>
T* Alloc(size_t bytes) {
  auto p = gpu::DeviceAlloc(bytes);
  return p.ok() ? static_cast<T*>(*p) : nullptr;
}

int Main(int argc, char** argv) {
  bench::ParseBenchFlags(argc, argv, "gpu_gather_bench: the GPU gather, in process");
  const int64_t rows_per_head = absl::GetFlag(FLAGS_rows_per_head);
  std::string why;
  if (gpu::DeviceCount(&why) == 0) {
    std::printf("gpu_gather_bench: skipped (%s)\n", why.c_str());
    return 0;
  }
  CHECK_OK(gpu::SetDevice(0));
  auto stream = gpu::StreamCreate();
  CHECK_OK(stream.status());
  const int heads = 16;
  std::printf("gpu_gather_bench on %s: H = %d, %lld rows per head\n",
              gpu::DeviceName(0).c_str(), heads,
              static_cast<long long>(rows_per_head));
  std::printf("%-22s %-9s %5s %10s %10s %10s %10s %7s\n", "shape", "dtype", "D",
              "rows", "gather us", "gather GB/s", "copy GB/s", "ratio");
  const Shape shapes[] = {{"decode B=256 L=1", 256, 1},
                          {"prefill B=8 L=4096", 8, 4096}};
  std::mt19937_64 rng(7);
  for (DType dtype : {DType::kFloat32, DType::kBFloat16}) {
    for (int64_t dim : {64, 80, 128}) {
      const size_t row_bytes = dim * DTypeSize(dtype);
      // Tables: random bytes are fine for a copy (no conversion here).
      std::vector<uint8_t*> tables(heads);
      std::vector<uint8_t> host(rows_per_head * row_bytes);
      for (auto& b : host) b = static_cast<uint8_t>(rng());
      for (auto& t : tables) {
        t = Alloc<uint8_t>(host.size());
        if (t == nullptr) return 1;
        CHECK_OK(gpu::CopyToDevice(t, host.data(), host.size()));
      }
      auto* d_tables = Alloc<const uint8_t*>(heads * sizeof(void*));
      CHECK_OK(
          gpu::CopyToDevice(d_tables, tables.data(), heads * sizeof(void*)));
      std::vector<int64_t> vocab(heads, rows_per_head);
      auto* d_vocab = Alloc<int64_t>(heads * sizeof(int64_t));
      CHECK_OK(
          gpu::CopyToDevice(d_vocab, vocab.data(), heads * sizeof(int64_t)));
      auto* d_error = Alloc<uint64_t>(8);
      for (const Shape& s : shapes) {
        const int64_t n = s.batch * s.length * heads;
        // Several id sets, rotated, so repeated runs do not replay the cache.
        constexpr int kSets = 4;
        std::vector<int64_t*> d_ids(kSets);
        std::vector<int64_t> ids(n);
        for (auto& d : d_ids) {
          for (auto& id : ids) id = static_cast<int64_t>(rng() % rows_per_head);
          d = Alloc<int64_t>(n * 8);
          CHECK_OK(gpu::CopyToDevice(d, ids.data(), n * 8));
        }
        const size_t out_bytes = n * row_bytes;
        auto* d_out = Alloc<uint8_t>(out_bytes);
        auto* d_copy_src = Alloc<uint8_t>(out_bytes);
        Work w{{d_tables, d_vocab, heads, dim, static_cast<int>(dtype),
                static_cast<int>(dtype), nullptr, n, d_out, d_error},
               *stream,
               d_out,
               d_copy_src,
               out_bytes};
        CHECK_OK(gpu::ResetErrorFlag(d_error, *stream));
        const int iters = s.length == 1 ? 200 : 20;
        float gather_ms = 1e30f, copy_ms = 1e30f;
        for (int rep = 0; rep < 5 * kSets;
             ++rep) {  // warm-up included, best kept
          w.launch.ids = d_ids[rep % kSets];
          auto g = gpu::TimeOnStream(*stream, iters, RunGather, &w);
          auto c = gpu::TimeOnStream(*stream, iters, RunCopy, &w);
          CHECK_OK(g.status());
          CHECK_OK(c.status());
          if (rep >= kSets) {
            gather_ms = std::min(gather_ms, *g / iters);
            copy_ms = std::min(copy_ms, *c / iters);
          }
        }
        uint64_t err = 0;
        CHECK_OK(gpu::CopyToHost(&err, d_error, 8));
        if (err != gpu::kNoError) {
          std::fprintf(stderr, "error flag set: %llu\n",
                       static_cast<unsigned long long>(err));
          return 1;
        }
        const double gather_bytes = 2.0 * out_bytes + n * 8.0;
        const double copy_bytes = 2.0 * out_bytes;
        std::printf("%-22s %-9s %5lld %10lld %10.1f %10.0f %10.0f %6.2fx\n",
                    s.name, DTypeName(dtype), static_cast<long long>(dim),
                    static_cast<long long>(n), gather_ms * 1e3,
                    gather_bytes / (gather_ms * 1e-3) / 1e9,
                    copy_bytes / (copy_ms * 1e-3) / 1e9,
                    (gather_bytes / gather_ms) / (copy_bytes / copy_ms));
        for (auto* d : d_ids) gpu::DeviceFree(d);
        gpu::DeviceFree(d_out);
        gpu::DeviceFree(d_copy_src);
      }
      for (auto* t : tables) gpu::DeviceFree(t);
      gpu::DeviceFree(d_tables);
      gpu::DeviceFree(d_vocab);
      gpu::DeviceFree(d_error);
    }
  }
  std::printf(
      "ratio = gather effective GB/s over device-to-device copy GB/s of the "
      "same output bytes (target >= 0.8x at the prefill shape)\n");
  gpu::StreamDestroy(*stream);
  return 0;
}

}  // namespace
}  // namespace engram

int main(int argc, char** argv) { return engram::Main(argc, argv); }
