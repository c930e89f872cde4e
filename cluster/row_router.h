// The one cluster read path: splits a lookup's rows by owning shard, asks
// each shard through a ShardReader, fails over across replicas, and lands
// every row in the caller's buffer (converting dtypes there). The
// coordinating shard (server/cluster_coordinator.cc) and the cluster client
// (client/cluster_router.cc) both read through it; they differ only in
// their readers (rma / gather RPC / same-host direct reads) and in where
// shard liveness comes from.
#ifndef ENGRAM_CLUSTER_ROW_ROUTER_H_
#define ENGRAM_CLUSTER_ROW_ROUTER_H_

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "cluster/placement.h"
#include "common/layout.h"
#include "common/lookup_plan.h"

namespace engram {

// The rows one shard is asked for, and where each lands. Immutable while a
// reader uses it; readers may be called from any thread.
class ShardRead {
 public:
  ShardRead(int64_t layer_id, const LayerLayout* layout, RowIds ids,
            std::vector<int64_t> positions, DType out_dtype, uint8_t* out,
            uint64_t token_model = 0);

  int64_t layer_id() const { return layer_id_; }
  const LayerLayout& layout() const { return *layout_; }
  // Non-zero: the ids were hashed with this token model; only a shard
  // whose layer still has it may answer (GatherRequest.token_model).
  uint64_t token_model() const { return token_model_; }
  size_t size() const { return positions_.size(); }
  int head(size_t j) const {
    return static_cast<int>(ids_.head(positions_[j], layout_->num_heads()));
  }
  int64_t row(size_t j) const { return ids_.rows[positions_[j]]; }
  int64_t position(size_t j) const { return positions_[j]; }
  const std::vector<int64_t>& positions() const { return positions_; }
  // Where row j's stored bytes may be written directly, or nullptr when
  // the caller asked for another dtype (then use Put).
  uint8_t* dst(size_t j) const {
    return plan_.converts() ? nullptr
                            : out_ + positions_[j] * plan_.out_row_bytes;
  }
  // Lands row j from its stored bytes (converting when asked).
  void Put(size_t j, const uint8_t* stored_row) const;

 private:
  const int64_t layer_id_;
  const LayerLayout* const layout_;
  const RowIds ids_;
  const std::vector<int64_t> positions_;
  uint8_t* const out_;
  const uint64_t token_model_;
  const LookupPlan plan_;  // the row op
};

// Reads rows of one shard (rma, a gather RPC, direct reads, ...).
class ShardReader {
 public:
  virtual ~ShardReader() = default;
  // Fills every row of `read` from `shard` (dst or Put), then runs `done`
  // once, on any thread, after the last write. `read` outlives `done`.
  // NOT_FOUND / FAILED_PRECONDITION: the shard lacks the layer or has
  // another layout of it; other errors: try another replica.
  virtual void Read(int shard, const ShardRead& read,
                    std::function<void(absl::Status)> done) = 0;
};

// Which shards answer. Thread-safe implementations.
class ShardStates {
 public:
  virtual ~ShardStates() = default;
  virtual bool up(int shard) const = 0;
  virtual void MarkDown(int shard) = 0;
  // "shard 2 (host:port)", for error messages.
  virtual std::string Name(int shard) const = 0;
};

// One rule for every reader of the cluster: a shard that answers
// UNAVAILABLE or DEADLINE_EXCEEDED is marked down; every error but
// NOT_FOUND / FAILED_PRECONDITION moves the rows to the next replica of
// their range; NOT_FOUND / FAILED_PRECONDITION end the lookup NOT_FOUND
// (the layer is being removed, populated, or was populated again with
// another layout: another owner would say the same). No owner left:
// UNAVAILABLE naming the shards. Borrows `placement` and `states`;
// thread-safe.
class RowRouter {
 public:
  RowRouter(const Placement* placement, ShardStates* states,
            std::function<void()> on_failover = nullptr);

  struct Lookup {
    int64_t layer_id = 0;
    const LayerLayout* layout = nullptr;
    std::shared_ptr<const void> keep_alive;  // holds layout (and more)
    const int64_t* ids = nullptr;
    const int32_t* heads = nullptr;  // null: head = index mod H
    // Indexes into ids to read (the others are the caller's business).
    std::vector<int64_t> positions;
    DType out_dtype = DType::kFloat32;
    uint8_t* out = nullptr;  // [n, D] of out_dtype, indexed by position
    std::shared_ptr<ShardReader> reader;
    int skip_shard = -1;       // never asked (a shard that lacks its rows)
    uint64_t token_model = 0;  // ShardRead::token_model
  };
  // `done` runs once, on any thread, after no row is written any more.
  void Read(Lookup lookup, std::function<void(absl::Status)> done);

 private:
  struct Flight;
  const Placement* const placement_;
  ShardStates* const states_;
  const std::function<void()> on_failover_;
};

// The gather path shared by shard and client: one raw peer Gather call to
// `stub` for `read`, each returned row landed once from the received
// slices. `done` runs once on a gRPC thread.
void GatherRowsRpc(grpc::GenericStub* stub,
                   std::chrono::system_clock::time_point deadline,
                   const ShardRead& read,
                   std::function<void(absl::Status)> done);

}  // namespace engram

#endif  // ENGRAM_CLUSTER_ROW_ROUTER_H_
