// recovery_bench: how fast a shard that restarted empty gets its rows back.
// A 3-shard cluster (R = 2) on this host is populated with one layer
// (--gib, default 1 GiB) through shard 0; shard 1 is then stopped and
// started again empty, and the time until its engram.recovery health turns
// SERVING is measured. The floor, measured in the same run: the original
// populate, expressed as bytes landed on shards per second (layer x R).
//   build/bench/recovery_bench [--gib=1]
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "bench/bench_util.h"
#include "bench/peers.h"
#include "client/client.h"
#include "common/malloc_tuning.h"
#include "proto/channel_tuning.h"

namespace engram::bench {
namespace {


double Since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

int Run(double gib) {
  TuneMallocForLargeMessages();
  constexpr int kShards = 3, kReplication = 2, kHeads = 4, kDim = 64;
  const int64_t rows = static_cast<int64_t>(gib * (1 << 30)) /
                       (kHeads * kDim * static_cast<int64_t>(sizeof(float)));
  LayerLayout layout{std::vector<int64_t>(kHeads, rows), kDim, DType::kFloat32};
  std::vector<std::string> addresses;
  for (int i = 0; i < kShards; ++i)
    addresses.push_back(absl::StrCat("127.0.0.1:", FreePort()));
  auto flags = [&](int i) {
    return std::vector<std::string>{
        ENGRAM_BENCH_ENGRAMD,
        "--listen=" + addresses[i],
        "--peers=" + absl::StrJoin(addresses, ","),
        absl::StrCat("--shard_index=", i),
        absl::StrCat("--replication=", kReplication),
        "--metrics_listen=",
        "--peer_read=gather"};
  };
  std::vector<std::unique_ptr<ChildServer>> shards;
  for (int i = 0; i < kShards; ++i) {
    shards.push_back(ChildServer::Start(flags(i)));
    if (shards.back() == nullptr) {
      std::fprintf(stderr, "shard %d did not start\n", i);
      return 1;
    }
  }
  auto client = Client::Connect(addresses[0]);
  if (!client.ok()) return 1;
  for (int i = 0; i < 200 && !(*client)->CheckHealth().ok(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));

  std::mt19937 rng(7);
  std::vector<std::vector<uint8_t>> tables(kHeads);
  std::vector<std::span<const uint8_t>> spans;
  for (auto& t : tables) {
    t.resize(layout.table_bytes(0));
    for (size_t i = 0; i < t.size(); i += 64)
      t[i] = static_cast<uint8_t>(rng());
    spans.emplace_back(t.data(), t.size());
  }
  const auto populate_start = Clock::now();
  auto info = (*client)->Populate(1, layout, spans);
  const double populate_s = Since(populate_start);
  if (!info.ok()) {
    std::fprintf(stderr, "populate: %s\n", info.status().ToString().c_str());
    return 1;
  }
  const double landed =
      static_cast<double>(layout.total_bytes()) * kReplication;

  shards[1].reset();  // SIGTERM: its rows are gone
  const auto restart = Clock::now();
  shards[1] = ChildServer::Start(flags(1));
  if (shards[1] == nullptr) return 1;
  auto restarted = Client::Connect(addresses[1]);
  if (!restarted.ok()) return 1;
  bool back = false;
  while (!back && Since(restart) < 600) {
    back = (*restarted)->CheckHealth("engram.recovery").ok();
    if (!back) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const double rejoin_s = Since(restart);
  const double held = static_cast<double>(layout.total_bytes()) * kReplication /
                      kShards;  // shard 1's share
  std::printf(
      "recovery_bench: %d shards, R = %d, one layer of %.2f GiB (%d heads x "
      "%lld rows x D = %d float32), gather path, all on this host\n",
      kShards, kReplication,
      static_cast<double>(layout.total_bytes()) / (1 << 30), kHeads,
      static_cast<long long>(rows), kDim);
  std::printf("  populate (floor): %.2f s, %.0f MB/s landed on shards\n",
              populate_s, landed / populate_s / 1e6);
  std::printf(
      "  rejoin of shard 1 (%.0f MB of rows), restart to engram.recovery "
      "SERVING: %.2f s, %.0f MB/s = %.2fx the populate rate\n",
      held / 1e6, back ? rejoin_s : -1.0, held / rejoin_s / 1e6,
      (held / rejoin_s) / (landed / populate_s));
  return back ? 0 : 1;
}

}  // namespace
}  // namespace engram::bench

ABSL_FLAG(double, gib, 1, "size of the layer a restarted replica recovers, GiB");

int main(int argc, char** argv) {
  engram::bench::ParseBenchFlags(
      argc, argv, "recovery_bench: a restarted replica's recovery rate");
  return engram::bench::Run(absl::GetFlag(FLAGS_gib));
}
