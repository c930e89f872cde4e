// Two-phase populate across the owners of a layer's row ranges, shared by
// the shard that coordinates a client's Populate and by the client library
// when it routes a Populate itself.
#ifndef ENGRAM_CLUSTER_POPULATE_FANOUT_H_
#define ENGRAM_CLUSTER_POPULATE_FANOUT_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "cluster/placement.h"
#include "common/layout.h"
#include "engram/internal/v1/peer.grpc.pb.h"

namespace engram {

// Phase one streams every shard the rows it holds (Stage, under a fresh
// transaction id); phase two commits on all shards once all prepared. Any
// failure aborts everywhere; a commit that fails somewhere removes the
// layer from every reachable shard. Blocking calls: use from a thread that
// may block (never a gRPC reactor). Not thread-safe; one populate each.
class PopulateFanout {
 public:
  // `stubs[s]` reaches shard s; `on_unreachable(s)` (may be empty) is told
  // about shards that did not answer.
  PopulateFanout(std::vector<internal::v1::EngramPeer::Stub*> stubs,
                 Placement placement, std::function<void(int)> on_unreachable,
                 std::chrono::seconds stage_timeout = std::chrono::hours(2));
  ~PopulateFanout();  // aborts if neither Commit succeeded nor Abort ran

  // Validates the layout and opens a Stage stream to every shard. With
  // `replace`, every shard swaps out its committed copy of the id at commit
  // (each shard at its own commit: during the commit round a lookup may
  // combine old rows of one shard with new rows of another).
  absl::Status Begin(int64_t layer_id, const LayerLayout& layout,
                     bool replace = false);
  // For a fan-out whose phase one the shards do themselves (a cluster Load:
  // each shard stages its rows from files under the returned transaction
  // id); Commit then runs phase two only, Abort drops it everywhere.
  // UNAVAILABLE when a shard cannot be reached.
  absl::StatusOr<std::string> BeginPrepared(int64_t layer_id, bool replace);
  // Validates whole rows of `head` from `row_offset`, and sends each
  // owner (R copies) its part.
  absl::Status AddChunk(int64_t head, int64_t row_offset,
                        std::string_view data);
  // Ends phase one (every shard must report all its rows) and commits.
  absl::Status Commit();
  // Cancels the streams and drops the transaction everywhere.
  void Abort();

  const std::string& txn_id() const { return txn_id_; }

 private:
  struct PeerStream;
  absl::Status PeerFailure(int shard);
  absl::Status ReachAll();
  void RollBack();

  std::vector<internal::v1::EngramPeer::Stub*> stubs_;
  const Placement placement_;
  std::function<void(int)> on_unreachable_;
  const std::chrono::seconds stage_timeout_;
  std::string txn_id_;
  int64_t layer_id_ = 0;
  bool replace_ = false;
  LayerLayout layout_;
  std::vector<std::unique_ptr<PeerStream>> peers_;
  bool finished_ = false;
};

}  // namespace engram

#endif  // ENGRAM_CLUSTER_POPULATE_FANOUT_H_
