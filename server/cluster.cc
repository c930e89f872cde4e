#include "server/cluster.h"

#include <grpcpp/generic/generic_stub.h>

#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "proto/channel_tuning.h"
#include "server/log.h"

namespace engram {
namespace {

constexpr auto kProbeInterval = std::chrono::milliseconds(500);
constexpr auto kProbeTimeout = std::chrono::milliseconds(400);

// grpc.health.v1 Check of the server as a whole; true when SERVING or
// NOT_SERVING (the process answers; NOT_SERVING may only mean that it sees
// a range unreachable itself).
bool Answers(grpc::Channel* channel) {
  grpc::health::v1::Health::Stub stub(
      std::shared_ptr<grpc::Channel>(channel, [](auto*) {}));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kProbeTimeout);
  grpc::health::v1::HealthCheckResponse response;
  return stub.Check(&context, grpc::health::v1::HealthCheckRequest(), &response)
      .ok();
}

}  // namespace

ClusterContext::ClusterContext(int shard_index, std::vector<std::string> peers,
                               Placement placement,
                               double staged_timeout_seconds,
                               const ChannelSecurity& security)
    : shard_index_(shard_index),
      peers_(std::move(peers)),
      placement_(placement),
      staged_timeout_seconds_(staged_timeout_seconds),
      up_(new std::atomic<bool>[peers_.size()]) {
  for (size_t s = 0; s < peers_.size(); ++s) {
    grpc::ChannelArguments args = TunedChannelArguments();
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    SetReconnectBackoff(kServerReconnect, &args);
    // A connect attempt to a restarted peer is not held to gRPC's 20 s.
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS,
                static_cast<int>(kServerReconnect.initial.count()));
    channels_.push_back(*CreateSecureChannel(peers_[s], security, args));
    stubs_.push_back(internal::v1::EngramPeer::NewStub(channels_.back()));
    // Row data goes over several connections per peer: one HTTP/2
    // connection carrying every concurrent lookup's rows is a bottleneck.
    generic_stubs_.emplace_back();
    for (int c = 0; c < kDataConnections; ++c) {
      grpc::ChannelArguments data_args = args;
      data_args.SetInt("engram.connection_index", c);
      generic_stubs_.back().push_back(std::make_unique<grpc::GenericStub>(
          *CreateSecureChannel(peers_[s], security, data_args)));
    }
    up_[s].store(false, std::memory_order_relaxed);  // until a probe answers
  }
}

ClusterContext::~ClusterContext() { StopProber(); }

void ClusterContext::StopProber() { prober_.Stop(); }

int ClusterContext::peers_up() const {
  int n = 0;
  for (int s = 0; s < size(); ++s) n += up(s) ? 1 : 0;
  return n;
}

bool ClusterContext::SomeRangeUnreachable() const {
  const int r = placement_.replication();
  for (int start = 0; start < size(); ++start) {
    bool all_down = true;
    for (int i = 0; i < r && all_down; ++i)
      all_down = !up((start + i) % size());
    if (all_down) return true;
  }
  return false;
}

void ClusterContext::StartProber(std::function<void()> on_round) {
  on_change_ = std::move(on_round);
  prober_.Start(kProbeInterval, PeriodicThread::First::kAtOnce,
                [this](const std::stop_token&) {
                  ProbeRound();
                  return true;
                });
}

void ClusterContext::ProbeRound() {
  for (int s = 0; s < size(); ++s) {
    if (s == shard_index_) continue;
    const bool now = Answers(channels_[s].get());
    const bool before = up_[s].exchange(now, std::memory_order_relaxed);
    if (now != before) {
      LogInfo(absl::StrCat("shard ", s, " (", peers_[s], ") is ",
                           now ? "up" : "down"));
    }
  }
  // Every round: lookups may have marked peers down in between.
  if (on_change_) on_change_();
}

}  // namespace engram
