// --data_dir: how fast a layer serves again after a restart, against
// pushing it again through Populate (target >= 20x faster), and random
// lookups of cold rows of a table bigger than the memory budget against a
// pread loop of the same rows with the same threads (target >= 0.8x).
// Both floors are measured in the same run.
//   build/bench/data_dir_bench [--gib=1] [--dir=/tmp] [--seconds=3]
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "bench/peers.h"
#include "client/client.h"
#include "common/malloc_tuning.h"

namespace engram::bench {
namespace {

constexpr int kHeads = 4, kDim = 64;  // float32: 256-byte rows
constexpr int kCallers = 2, kBatch = 256;

double Since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void DropFolderFromPageCache(const std::string& folder) {
  for (const auto& e : std::filesystem::recursive_directory_iterator(folder)) {
    if (!e.is_regular_file()) continue;
    const int fd = ::open(e.path().c_str(), O_RDONLY);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

// Starts engramd and waits until it is ready; the seconds it took.
double StartServing(const std::vector<std::string>& argv,
                    std::unique_ptr<ChildServer>* server,
                    std::unique_ptr<Client>* client) {
  const auto start = Clock::now();
  *server = ChildServer::Start(argv);
  if (!*server) return -1;
  auto c = Client::Connect(absl::StrCat("127.0.0.1:", (*server)->port()));
  while (!(*c)->CheckHealth().ok()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  *client = *std::move(c);
  return Since(start);
}

int Run(double gib, const std::string& base, double seconds,
        const std::string& engramd) {
  TuneMallocForLargeMessages();
  const std::string dir =
      absl::StrCat(base, "/engram_data_dir_bench_", getpid());
  std::filesystem::create_directories(dir);
  const int64_t rows = static_cast<int64_t>(gib * (1 << 30)) /
                       (kHeads * kDim * static_cast<int64_t>(sizeof(float)));
  LayerLayout layout{std::vector<int64_t>(kHeads, rows), kDim, DType::kFloat32};
  std::vector<std::vector<uint8_t>> tables(kHeads);
  std::mt19937_64 rng(1);
  for (auto& t : tables) {
    t.resize(layout.table_bytes(0));
    for (size_t i = 0; i + 8 <= t.size(); i += 8) {
      const uint64_t v = rng();
      std::memcpy(&t[i], &v, 8);
    }
  }
  std::vector<std::span<const uint8_t>> spans(tables.begin(), tables.end());
  const std::vector<std::string> flags = {
      engramd, "--listen=127.0.0.1:0",
      "--metrics_listen=", "--data_dir=" + dir};

  std::unique_ptr<ChildServer> server;
  std::unique_ptr<Client> client;
  if (StartServing(flags, &server, &client) < 0) return 1;
  const auto pop_start = Clock::now();
  if (auto s = client->Populate(1, layout, spans); !s.ok()) {
    std::fprintf(stderr, "populate: %s\n", s.status().ToString().c_str());
    return 1;
  }
  const double populate = Since(pop_start);
  std::printf(
      "data_dir_bench: one layer, %d heads x %lld rows x %d float32 "
      "(%.2f GiB), --data_dir=%s\n",
      kHeads, static_cast<long long>(rows), kDim,
      layout.total_bytes() / double(1 << 30), dir.c_str());
  std::printf("  %-44s %8.3f s\n", "Populate through the client (floor)",
              populate);
  for (bool verify : {true, false}) {
    client.reset();
    server.reset();  // SIGTERM: drains and exits
    std::vector<std::string> argv = flags;
    argv.push_back(verify ? "--verify_data_dir=true"
                          : "--verify_data_dir=false");
    const double restart = StartServing(argv, &server, &client);
    if (restart < 0) return 1;
    std::printf("  %-44s %8.3f s   %6.1fx faster (target >= 20x)\n",
                verify ? "restart until ready, checksums verified"
                       : "restart until ready, --verify_data_dir=false",
                restart, populate / restart);
  }

  // Cold rows. Every id of the run is on a page read by nothing before it
  // (pages drawn without replacement), and the files leave the page cache
  // before each side runs; the pread floor runs first because pages mapped
  // by engramd cannot be dropped. A memory budget far below the table
  // keeps it unpinned.
  client.reset();
  server.reset();
  std::string folder;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.path().filename().string().rfind("layer-1.", 0) == 0)
      folder = e.path();
  const int64_t rows_per_page = 4096 / layout.row_bytes();
  const int64_t pages = rows / rows_per_page;
  // A quarter of the pages at most: rows a kernel read-ahead brought in
  // for an earlier fault are then rarely asked for.
  const int calls = static_cast<int>(std::min<int64_t>(64, pages / kBatch / 4));
  std::vector<int64_t> page_order(pages);
  for (int64_t p = 0; p < pages; ++p) page_order[p] = p;
  std::shuffle(page_order.begin(), page_order.end(), rng);
  // ids[call]: [B, 1, H], each head's ids on pages no call shares.
  std::vector<std::vector<int64_t>> ids(calls);
  for (int c = 0; c < calls; ++c) {
    for (int b = 0; b < kBatch; ++b) {
      for (int h = 0; h < kHeads; ++h) {
        ids[c].push_back(page_order[c * kBatch + b] * rows_per_page +
                         static_cast<int64_t>(rng() % rows_per_page));
      }
    }
  }
  std::vector<std::vector<uint8_t>> outs(
      kCallers, std::vector<uint8_t>(kBatch * kHeads * layout.row_bytes()));
  // Runs `call(caller, index)` for every index on kCallers threads; seconds.
  auto run = [&](const std::function<bool(int, int)>& call) -> double {
    std::atomic<int> next{0};
    std::atomic<bool> ok{true};
    const auto start = Clock::now();
    std::vector<std::thread> threads;
    for (int t = 0; t < kCallers; ++t) {
      threads.emplace_back([&, t] {
        for (int i; (i = next++) < calls;) ok = ok && call(t, i);
      });
    }
    for (auto& t : threads) t.join();
    return ok ? Since(start) : -1;
  };
  std::vector<int> fds;
  for (int h = 0; h < kHeads; ++h)
    fds.push_back(
        ::open(absl::StrCat(folder, "/head-", h, ".bin").c_str(), O_RDONLY));
  DropFolderFromPageCache(folder);
  const double pread_s = run([&](int t, int c) {
    for (int i = 0; i < kBatch * kHeads; ++i) {
      if (::pread(fds[i % kHeads], outs[t].data() + i * layout.row_bytes(),
                  layout.row_bytes(),
                  static_cast<off_t>(ids[c][i] * layout.row_bytes())) < 0) {
        return false;
      }
    }
    return true;
  });
  for (int fd : fds) ::close(fd);
  DropFolderFromPageCache(folder);
  std::vector<std::string> argv = flags;
  argv.push_back("--memory_limit_bytes=16777216");
  argv.push_back("--verify_data_dir=false");
  if (StartServing(argv, &server, &client) < 0) return 1;
  const int64_t shape[] = {kBatch, 1, kHeads};
  const double engram_s = run([&](int t, int c) {
    return client->Lookup(1, ids[c], shape, outs[t]).ok();
  });
  if (pread_s < 0 || engram_s < 0) return 1;
  const double r = static_cast<double>(calls) * kBatch * kHeads;
  std::printf(
      "  cold random rows (%d calls of B = %d x H = %d, every row on "
      "a page not read before), %d callers:\n",
      calls, kBatch, kHeads, kCallers);
  std::printf("  %-44s %10.0f rows/s\n", "engramd Lookup", r / engram_s);
  std::printf("  %-44s %10.0f rows/s\n", "pread loop of the same rows (floor)",
              r / pread_s);
  std::printf("  %-44s %9.2fx (target >= 0.8x)\n", "ratio", pread_s / engram_s);
  client.reset();
  server.reset();
  std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace
}  // namespace engram::bench

ABSL_FLAG(double, gib, 1, "size of the layer, GiB");
ABSL_FLAG(std::string, dir, "/tmp", "where the --data_dir folder is made");
ABSL_FLAG(double, seconds, 3, "seconds of lookups per measurement");
ABSL_FLAG(std::string, engramd, ENGRAM_BENCH_ENGRAMD, "the engramd to run");

int main(int argc, char** argv) {
  engram::bench::ParseBenchFlags(
      argc, argv,
      "data_dir_bench: populate, restart (verified and not) and cold-row "
      "lookups of a --data_dir layer");
  return engram::bench::Run(absl::GetFlag(FLAGS_gib), absl::GetFlag(FLAGS_dir),
                            absl::GetFlag(FLAGS_seconds),
                            absl::GetFlag(FLAGS_engramd));
}
