// What a shard knows about its cluster: placement, a stub per shard, and
// which shards answer.
#ifndef ENGRAM_SERVER_CLUSTER_H_
#define ENGRAM_SERVER_CLUSTER_H_

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cluster/placement.h"
#include "common/periodic_thread.h"
#include "engram/internal/v1/peer.grpc.pb.h"
#include "proto/channel_security.h"
#include "store/table_files.h"

namespace engram {

// Owns the peer channels and a prober thread that checks every other
// shard's health every 500 ms and marks it up or down (calls that fail mark
// a peer down at once). Peers count as down until first probed. Thread-safe.
class ClusterContext {
 public:
  // `security`: how this shard's channels to the others authenticate
  // (checked by the caller: ChannelCredentials(security) must be OK).
  ClusterContext(int shard_index, std::vector<std::string> peers,
                 Placement placement, double staged_timeout_seconds,
                 const ChannelSecurity& security = {});
  ~ClusterContext();

  int self() const { return shard_index_; }
  // This shard's place, as --data_dir folders record it.
  ShardShape shape() const {
    return {static_cast<uint32_t>(placement_.num_shards()),
            static_cast<uint32_t>(placement_.replication()),
            static_cast<uint32_t>(shard_index_)};
  }
  // The rows of each head of `layout` this shard holds.
  std::vector<std::vector<RowRange>> OwnedRanges(
      int64_t layer_id, const LayerLayout& layout) const {
    std::vector<std::vector<RowRange>> owned(layout.num_heads());
    for (int h = 0; h < layout.num_heads(); ++h) {
      owned[h] = placement_.OwnedRanges(
          layer_id, h, layout.table_vocab_sizes[h], shard_index_);
    }
    return owned;
  }
  int size() const { return static_cast<int>(peers_.size()); }
  const Placement& placement() const { return placement_; }
  const std::string& address(int shard) const { return peers_[shard]; }
  internal::v1::EngramPeer::Stub* stub(int shard) {
    return stubs_[shard].get();
  }
  // The control channel to `shard` (for the public API, e.g. ListLayers).
  const std::shared_ptr<grpc::Channel>& channel(int shard) {
    return channels_[shard];
  }
  // Raw (ByteBuffer) calls carrying rows; round-robin over the peer's
  // data connections.
  grpc::GenericStub* generic_stub(int shard) {
    const unsigned i = next_data_.fetch_add(1, std::memory_order_relaxed);
    return generic_stubs_[shard][i % kDataConnections].get();
  }
  double staged_timeout_seconds() const { return staged_timeout_seconds_; }

  bool up(int shard) const {
    return shard == shard_index_ || up_[shard].load(std::memory_order_relaxed);
  }
  void MarkDown(int shard) {
    if (shard != shard_index_)
      up_[shard].store(false, std::memory_order_relaxed);
  }
  int peers_up() const;
  // True when some R consecutive shards are all down: their common ranges
  // have no owner left.
  bool SomeRangeUnreachable() const;

  // Starts probing; `on_round` runs on the prober thread after every round
  // (to re-derive health from the peers' state).
  void StartProber(std::function<void()> on_round);
  // Stops and joins the prober (idempotent); the stubs stay usable.
  void StopProber();

 private:
  void ProbeRound();

  const int shard_index_;
  const std::vector<std::string> peers_;
  const Placement placement_;
  const double staged_timeout_seconds_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::vector<std::unique_ptr<internal::v1::EngramPeer::Stub>> stubs_;
  static constexpr int kDataConnections = 4;
  std::vector<std::vector<std::unique_ptr<grpc::GenericStub>>> generic_stubs_;
  std::atomic<unsigned> next_data_{0};
  std::unique_ptr<std::atomic<bool>[]> up_;
  std::function<void()> on_change_;
  PeriodicThread prober_;  // ProbeRound every 500 ms
};

}  // namespace engram

#endif  // ENGRAM_SERVER_CLUSTER_H_
