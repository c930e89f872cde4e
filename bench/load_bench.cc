// Loading a layer from a safetensors checkpoint (the Load RPC) against
// floors measured in the same run: a plain sequential read() of the same
// files, warm (page cache) and cold (dropped with posix_fadvise), and the
// client pushing the same rows through Populate.
//
//   build/bench/load_bench [--gib=1] [--dir=/tmp] [--engramd=PATH]
//   build/bench/load_bench --push [--gib=1]   # engramctl populate vs floor
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "bench/peers.h"
#include "checkpoint/npy.h"
#include "checkpoint/safetensors.h"
#include "client/client.h"

namespace engram::bench {
namespace {

constexpr int kWeightCols = 256, kScaleCols = 8;  // the FP8 release's rows

double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void DropFromPageCache(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

// Reads `path` start to end with read() into a reused 16 MiB buffer.
double PlainReadSeconds(const std::string& path) {
  std::vector<char> buffer(16 << 20);
  const auto start = Clock::now();
  const int fd = ::open(path.c_str(), O_RDONLY);
  while (::read(fd, buffer.data(), buffer.size()) > 0) {
  }
  ::close(fd);
  return Seconds(start);
}

// Reads `path` into fresh memory (what a load must fill): read() plus the
// first touch of as many new pages.
double ReadIntoFreshMemorySeconds(const std::string& path, size_t bytes) {
  const auto start = Clock::now();
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ::madvise(p, bytes, MADV_HUGEPAGE);  // as engramd's tables
  const int fd = ::open(path.c_str(), O_RDONLY);
  size_t done = 0;
  ssize_t n;
  while (done < bytes &&
         (n = ::read(fd, static_cast<char*>(p) + done,
                     std::min<size_t>(16 << 20, bytes - done))) > 0) {
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  const double s = Seconds(start);
  ::munmap(p, bytes);
  return s;
}

// engramctl populate of two .npy heads of `gib` GiB together into a fresh
// engramd, against the floor the issue names: raw TCP loopback of the same
// bytes plus a first touch of as much fresh memory (measured here).
int RunPush(double gib, const std::string& dir, const std::string& engramd,
            const std::string& engramctl) {
  const int64_t dim = 64;  // float32: 256-byte rows
  const int64_t rows = static_cast<int64_t>(gib * (1 << 30)) / 2 / (dim * 4);
  const std::string root = absl::StrCat(dir, "/engram_push_bench_", getpid());
  std::filesystem::create_directories(root);
  std::vector<float> table(rows * dim);
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<float>(i);
  for (int h = 0; h < 2; ++h) {
    if (!checkpoint::WriteNpy(absl::StrCat(root, "/h", h, ".npy"), "<f4",
                              {rows, dim}, table.data(), table.size() * 4)
             .ok()) {
      return 1;
    }
  }
  table = {};
  const double bytes = 2.0 * rows * dim * 4;
  auto server = ChildServer::Start(
      {engramd, "--listen=127.0.0.1:0", "--metrics_listen="});
  if (!server) return 1;
  const std::string command = absl::StrCat(
      engramctl, " --address=127.0.0.1:", server->port(),
      " populate --layer=1 ", root, "/h0.npy ", root, "/h1.npy > /dev/null");
  auto start = Clock::now();
  if (std::system(command.c_str()) != 0) return 1;
  const double push = Seconds(start);
  // Floor: the bytes over loopback TCP, then a first touch of fresh pages.
  TcpBlaster blaster;
  TcpFetcher fetcher(blaster.port());
  std::vector<uint8_t> buffer;
  start = Clock::now();
  for (double sent = 0; sent < bytes; sent += 64 << 20) {
    if (!fetcher.Fetch(64 << 20, &buffer)) return 1;
  }
  const double tcp = Seconds(start);
  start = Clock::now();
  void* fresh =
      ::mmap(nullptr, static_cast<size_t>(bytes), PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ::madvise(fresh, static_cast<size_t>(bytes), MADV_HUGEPAGE);
  for (size_t i = 0; i < static_cast<size_t>(bytes); i += 4096)
    static_cast<volatile char*>(fresh)[i] = 1;
  const double touch = Seconds(start);
  ::munmap(fresh, static_cast<size_t>(bytes));
  std::printf("push: engramctl populate of two .npy heads, %.2f GiB\n",
              bytes / (1 << 30));
  std::printf("  %-34s %10s %10s\n", "", "seconds", "GB/s");
  auto row = [&](const char* name, double s) {
    std::printf("  %-34s %10.3f %10.2f\n", name, s, bytes / s / 1e9);
  };
  row("engramctl populate", push);
  row("raw TCP loopback", tcp);
  row("first touch of fresh memory", touch);
  row("floor (TCP + first touch)", tcp + touch);
  std::printf("  %-34s %9.2fx (target >= 0.5x)\n", "ratio push / floor",
              (tcp + touch) / push);
  std::filesystem::remove_all(root);
  return 0;
}

int Run(double gib, const std::string& dir, const std::string& engramd) {
  // One layer: heads of prime sizes whose rows add up to ~gib GiB.
  const int64_t row_bytes = kWeightCols + kScaleCols;
  const int64_t total_rows = static_cast<int64_t>(gib * (1 << 30)) / row_bytes;
  const std::vector<int64_t> heads = {total_rows / 2 + 1,
                                      total_rows - total_rows / 2 - 1};
  std::string weight(total_rows * kWeightCols, '\0');
  std::string scale(total_rows * kScaleCols, '\0');
  uint64_t x = 0x9e3779b97f4a7c15;
  for (size_t i = 0; i + 8 <= weight.size(); i += 8) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    std::memcpy(&weight[i], &x, 8);
  }
  for (size_t i = 0; i < scale.size(); ++i) scale[i] = static_cast<char>(i);
  const std::string root = absl::StrCat(dir, "/engram_load_bench_", getpid());
  std::filesystem::create_directories(root);
  const std::string file = root + "/model.safetensors";
  using checkpoint::SafetensorInfo;
  if (!checkpoint::WriteSafetensors(
           file,
           {{"w", SafetensorInfo{"F8_E4M3", {total_rows, kWeightCols}, 0, 0}},
            {"s", SafetensorInfo{"F8_E8M0", {total_rows, kScaleCols}, 0, 0}}},
           {{"w", weight}, {"s", scale}})
           .ok()) {
    std::fprintf(stderr, "load_bench: cannot write %s\n", file.c_str());
    return 1;
  }
  {
    std::FILE* m = std::fopen((root + "/manifest.json").c_str(), "w");
    std::fprintf(m,
                 "{\"layers\": [{\"layer_id\": 1, \"dtype\": \"uint8\", "
                 "\"embedding_dim\": %lld, \"table_vocab_sizes\": [%lld, "
                 "%lld], \"source\": {\"format\": \"safetensors\", "
                 "\"files\": [\"model.safetensors\"], \"tensors\": [\"w\", "
                 "\"s\"]}}]}",
                 static_cast<long long>(row_bytes),
                 static_cast<long long>(heads[0]),
                 static_cast<long long>(heads[1]));
    std::fclose(m);
  }
  const double bytes = static_cast<double>(total_rows * row_bytes);
  auto server =
      ChildServer::Start({engramd, "--listen=127.0.0.1:0",
                          "--metrics_listen=", "--load_root=" + root});
  if (!server) return 1;
  ClientOptions options;
  options.timeout = absl::Minutes(10);
  auto client =
      Client::Connect(absl::StrCat("127.0.0.1:", server->port()), options);
  auto load = [&]() -> double {
    const auto start = Clock::now();
    auto layers = (*client)->Load("manifest.json");
    const double s = Seconds(start);
    if (!layers.ok()) {
      std::fprintf(stderr, "load: %s\n", layers.status().ToString().c_str());
      return -1;
    }
    (void)(*client)->Remove(1);
    return s;
  };
  std::printf(
      "load_bench: one uint8 layer of %lld rows x %lld bytes (%.2f "
      "GiB), fused F8_E4M3 weight + F8_E8M0 scale\n",
      static_cast<long long>(total_rows), static_cast<long long>(row_bytes),
      bytes / (1 << 30));
  std::printf("  %-34s %10s %10s\n", "", "seconds", "GB/s");
  auto row = [&](const char* name, double s) {
    std::printf("  %-34s %10.3f %10.2f\n", name, s, bytes / s / 1e9);
  };
  // Warm: the files are in the page cache (just written, then read once).
  const double warm_read = PlainReadSeconds(file);
  const double warm_read2 = PlainReadSeconds(file);
  const double warm_load = load();
  const double warm_load2 = load();
  if (warm_load < 0 || warm_load2 < 0) return 1;
  const double best_read = std::min(warm_read, warm_read2);
  const double best_load = std::min(warm_load, warm_load2);
  const double fresh = std::min(ReadIntoFreshMemorySeconds(file, bytes),
                                ReadIntoFreshMemorySeconds(file, bytes));
  row("read() warm (floor)", best_read);
  row("read() warm into fresh memory", fresh);
  row("Load warm", best_load);
  std::printf("  %-34s %9.2fx (target >= 0.8x)\n", "ratio Load / read, warm",
              best_read / best_load);
  std::printf("  %-34s %9.2fx\n", "ratio Load / read into fresh memory",
              fresh / best_load);
  // Cold: dropped from the page cache before each.
  DropFromPageCache(file);
  const double cold_read = PlainReadSeconds(file);
  DropFromPageCache(file);
  const double cold_load = load();
  if (cold_load < 0) return 1;
  row("read() cold (floor)", cold_read);
  row("Load cold", cold_load);
  std::printf("  %-34s %9.2fx\n", "ratio Load / read, cold",
              cold_read / cold_load);
  // The client pushing the same rows through Populate.
  std::vector<std::string> tables(2);
  for (size_t r = 0; r < static_cast<size_t>(total_rows); ++r) {
    std::string& t = tables[r < static_cast<size_t>(heads[0]) ? 0 : 1];
    t.append(weight, r * kWeightCols, kWeightCols);
    t.append(scale, r * kScaleCols, kScaleCols);
  }
  weight.clear();
  scale.clear();
  std::vector<std::span<const uint8_t>> spans;
  for (const std::string& t : tables) {
    spans.emplace_back(reinterpret_cast<const uint8_t*>(t.data()), t.size());
  }
  const auto start = Clock::now();
  auto pushed = (*client)->Populate(
      1, LayerLayout{heads, row_bytes, DType::kUInt8}, spans);
  const double push = Seconds(start);
  if (!pushed.ok()) {
    std::fprintf(stderr, "populate: %s\n", pushed.status().ToString().c_str());
    return 1;
  }
  row("Populate from client memory", push);
  std::printf("  %-34s %9.2fx\n", "ratio Load warm / Populate",
              push / best_load);
  std::filesystem::remove_all(root);
  return 0;
}

}  // namespace
}  // namespace engram::bench

ABSL_FLAG(double, gib, 1, "size of the checkpoint, GiB");
ABSL_FLAG(std::string, dir, "/tmp", "where the checkpoint files are written");
ABSL_FLAG(std::string, engramd, ENGRAM_BENCH_ENGRAMD, "the engramd to run");
ABSL_FLAG(std::string, engramctl, ENGRAM_BENCH_ENGRAMCTL,
          "the engramctl to run (--push)");
ABSL_FLAG(bool, push, false,
          "measure engramctl populate --manifest (the client reads the "
          "files) instead of the server's Load");

int main(int argc, char** argv) {
  engram::bench::ParseBenchFlags(
      argc, argv, "load_bench: checkpoint loads against the disk's speed");
  const double gib = absl::GetFlag(FLAGS_gib);
  const std::string dir = absl::GetFlag(FLAGS_dir);
  const std::string engramd = absl::GetFlag(FLAGS_engramd);
  if (absl::GetFlag(FLAGS_push)) {
    return engram::bench::RunPush(gib, dir, engramd,
                                  absl::GetFlag(FLAGS_engramctl));
  }
  return engram::bench::Run(gib, dir, engramd);
}
