// gRPC channel / server arguments that make large lookups fast: the largest
// HTTP/2 frames, wide flow-control windows, large TCP reads. Shared by
// engramd, the client and the benchmarks' echo server so that comparisons
// run with equal settings.
#ifndef ENGRAM_PROTO_CHANNEL_TUNING_H_
#define ENGRAM_PROTO_CHANNEL_TUNING_H_

#include <grpcpp/grpcpp.h>

#include "common/backoff.h"

namespace engram {

void ApplyTransportTuning(grpc::ServerBuilder* builder);
grpc::ChannelArguments TunedChannelArguments();
// A channel reconnects after a lost connection on `policy`'s waits (gRPC
// adds its jitter).
void SetReconnectBackoff(const BackoffPolicy& policy,
                         grpc::ChannelArguments* args);
}  // namespace engram

#endif  // ENGRAM_PROTO_CHANNEL_TUNING_H_
