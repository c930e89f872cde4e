#include "proto/channel_tuning.h"

namespace engram {
namespace {

// 16 MiB - 1: the largest HTTP/2 frame the protocol allows.
constexpr int kMaxFrameSize = (1 << 24) - 1;
constexpr int kLookaheadBytes = 64 << 20;
// Reads may grow to 4 MiB on busy connections. The initial read target is
// left at gRPC's default (8 KiB): a 4 MiB initial target cost every idle
// connection ~290 KB of RSS (25 KB now; hardening_test measures it).
constexpr int kTcpReadChunk = 4 << 20;

template <typename Args>
void Tune(Args* args) {
  args->SetInt(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, kMaxFrameSize);
  args->SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, kLookaheadBytes);
  args->SetInt(GRPC_ARG_TCP_MAX_READ_CHUNK_SIZE, kTcpReadChunk);
  args->SetInt(GRPC_ARG_HTTP2_WRITE_BUFFER_SIZE, kTcpReadChunk);
}

// ServerBuilder takes arguments one at a time; adapt it to Tune().
struct BuilderArgs {
  grpc::ServerBuilder* builder;
  void SetInt(const char* key, int value) {
    builder->AddChannelArgument(key, value);
  }
};

}  // namespace

void ApplyTransportTuning(grpc::ServerBuilder* builder) {
  BuilderArgs args{builder};
  Tune(&args);
}

grpc::ChannelArguments TunedChannelArguments() {
  grpc::ChannelArguments args;
  Tune(&args);
  return args;
}

void SetReconnectBackoff(const BackoffPolicy& policy,
                         grpc::ChannelArguments* args) {
  const int initial = static_cast<int>(policy.initial.count());
  args->SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, initial);
  args->SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
               static_cast<int>(policy.max.count()));
}

}  // namespace engram
