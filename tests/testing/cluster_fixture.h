// The fixture the cluster tests share: a cluster of real engramd processes
// parameterised by peer-read path, the tables populated into it, and a
// background reader that keeps checking lookups while a test breaks things.
#ifndef ENGRAM_TESTS_TESTING_CLUSTER_FIXTURE_H_
#define ENGRAM_TESTS_TESTING_CLUSTER_FIXTURE_H_

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "client/client.h"
#include "tests/testing/engramd_process.h"
#include "tests/testing/lookup_check.h"
#include "tests/testing/random_layer.h"
#include "transport/ucx_engine.h"

namespace engram::testing {

// Calls `read(i)` for i = 0, 1, ... on its own thread until Stop(), counting
// the calls that returned OK and those that did not (keeping the first
// error). Not copyable; Stop() (or the destructor) joins the thread.
class BackgroundReader {
 public:
  explicit BackgroundReader(std::function<absl::Status(uint32_t)> read)
      : thread_([this, read = std::move(read)] {
          for (uint32_t i = 0; !stop_; ++i) {
            absl::Status s = read(i);
            if (s.ok()) {
              ++ok_;
              continue;
            }
            ++failed_;
            std::lock_guard<std::mutex> lock(mu_);
            if (first_error_.empty()) first_error_ = s.ToString();
          }
        }) {}
  ~BackgroundReader() { Stop(); }
  BackgroundReader(const BackgroundReader&) = delete;
  BackgroundReader& operator=(const BackgroundReader&) = delete;

  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  int ok() const { return ok_; }
  int failed() const { return failed_; }
  std::string first_error() {
    std::lock_guard<std::mutex> lock(mu_);
    return first_error_;
  }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<int> ok_{0}, failed_{0};
  std::mutex mu_;
  std::string first_error_;
  std::thread thread_;  // last: starts once the counters exist
};

// Runs every case with each peer-read path named by the parameter: "gather"
// (the owner packs rows over gRPC) or "rma" (UCX one-sided reads; skipped
// when UCX is not compiled in).
class ClusterFixture : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "rma" && !transport::UcxCompiledIn()) {
      GTEST_SKIP() << "built without UCX: no rma path";
    }
  }
  void TearDown() override {
    clients_.clear();
    for (auto& s : shards_) {
      if (s != nullptr && s->Alive()) {
        EXPECT_EQ(s->Stop(), 0) << s->Log();
      }
    }
  }
  // Starts `shards` engramd processes with `flags` (plus the parameter's
  // --peer_read unless `flags` names one) and connects a client to each.
  void StartShards(int shards, int replication,
                   std::vector<std::string> flags) {
    if (std::none_of(flags.begin(), flags.end(), [](const std::string& f) {
          return f.rfind("--peer_read=", 0) == 0;
        })) {
      flags.push_back("--peer_read=" + GetParam());
    }
    auto c = StartCluster(shards, replication, flags);
    ASSERT_TRUE(c.ok()) << c.status();
    shards_ = *std::move(c);
    for (auto& s : shards_) clients_.push_back(Connect(s->address()));
  }
  static std::unique_ptr<Client> Connect(const std::string& address) {
    auto client = Client::Connect(address);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }
  std::vector<std::string> Addresses() const {
    std::vector<std::string> addresses;
    for (auto& s : shards_) addresses.push_back(s->address());
    return addresses;
  }
  // Populates layer `id` with random tables through `c`, kept for checks.
  void Populate(Client& c, int64_t id, const LayerLayout& layout) {
    tables_[id] = RandomTables(layout, static_cast<uint32_t>(id));
    layouts_[id] = layout;
    auto info = c.Populate(id, layout, Spans(tables_[id]));
    ASSERT_TRUE(info.ok()) << info.status();
  }
  // A random [batch_, length_, H] lookup of layer `id`, checked byte for byte.
  absl::Status LookupExact(Client& c, int64_t id, uint32_t seed) {
    return testing::LookupExact(c, id, layouts_[id], tables_[id], batch_,
                                length_, seed);
  }

  int64_t batch_ = 4, length_ = 3;
  std::vector<std::unique_ptr<EngramdProcess>> shards_;
  std::vector<std::unique_ptr<Client>> clients_;
  std::map<int64_t, std::vector<std::vector<uint8_t>>> tables_;
  std::map<int64_t, LayerLayout> layouts_;
};

}  // namespace engram::testing

#endif  // ENGRAM_TESTS_TESTING_CLUSTER_FIXTURE_H_
