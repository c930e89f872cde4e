// DeviceVersions (the version lifecycle of device lookups) against a fake
// device: which view the slot shows, when retired views close, when the
// server hears a release, retries of failed publishes, and leases of a
// version sent twice. Runs without a GPU.
#include "client/device_versions.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <thread>

namespace engram {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::Pair;

// Records what the lifecycle asks of the device. Views name their version
// (0 for a layer's absence) and log their closing; Publish fails while
// `fail` is set. Thread-safe enough for the tests: one lock for all.
class FakeDevice : public DeviceVersions::Device {
 public:
  struct Log {
    Mutex mu;
    std::vector<uint64_t> published ABSL_GUARDED_BY(mu);  // in slot order
    std::vector<uint64_t> closed ABSL_GUARDED_BY(mu);
    int synchronizes ABSL_GUARDED_BY(mu) = 0;
  };
  class FakeView : public DeviceVersions::View {
   public:
    FakeView(Log* log, uint64_t version) : log_(log), version_(version) {}
    ~FakeView() override {
      MutexLock lock(&log_->mu);
      log_->closed.push_back(version_);
    }

   private:
    Log* const log_;
    const uint64_t version_;
  };

  DeviceVersions::Published Publish(const MappingUpdate& u) override {
    DeviceVersions::Published p;
    if (fail) {
      p.error = absl::InternalError("capture in progress");
      return p;
    }
    const bool present = u.state == MappingUpdate::kPresent;
    const uint64_t version = present ? u.mapped->version : 0;
    p.path = present && !rpc_only ? DevicePath::kGpuShared : DevicePath::kRpc;
    p.view = std::make_unique<FakeView>(&log, version);
    MutexLock lock(&log.mu);
    log.published.push_back(version);
    return p;
  }
  void Close(
      std::vector<std::unique_ptr<DeviceVersions::View>> views) override {
    {
      MutexLock lock(&log.mu);
      ++log.synchronizes;  // before any view of them closes
    }
    views.clear();
  }

  std::vector<uint64_t> published() {
    MutexLock lock(&log.mu);
    return log.published;
  }
  std::vector<uint64_t> closed() {
    MutexLock lock(&log.mu);
    return log.closed;
  }

  std::atomic<bool> fail{false};
  std::atomic<bool> rpc_only{false};
  Log log;
};

MappingUpdate Present(uint64_t version, int64_t rows = 16) {
  auto v = std::make_shared<MappedVersion>();
  v->version = version;
  v->layout.table_vocab_sizes = {rows, rows};
  v->layout.embedding_dim = 4;
  v->layout.dtype = DType::kFloat32;
  MappingUpdate u;
  u.state = MappingUpdate::kPresent;
  u.mapped = std::move(v);
  return u;
}

MappingUpdate Removed() {
  MappingUpdate u;
  u.state = MappingUpdate::kNotFound;
  u.why = absl::NotFoundError("layer 3 was removed");
  return u;
}

class DeviceVersionsTest : public ::testing::Test {
 protected:
  std::vector<uint64_t> released() {
    MutexLock lock(&mu_);
    return released_;
  }

  FakeDevice device_;
  Mutex mu_;
  std::vector<uint64_t> released_ ABSL_GUARDED_BY(mu_);
  // A grace long enough that only RetireDue(true) or a wait retires.
  DeviceVersions versions_{&device_,
                           [this](uint64_t v) {
                             MutexLock lock(&mu_);
                             released_.push_back(v);
                           },
                           std::chrono::milliseconds(200)};
};

TEST_F(DeviceVersionsTest, AReplacedVersionClosesAfterItsGraceThenIsReleased) {
  versions_.Apply(Present(1));
  ASSERT_TRUE(versions_.WaitReady(absl::Seconds(1)));
  EXPECT_EQ(versions_.Now().path, DevicePath::kGpuShared);
  EXPECT_EQ(versions_.Now().layout->num_heads(), 2);
  versions_.Apply(Present(2, 32));
  EXPECT_EQ(versions_.Now().layout->table_vocab_sizes[0], 32);
  EXPECT_THAT(device_.published(), ElementsAre(1, 2));
  // Within the grace: version 1 stays mapped and leased.
  versions_.RetireDue(false);
  EXPECT_THAT(device_.closed(), IsEmpty());
  EXPECT_THAT(released(), IsEmpty());
  EXPECT_THAT(versions_.leases(), ElementsAre(Pair(1, 1), Pair(2, 1)));
  std::this_thread::sleep_for(std::chrono::milliseconds(250));
  versions_.RetireDue(false);
  EXPECT_THAT(device_.closed(), ElementsAre(1));
  EXPECT_THAT(released(), ElementsAre(1));
  EXPECT_THAT(versions_.leases(), ElementsAre(Pair(2, 1)));
}

TEST_F(DeviceVersionsTest, AVersionReadOverRpcIsReleasedOncePublished) {
  device_.rpc_only = true;
  versions_.Apply(Present(4));
  EXPECT_EQ(versions_.Now().path, DevicePath::kRpc);
  EXPECT_TRUE(versions_.Now().known);
  EXPECT_THAT(released(), ElementsAre(4));
  EXPECT_THAT(versions_.leases(), IsEmpty());
  // Its view (saying "unavailable") retires like any other, no second
  // release.
  versions_.Apply(Present(5));
  versions_.RetireDue(true);
  EXPECT_THAT(released(), ElementsAre(4, 5));
}

TEST_F(DeviceVersionsTest, AFailedPublishKeepsTheCurrentViewAndIsRetried) {
  versions_.Apply(Present(1));
  device_.fail = true;
  versions_.Apply(Present(2));
  // The slot still shows 1; lookups go through the RPC path meanwhile.
  EXPECT_EQ(versions_.Now().path, DevicePath::kRpc);
  EXPECT_THAT(versions_.note(), ::testing::HasSubstr("capture in progress"));
  EXPECT_THAT(device_.published(), ElementsAre(1));
  EXPECT_THAT(versions_.leases(), ElementsAre(Pair(1, 1), Pair(2, 1)));
  versions_.RetryPending();  // still failing
  EXPECT_THAT(device_.published(), ElementsAre(1));
  device_.fail = false;
  versions_.RetryPending();
  EXPECT_THAT(device_.published(), ElementsAre(1, 2));
  EXPECT_EQ(versions_.Now().path, DevicePath::kGpuShared);
  versions_.RetryPending();  // nothing left to retry
  EXPECT_THAT(device_.published(), ElementsAre(1, 2));
  versions_.RetireDue(true);
  EXPECT_THAT(released(), ElementsAre(1));
}

TEST_F(DeviceVersionsTest, ALaterUpdateSupersedesAWaitingRetry) {
  versions_.Apply(Present(1));
  device_.fail = true;
  versions_.Apply(Present(2));
  device_.fail = false;
  versions_.Apply(Present(3));
  // 2 was never published: released at once, never retried.
  EXPECT_THAT(released(), ElementsAre(2));
  versions_.RetryPending();
  EXPECT_THAT(device_.published(), ElementsAre(1, 3));
  versions_.RetireDue(true);
  EXPECT_THAT(released(), ElementsAre(2, 1));
  EXPECT_THAT(versions_.leases(), ElementsAre(Pair(3, 1)));
}

// Before the split, a version sent again (a WatchLayer stream that broke
// and reconnected re-sends the current one) was released when its first
// view retired, while its second view still read it.
TEST_F(DeviceVersionsTest, AVersionSentTwiceIsReleasedOnlyWhenNoViewReadsIt) {
  versions_.Apply(Present(7));
  versions_.Apply(Present(7));
  versions_.RetireDue(true);
  EXPECT_THAT(device_.closed(), ElementsAre(7));  // the first view
  EXPECT_THAT(released(), IsEmpty());
  EXPECT_THAT(versions_.leases(), ElementsAre(Pair(7, 1)));
  versions_.Apply(Present(8));
  versions_.RetireDue(true);
  EXPECT_THAT(released(), ElementsAre(7));
}

TEST_F(DeviceVersionsTest, ARemovedLayerIsPublishedAsRemoved) {
  versions_.Apply(Present(1));
  versions_.Apply(Removed());
  const DeviceVersions::Current c = versions_.Now();
  EXPECT_EQ(c.state, MappingUpdate::kNotFound);
  EXPECT_FALSE(c.known);
  EXPECT_EQ(c.why.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(device_.published(), ElementsAre(1, 0));
  versions_.RetireDue(true);
  EXPECT_THAT(released(), ElementsAre(1));
}

TEST_F(DeviceVersionsTest,
       CloseAllSynchronizesClosesEverythingReleasesNothing) {
  versions_.Apply(Present(1));
  versions_.Apply(Present(2));
  device_.fail = true;
  versions_.Apply(Present(3));  // waiting for a retry
  versions_.CloseAll();
  EXPECT_THAT(device_.closed(), ::testing::UnorderedElementsAre(1, 2));
  EXPECT_THAT(released(), IsEmpty());  // the watch's end releases them
  EXPECT_THAT(versions_.leases(), IsEmpty());
  // Nothing applies after the close.
  device_.fail = false;
  versions_.RetryPending();
  versions_.Apply(Present(4));
  EXPECT_THAT(device_.published(), ElementsAre(1, 2));
}

TEST_F(DeviceVersionsTest, RetiredViewsCloseOnlyAfterTheDeviceSynchronizes) {
  versions_.Apply(Present(1));
  versions_.Apply(Present(2));
  versions_.Apply(Present(3));
  versions_.RetireDue(true);
  MutexLock lock(&device_.log.mu);
  EXPECT_EQ(device_.log.synchronizes, 1);  // one for both
  EXPECT_THAT(device_.log.closed, ElementsAre(1, 2));
}

// Updates from the watch thread while the janitor retries and retires:
// every lease taken is given back once, and the slot's last view is the
// last update's.
TEST_F(DeviceVersionsTest, ConcurrentUpdatesRetriesAndRetiresKeepLeasesExact) {
  std::atomic<bool> done{false};
  std::thread janitor([&] {
    while (!done) {
      versions_.RetryPending();
      versions_.RetireDue(true);
    }
  });
  for (uint64_t v = 1; v <= 400; ++v) {
    device_.fail = v % 7 == 3;
    versions_.Apply(Present(v));
  }
  device_.fail = false;
  done = true;
  janitor.join();
  versions_.RetryPending();
  versions_.RetireDue(true);
  EXPECT_EQ(device_.published().back(), 400u);
  EXPECT_THAT(versions_.leases(), ElementsAre(Pair(400, 1)));
  std::vector<uint64_t> r = released();
  std::sort(r.begin(), r.end());
  std::vector<uint64_t> expected;
  for (uint64_t v = 1; v < 400; ++v) expected.push_back(v);
  EXPECT_EQ(r, expected);
}

}  // namespace
}  // namespace engram
