#include "checkpoint/npy.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

namespace engram::checkpoint {
namespace {

TEST(NpyTest, WriteThenReadRoundTrips) {
  const std::string path = "/tmp/npy_test_" + std::to_string(getpid()) + ".npy";
  std::vector<float> values = {1, 2, 3, 4, 5, 6};
  ASSERT_TRUE(WriteNpy(path, "<f4", {2, 3}, values.data(), 24).ok());
  auto a = ReadNpy(path);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->descr, "<f4");
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a->item_size, 4u);
  EXPECT_EQ(0, std::memcmp(a->data.data(), values.data(), 24));
  unlink(path.c_str());
}

TEST(NpyTest, RejectsWhatItCannotRead) {
  EXPECT_EQ(ReadNpy("/nonexistent/x.npy").status().code(),
            absl::StatusCode::kNotFound);
  const std::string path = "/tmp/npy_bad_" + std::to_string(getpid()) + ".npy";
  { std::ofstream(path) << "not numpy"; }
  EXPECT_EQ(ReadNpy(path).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<int64_t> v = {1, 2};
  ASSERT_TRUE(WriteNpy(path, ">i8", {2}, v.data(), 16).ok());
  EXPECT_EQ(ReadNpy(path).status().code(), absl::StatusCode::kInvalidArgument);
  unlink(path.c_str());
}

// A small file whose header claims a huge (or overflowing) shape is refused
// before anything is allocated (engramctl used to die of bad_alloc).
TEST(NpyTest, HugeClaimedShapesAreRefusedWithoutAllocating) {
  const std::string path = "/tmp/npy_huge_" + std::to_string(getpid()) + ".npy";
  std::vector<float> v(4, 1.0f);
  for (const std::vector<int64_t>& shape : std::vector<std::vector<int64_t>>{
           {1000000000, 1000000}, {int64_t{1} << 62, 16}, {5}}) {
    // Writes the header for `shape` but only 16 bytes of data.
    ASSERT_TRUE(WriteNpy(path, "<f4", shape, v.data(), 16).ok());
    auto read = ReadNpy(path);
    EXPECT_EQ(read.status().code(), absl::StatusCode::kInvalidArgument)
        << read.status();
  }
  unlink(path.c_str());
}

// Found by fuzz/npy_fuzz: a 0-d array (shape ()) claims one item, and a
// file shorter than that item was read past its end.
TEST(NpyTest, AZeroDimensionalArrayLongerThanTheFileIsRefused) {
  const std::string path = "/tmp/npy_0d_" + std::to_string(getpid()) + ".npy";
  const double value = 1.5;
  ASSERT_TRUE(WriteNpy(path, "<f8", {}, &value, 4).ok());  // half an item
  EXPECT_EQ(ReadNpy(path).status().code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(WriteNpy(path, "<f8", {}, &value, 8).ok());
  auto whole = ReadNpy(path);
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(whole->data.size(), 8u);
  unlink(path.c_str());
}

}  // namespace
}  // namespace engram::checkpoint
