// TuneMallocForLargeMessages must really change glibc's behaviour: a 16 MiB
// message buffer then comes from the heap, not a fresh mmap. (Its body once
// compiled to nothing when the file stopped including a libc header before
// testing __GLIBC__; lookup_bench lost 4x on big lookups.)
#include "common/malloc_tuning.h"

#include <gtest/gtest.h>
#include <malloc.h>

#include <cstdlib>
#include <cstring>

namespace engram {
namespace {

TEST(MallocTuningTest, SixteenMegabyteBuffersStayOnTheHeap) {
#if defined(__GLIBC__)
  TuneMallocForLargeMessages();
  const size_t mapped_before = mallinfo2().hblks;
  void* buffer = std::malloc(size_t{16} << 20);
  ASSERT_NE(buffer, nullptr);
  std::memset(buffer, 1, 4096);
  EXPECT_EQ(mallinfo2().hblks, mapped_before)
      << "the 16 MiB buffer was mmapped: the tuning did not apply";
  std::free(buffer);
#else
  GTEST_SKIP() << "glibc only";
#endif
}

}  // namespace
}  // namespace engram
