// The rma peer-read path on its own: a child process exports a table the
// way a shard does (sparse reservation, rows placed through the UCX engine),
// this process attaches and reads random rows into a response-sized buffer.
// Floor: a local memcpy gather of the same rows from a table of the same
// size, on the same thread. UCX_TLS picks the transport (default: shared
// memory on one host, where reads are mapped).
//
//   build/bench/rma_bench [--seconds=S]
#include <sys/wait.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <string>

#include "absl/flags/flag.h"
#include "bench/bench_util.h"
#include "store/host_memory.h"
#include "transport/ucx_engine.h"

ABSL_FLAG(double, seconds, 2, "seconds per measurement");

namespace engram {
namespace {

constexpr int64_t kRows = int64_t{1} << 21;  // one head: 2 M rows
constexpr size_t kRowBytes = 256;            // fp32 D = 64

bool WriteString(int fd, const std::string& s) {
  const uint64_t n = s.size();
  return write(fd, &n, sizeof n) == sizeof n &&
         write(fd, s.data(), n) == static_cast<ssize_t>(n);
}
bool ReadString(int fd, std::string* s) {
  uint64_t n = 0;
  if (read(fd, &n, sizeof n) != sizeof n) return false;
  s->resize(n);
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, s->data() + got, n - got);
    if (r <= 0) return false;
    got += r;
  }
  return true;
}

// UCX's TCP transport only on loopback, and only when UCX_TLS asks for it.
transport::EngineOptions Options(bool mapped_reads) {
  transport::EngineOptions options{.use_mapped_reads = mapped_reads};
  if (const char* tls = std::getenv("UCX_TLS");
      tls != nullptr && std::strstr(tls, "tcp") != nullptr) {
    options.tcp_interface = "lo";
  }
  return options;
}

// The owner: exports the table, sends what a Transport call would, and
// waits for the parent to close the pipe.
int Owner(int to_parent, int from_parent) {
  auto engine = transport::UcxEngine::Create(Options(true));
  if (!engine.ok()) return 1;
  ExportMapper mapper = (*engine)->Mapper();
  auto table = HostBuffer::AllocateSparse(
      kRows * kRowBytes, {{0, kRows * kRowBytes}}, false, &mapper);
  if (!table.ok() || table->exports().size() != 1) return 1;
  for (int64_t r = 0; r < kRows; ++r)
    std::memset(table->data() + r * kRowBytes, static_cast<int>(r & 0xff),
                kRowBytes);
  if (!WriteString(to_parent, (*engine)->worker_address()) ||
      !WriteString(to_parent, (*engine)->control_descriptor()) ||
      !WriteString(to_parent, table->exports()[0].descriptor)) {
    return 1;
  }
  char c;
  while (read(from_parent, &c, 1) > 0) {
  }
  return 0;
}

int Main(int argc, char** argv) {
  bench::ParseBenchFlags(argc, argv,
                  "rma_bench: UCX one-sided reads against a memcpy floor");
  const double seconds = absl::GetFlag(FLAGS_seconds);
  int up[2], down[2];
  if (pipe(up) != 0 || pipe(down) != 0) return 1;
  const pid_t child = fork();
  if (child == 0) {
    close(up[0]);
    close(down[1]);
    _exit(Owner(up[1], down[0]));
  }
  close(up[1]);
  close(down[0]);
  std::string address, control, region;
  if (!ReadString(up[0], &address) || !ReadString(up[0], &control) ||
      !ReadString(up[0], &region)) {
    std::fprintf(stderr, "owner process failed to export\n");
    return 1;
  }
  auto local = HostBuffer::Allocate(kRows * kRowBytes, false);
  if (!local.ok()) return 1;
  for (int64_t r = 0; r < kRows; ++r)
    std::memset(local->data() + r * kRowBytes, static_cast<int>(r & 0xff),
                kRowBytes);

  std::printf(
      "rma_bench: owner process exports 1 table of %lld rows x %zu B; this "
      "process reads random rows into one buffer (1 thread)\n",
      static_cast<long long>(kRows), kRowBytes);
  std::printf("  %-8s %-22s %12s %12s %12s %8s\n", "rows", "path",
              "rma Mrows/s", "memcpy Mr/s", "rma GB/s", "ratio");
  std::mt19937_64 rng(3);
  for (bool mapped_reads : {true, false}) {
    auto reader = transport::UcxEngine::Create(Options(mapped_reads));
    if (!reader.ok()) {
      std::fprintf(stderr, "%s\n", reader.status().ToString().c_str());
      return 1;
    }
    auto remote = (*reader)->Attach(address, control, {region});
    if (!remote.ok()) {
      std::fprintf(stderr, "%s\n", remote.status().ToString().c_str());
      return 1;
    }
    for (int64_t n : {int64_t{256}, int64_t{4096}, int64_t{65536}}) {
      std::vector<int64_t> ids(n);
      for (auto& id : ids) id = static_cast<int64_t>(rng() % kRows);
      std::vector<uint8_t> out(n * kRowBytes);
      std::vector<transport::ReadOp> ops(n);
      for (int64_t i = 0; i < n; ++i) {
        ops[i] = {0, static_cast<uint64_t>(ids[i]) * kRowBytes,
                  out.data() + i * kRowBytes, kRowBytes};
      }
      bool ok = true;
      bench::RunStats rma = bench::RunClosedLoop(1, seconds, [&](int) {
        // Mapped reads call back before Read returns: no wait then.
        std::mutex mu;
        std::condition_variable cv;
        bool finished = false;
        (*reader)->Read(*remote, ops,
                        bench::Clock::now() + std::chrono::seconds(10),
                        [&](absl::Status s) {
                          std::lock_guard<std::mutex> lock(mu);
                          ok &= s.ok();
                          finished = true;
                          cv.notify_one();
                        });
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return finished; });
        return ok;
      });
      // Every row carries its index's low byte: check the last read.
      for (int64_t i = 0; i < n && ok; ++i)
        ok = out[i * kRowBytes] == static_cast<uint8_t>(ids[i] & 0xff);
      // A runtime row width, as in the store's gather: glibc memcpy, not a
      // fixed-size inline copy (slower for these widths).
      volatile size_t width_source = kRowBytes;
      const size_t width = width_source;
      bench::RunStats floor = bench::RunClosedLoop(1, seconds, [&](int) {
        for (int64_t i = 0; i < n; ++i) {
          std::memcpy(out.data() + i * width, local->data() + ids[i] * width,
                      width);
        }
        return true;
      });
      if (!ok) {
        std::fprintf(stderr, "rma read failed or returned wrong rows\n");
        return 1;
      }
      const std::string path =
          (*remote)->transport() + (mapped_reads ? "" : " (gets)");
      std::printf("  %-8lld %-22s %12.2f %12.2f %12.2f %7.2fx\n",
                  static_cast<long long>(n), path.c_str(),
                  rma.calls_per_s() * n / 1e6, floor.calls_per_s() * n / 1e6,
                  rma.calls_per_s() * n * kRowBytes / 1e9,
                  rma.calls_per_s() / floor.calls_per_s());
    }
  }
  std::printf(
      "ratio = rma rows/s over a local memcpy gather of the same rows "
      "(target >= 0.5x for the shared-memory path)\n");
  close(down[1]);
  int status = 0;
  waitpid(child, &status, 0);
  return 0;
}

}  // namespace
}  // namespace engram

int main(int argc, char** argv) { return engram::Main(argc, argv); }
