// Soak and fault suite (issue 9): a 3-shard, R = 2 cluster of real engramd
// processes under populate/remove churn and lookups from several clients,
// while a shard is killed and restarted empty, a client never reads its
// responses, idle connections pile up and populate streams are flooded and
// abandoned. Bounded to well under a minute of churn (ENGRAM_SOAK_SECONDS
// stretches it). Asserts: no process dies, no lookup returns a wrong row,
// stable layers never fail through the live coordinator, memory comes back
// near its baseline, and the cluster converges to full replication.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <map>
#include <mutex>
#include <thread>

#include "client/client.h"
#include "engram/v1/engram.grpc.pb.h"
#include "tests/testing/engramd_process.h"
#include "tests/testing/lookup_check.h"
#include "tests/testing/random_layer.h"
#include "tests/testing/raw_http2.h"

namespace engram {
namespace {

using testing::EngramdProcess;
using Clock = std::chrono::steady_clock;

int64_t RssBytes(pid_t pid) {
  std::string out;
  testing::RunCommand(
      "awk '/^VmRSS:/{print $2}' /proc/" + std::to_string(pid) + "/status",
      &out);
  return std::atoll(out.c_str()) * 1024;
}

struct Tables {
  LayerLayout layout;
  std::vector<std::vector<uint8_t>> rows;
};

absl::Status LookupExact(Client& c, int64_t id, const Tables& t,
                         uint32_t seed) {
  return testing::LookupExact(c, id, t.layout, t.rows, 6, 3, seed);
}

TEST(SoakTest, ChurnKillsSlowReadersAndFloodsLeaveAConsistentCluster) {
  const char* env = std::getenv("ENGRAM_SOAK_SECONDS");
  const int seconds = env != nullptr ? std::atoi(env) : 20;
  auto cluster = testing::StartCluster(
      3, 2,
      {"--peer_read=gather", "--stream_idle_timeout_seconds=2",
       "--max_pending_response_bytes_per_connection=33554432"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto& shards = *cluster;
  std::vector<std::string> addresses;
  for (auto& s : shards) addresses.push_back(s->address());
  auto coordinator = Client::Connect(addresses[0]);
  auto routed = Client::ConnectCluster(addresses, 2);
  ASSERT_TRUE(coordinator.ok() && routed.ok());

  // Stable layers: must always read exactly through shard 0 and routing.
  std::map<int64_t, Tables> stable;
  stable[1] = {{{4099, 2003, 3001}, 32, DType::kFloat32}, {}};
  stable[2] = {{{1031, 7}, 40, DType::kBFloat16}, {}};
  for (auto& [id, t] : stable) {
    t.rows = testing::RandomTables(t.layout, static_cast<uint32_t>(id));
    ASSERT_TRUE(
        (*coordinator)->Populate(id, t.layout, testing::Spans(t.rows)).ok());
  }
  const int64_t baseline = RssBytes(shards[0]->pid());

  std::atomic<bool> stop{false};
  std::atomic<int64_t> lookups{0}, wrong{0}, stable_failures{0};
  std::atomic<int64_t> churn_rounds{0};
  std::mutex mu;
  std::string first_failure;
  auto note = [&](const absl::Status& s) {
    std::lock_guard<std::mutex> lock(mu);
    if (first_failure.empty()) first_failure = s.ToString();
  };
  std::vector<std::thread> workers;
  for (int r = 0; r < 2; ++r) {  // readers: coordinator and routing client
    workers.emplace_back([&, r] {
      Client& via = r == 0 ? **coordinator : **routed;
      for (uint32_t i = 0; !stop; ++i) {
        const int64_t id = 1 + i % 2;
        absl::Status s = LookupExact(via, id, stable[id], i * 7 + r);
        ++lookups;
        if (s.code() == absl::StatusCode::kDataLoss) ++wrong;
        if (!s.ok()) {
          ++stable_failures;
          note(s);
        }
      }
    });
  }
  // Churn: populate, read back, remove, through shard 0. Populates fail
  // while a shard is down (all shards take part); reads must never be
  // wrong.
  workers.emplace_back([&] {
    for (uint32_t round = 0; !stop; ++round) {
      const int64_t id = 10 + round % 3;
      Tables t{{{3000 + round % 7, 500}, 16, DType::kFloat32}, {}};
      t.rows = testing::RandomTables(t.layout, round);
      if (!(*coordinator)
               ->Populate(id, t.layout, testing::Spans(t.rows))
               .ok()) {
        (void)(*coordinator)->Remove(id, /*force=*/true);
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        continue;
      }
      for (uint32_t i = 0; i < 5; ++i) {
        absl::Status s = LookupExact(**coordinator, id, t, round * 11 + i);
        if (s.code() == absl::StatusCode::kDataLoss) {
          ++wrong;
          note(s);
        }
      }
      (void)(*coordinator)->Remove(id);
      ++churn_rounds;
    }
  });
  // Abuse: a client that never reads, idle connections, abandoned streams.
  workers.emplace_back([&] {
    v1::LookupRequest big;
    big.set_layer_id(1);
    big.add_shape(4096);
    big.add_shape(1);
    big.add_shape(3);
    for (int i = 0; i < 4096 * 3; ++i) big.add_row_ids_list(i % 7);
    const std::string message = big.SerializeAsString();
    std::vector<std::shared_ptr<grpc::Channel>> idle;
    while (!stop) {
      testing::NonReadingHttp2Client slow(shards[0]->grpc_port());
      for (int i = 0; i < 16; ++i)
        slow.Call("/engram.v1.EngramStore/Lookup", message);
      for (int i = 0; i < 20; ++i) {
        grpc::ChannelArguments args;
        args.SetInt("engram.test.idle", static_cast<int>(idle.size()));
        idle.push_back(grpc::CreateCustomChannel(
            addresses[0], grpc::InsecureChannelCredentials(), args));
        idle.back()->GetState(/*try_to_connect=*/true);
      }
      auto stub = v1::EngramStore::NewStub(idle.back());
      std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
      std::vector<std::unique_ptr<grpc::ClientWriter<v1::PopulateRequest>>>
          writers;
      v1::PopulateResponse response;
      for (int i = 0; i < 20; ++i) {  // headers, then silence
        contexts.push_back(std::make_unique<grpc::ClientContext>());
        writers.push_back(stub->Populate(contexts.back().get(), &response));
        v1::PopulateRequest header;
        header.mutable_header()->set_layer_id(500 + i);
        header.mutable_header()->mutable_config()->add_table_vocab_sizes(1000);
        header.mutable_header()->mutable_config()->set_embedding_dim(64);
        writers.back()->Write(header);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1500));
      for (auto& c : contexts) c->TryCancel();
      for (auto& w : writers) (void)w->Finish();
    }
  });

  // Faults: shard 2 is killed and restarted empty, twice.
  const auto end = Clock::now() + std::chrono::seconds(seconds);
  for (int kill = 0; kill < 2; ++kill) {
    std::this_thread::sleep_for(std::chrono::seconds(seconds / 4));
    shards[2]->Kill();
    std::this_thread::sleep_for(std::chrono::milliseconds(700));
    auto restarted = EngramdProcess::Start(shards[2]->flags());
    ASSERT_TRUE(restarted.ok()) << restarted.status();
    shards[2] = *std::move(restarted);
  }
  std::this_thread::sleep_until(end);
  stop = true;
  for (auto& w : workers) w.join();

  for (auto& s : shards) ASSERT_TRUE(s->Alive()) << s->Log();
  // Memory: shard 0 took the churn, the slow reader, the idle connections
  // and the abandoned streams; once they are gone its RSS is back near the
  // baseline (allowing allocator slack).
  std::this_thread::sleep_for(std::chrono::seconds(1));
  const int64_t after = RssBytes(shards[0]->pid());
  EXPECT_LT(after - baseline, int64_t{256} << 20)
      << "baseline " << baseline << " after " << after;
  std::cout << "shard 0 RSS: " << baseline / 1048576 << " MiB before, "
            << after / 1048576 << " MiB after\n";
  EXPECT_EQ(wrong.load(), 0) << first_failure;
  EXPECT_EQ(stable_failures.load(), 0) << first_failure;
  EXPECT_GT(lookups.load(), 100);
  EXPECT_GT(churn_rounds.load(), 3);
  std::cout << lookups.load() << " lookups, " << churn_rounds.load()
            << " populate/remove rounds\n";

  // Converged: the restarted shard holds its ranges again and serves them.
  ASSERT_TRUE(testing::WaitServing(shards[2]->address(), 60).ok())
      << shards[2]->Log();
  auto third = Client::Connect(shards[2]->address());
  ASSERT_TRUE(third.ok());
  bool recovered = false;
  for (int i = 0; i < 600 && !recovered; ++i) {
    recovered = (*third)->CheckHealth("engram.recovery").ok();
    if (!recovered) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(recovered) << shards[2]->Log();
  for (auto& [id, t] : stable) {
    for (uint32_t i = 0; i < 5; ++i) {
      EXPECT_TRUE(LookupExact(**third, id, t, 900 + i).ok());
    }
  }
  // With shard 0 gone, shards 1 and 2 must still hold every range (R = 2):
  // the restarted shard's copy is complete.
  coordinator->reset();
  routed->reset();
  shards[0]->Kill();
  auto second = Client::Connect(shards[1]->address());
  ASSERT_TRUE(second.ok());
  for (auto& [id, t] : stable) {
    for (uint32_t i = 0; i < 5; ++i) {
      absl::Status s = LookupExact(**second, id, t, 950 + i);
      EXPECT_TRUE(s.ok()) << s;
    }
  }
  third->reset();
  second->reset();
  for (int i = 1; i < 3; ++i) EXPECT_EQ(shards[i]->Stop(), 0);
}

}  // namespace
}  // namespace engram
