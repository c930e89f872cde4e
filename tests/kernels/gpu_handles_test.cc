// The owning handles of kernels/gpu_handles.h: each frees what it owns
// exactly once, on destruction, reset or move-assignment, and never a null;
// an allocation's error passes through. The device cases run where there is
// a GPU and check the failure path where there is none.
#include "kernels/gpu_handles.h"

#include <gtest/gtest.h>

#include <utility>
#include <vector>

namespace engram {
namespace {

std::vector<const void*>* freed = nullptr;
void RecordFree(void* p) { freed->push_back(p); }
using Recorded = std::unique_ptr<int, gpu::FreeWith<&RecordFree>>;

class GpuHandlesTest : public ::testing::Test {
 protected:
  void SetUp() override { freed = &freed_; }
  void TearDown() override { freed = nullptr; }
  std::vector<const void*> freed_;
  int a_ = 0, b_ = 0;
};

TEST_F(GpuHandlesTest, FreesOnceWhenDestroyed) {
  { Recorded h(&a_); }
  EXPECT_EQ(freed_, std::vector<const void*>{&a_});
}

TEST_F(GpuHandlesTest, NeverFreesNull) {
  { Recorded h; }
  Recorded h(&a_);
  h.reset();
  h.reset();
  EXPECT_EQ(freed_, std::vector<const void*>{&a_});
}

TEST_F(GpuHandlesTest, MovingHandsOverWithoutFreeing) {
  Recorded first(&a_);
  Recorded second(std::move(first));
  EXPECT_TRUE(freed_.empty());
  Recorded third(&b_);
  third = std::move(second);  // b_ is freed, a_ now owned by `third`
  EXPECT_EQ(freed_, std::vector<const void*>{&b_});
  third.reset();
  EXPECT_EQ(freed_, (std::vector<const void*>{&b_, &a_}));
}

TEST_F(GpuHandlesTest, ClearingAVectorFreesEachOnce) {
  std::vector<Recorded> handles;
  handles.emplace_back(&a_);
  handles.emplace_back(&b_);
  handles.reserve(64);  // moved into new storage: nothing freed
  EXPECT_TRUE(freed_.empty());
  handles.clear();
  ASSERT_EQ(freed_.size(), 2u);
}

TEST_F(GpuHandlesTest, OwnPassesAnErrorThrough) {
  absl::StatusOr<Recorded> h =
      gpu::Own<Recorded>(absl::StatusOr<void*>(absl::InternalError("boom")));
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().message(), "boom");
  absl::StatusOr<Recorded> owned =
      gpu::Own<Recorded>(absl::StatusOr<void*>(&a_));
  ASSERT_TRUE(owned.ok());
  EXPECT_EQ(owned->get(), &a_);
  owned = absl::InternalError("dropped");  // the handle it held frees
  EXPECT_EQ(freed_, std::vector<const void*>{&a_});
}

TEST(GpuHandlesDeviceTest, AllocatesOnADeviceAndFailsCleanlyWithout) {
  std::string why;
  const bool have_device = gpu::DeviceCount(&why) > 0;
  if (have_device) {
    ASSERT_TRUE(gpu::SetDevice(0).ok());
  }
  absl::StatusOr<gpu::DeviceMemory<int64_t>> device =
      gpu::NewDeviceMemory<int64_t>(1024);
  absl::StatusOr<gpu::PinnedMemory<int64_t>> pinned =
      gpu::NewPinnedMemory<int64_t>(1024);
  absl::StatusOr<gpu::StreamHandle> stream = gpu::NewStream();
  absl::StatusOr<gpu::EventHandle> event = gpu::NewEvent();
  if (!have_device) {
    EXPECT_FALSE(device.ok());
    EXPECT_FALSE(pinned.ok());
    EXPECT_FALSE(stream.ok());
    EXPECT_FALSE(event.ok());
    return;
  }
  ASSERT_TRUE(device.ok()) << device.status();
  ASSERT_TRUE(pinned.ok()) << pinned.status();
  ASSERT_TRUE(stream.ok()) << stream.status();
  ASSERT_TRUE(event.ok()) << event.status();
  for (int i = 0; i < 128; ++i) pinned->get()[i] = i * 7;
  ASSERT_TRUE(
      gpu::CopyToDeviceAsync(device->get(), pinned->get(), 1024, stream->get())
          .ok());
  std::vector<int64_t> back(128, -1);
  ASSERT_TRUE(gpu::StreamSynchronize(stream->get()).ok());
  ASSERT_TRUE(gpu::CopyToHost(back.data(), device->get(), 1024).ok());
  for (int i = 0; i < 128; ++i) ASSERT_EQ(back[i], i * 7);
  ASSERT_TRUE(gpu::EventRecord(event->get(), stream->get()).ok());
  ASSERT_TRUE(gpu::StreamSynchronize(stream->get()).ok());
  EXPECT_TRUE(gpu::EventDone(event->get()));
}

}  // namespace
}  // namespace engram
