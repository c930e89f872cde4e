// The one cache of other shards' layers attached for one-sided reads: per
// (shard, layer), what the shard's Transport call described, attached
// through this process's UCX engine. Shared by the coordinating shard's rma
// path (server/peer_rma.*) and the client's same-host direct reads
// (client/direct_reader.*), which differ only in which attachments they
// accept and in how they wait for a fetch.
#ifndef ENGRAM_CLUSTER_REMOTE_LAYERS_H_
#define ENGRAM_CLUSTER_REMOTE_LAYERS_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cluster/exported_layer.h"
#include "common/layout.h"
#include "common/mutex.h"
#include "engram/internal/v1/peer.grpc.pb.h"
#include "transport/ucx_engine.h"

namespace engram {

// Thread-safe. Borrows the engine and the stubs; the destructor waits for
// fetches still in flight.
class RemoteLayers {
 public:
  struct Options {
    // Whether an attachment is worth reading through (e.g. only mapped
    // memory, or only native RDMA/shared memory); otherwise the entry
    // remembers "use an RPC" until retry_after.
    std::function<bool(const transport::RemoteRegions&)> accept;
    std::chrono::steady_clock::duration retry_after = std::chrono::seconds(30);
    std::chrono::steady_clock::duration fetch_timeout = std::chrono::seconds(5);
    // Told what each attachment became (shard, layer, description); may be
    // empty.
    std::function<void(int, int64_t, const std::string&)> on_attach;
  };
  // What is known of one (shard, layer).
  struct Entry {
    std::shared_ptr<transport::RemoteRegions> remote;  // null: use an RPC
    std::optional<ExportedLayer> exports;              // set with remote
    std::chrono::steady_clock::time_point retry_at;    // when remote is null
    std::weak_ptr<const void> version;  // the local copy it was fetched for
    bool versioned = false;
  };
  using Row = RowCopy;  // dst: row_bytes of the layer's stored dtype

  RemoteLayers(transport::UcxEngine* engine,
               std::vector<internal::v1::EngramPeer::Stub*> stubs,
               Options options);
  ~RemoteLayers();

  // The usable entry for (shard, layer), or null when there is none yet or
  // it went stale: broken endpoint, retry time passed, or `version` (the
  // caller's copy of the layer; null: unversioned) is not the one it was
  // fetched for.
  std::shared_ptr<const Entry> Find(int shard, int64_t layer_id,
                                    const std::shared_ptr<const void>& version);
  // Asks the shard's Transport and attaches; `then` (may be empty) gets the
  // new entry, or the error (not remembered). A fetch of a key already
  // being fetched only calls `then` with FAILED_PRECONDITION.
  void Fetch(
      int shard, int64_t layer_id, int num_heads,
      std::shared_ptr<const void> version,
      std::function<void(absl::StatusOr<std::shared_ptr<const Entry>>)> then);
  // Reads `rows` through `entry` (remote must be set). FAILED_PRECONDITION
  // when a row is not exported (nothing read); other errors forget the
  // entry. `done` runs once after the last write; mapped reads finish
  // before Read returns.
  void Read(int shard, int64_t layer_id,
            const std::shared_ptr<const Entry>& entry, uint64_t row_bytes,
            std::span<const Row> rows,
            std::chrono::steady_clock::time_point deadline,
            std::function<void(absl::Status)> done);
  // Drops every entry of `layer_id`.
  void Forget(int64_t layer_id);

 private:
  using Key = std::pair<int, int64_t>;
  void Drop(const Key& key, const Entry* entry);

  transport::UcxEngine* const engine_;
  const std::vector<internal::v1::EngramPeer::Stub*> stubs_;
  const Options options_;
  Mutex mu_;
  std::condition_variable_any idle_;
  std::map<Key, std::shared_ptr<const Entry>> entries_ ABSL_GUARDED_BY(mu_);
  std::set<Key> fetching_ ABSL_GUARDED_BY(mu_);
};

}  // namespace engram

#endif  // ENGRAM_CLUSTER_REMOTE_LAYERS_H_
