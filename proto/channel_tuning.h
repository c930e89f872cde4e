// gRPC channel / server arguments that make large lookups fast: the largest
// HTTP/2 frames, wide flow-control windows, large TCP reads. Shared by
// engramd, the client and the benchmarks' echo server so that comparisons
// run with equal settings.
#ifndef ENGRAM_PROTO_CHANNEL_TUNING_H_
#define ENGRAM_PROTO_CHANNEL_TUNING_H_

#include <grpcpp/grpcpp.h>

namespace engram {

void ApplyTransportTuning(grpc::ServerBuilder* builder);
grpc::ChannelArguments TunedChannelArguments();

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

#endif  // ENGRAM_PROTO_CHANNEL_TUNING_H_
