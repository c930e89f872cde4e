// Process settings for moving multi-MB messages.
#ifndef ENGRAM_COMMON_MALLOC_TUNING_H_
#define ENGRAM_COMMON_MALLOC_TUNING_H_

namespace engram {

// Process-wide glibc malloc settings for multi-MB messages: by default
// every buffer over the (dynamic) mmap threshold is a fresh mmap whose pages
// fault in and are zeroed, and freed heap tops are trimmed back to the
// kernel, so each 16 MB response costs thousands of page faults on both
// ends. Keeps buffers up to 32 MiB (glibc's maximum threshold) on the heap
// and trims only above 256 MiB: 0.32 -> ~1.1 GB/s for 16.8 MB lookups on
// the build machine (bench/lookup_bench). engramd calls it at start;
// client applications moving big lookups should call it too (or set
// MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=268435456).
void TuneMallocForLargeMessages();

}  // namespace engram

#endif  // ENGRAM_COMMON_MALLOC_TUNING_H_
