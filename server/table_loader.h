// Loading layers from checkpoint files (load manifests) into this process's
// store: engramd --load at start and the Load RPC.
#ifndef ENGRAM_SERVER_TABLE_LOADER_H_
#define ENGRAM_SERVER_TABLE_LOADER_H_

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "checkpoint/layer_reader.h"
#include "checkpoint/manifest.h"
#include "common/byte_pacer.h"
#include "common/mutex.h"
#include "common/thread_pool.h"
#include "server/cluster.h"
#include "server/populate_reactor.h"
#include "server/token_hashes.h"
#include "store/layer_stager.h"
#include "store/table_files.h"

namespace engram {

// Loads manifests one at a time on a thread of its own, so that no gRPC
// reactor waits on disk. Every layer is all-or-nothing: its rows are read
// straight from the mapped checkpoint files into the staged tables (one
// copy, or one conversion), and it is committed like a Populate. In a
// cluster (`cluster` not null) only the rows this shard owns are read.
// Borrows `env` and `cluster`; both must outlive it. Thread-safe.
class TableLoader {
 public:
  using Layers = std::vector<std::shared_ptr<const Layer>>;
  using Done = std::function<void(absl::StatusOr<Layers>)>;
  // One layer's rows read into a stager, not committed.
  struct Staged {
    std::unique_ptr<LayerStager> stager;
    std::shared_ptr<Layer> layer;
    uint64_t bytes = 0;
    double seconds = 0;
    // Run with the committed layer once the coordinator commits it (a
    // peer's StageFiles: registers the manifest's model hash here too, so
    // every shard answers LookupTokens). May be empty.
    std::function<void(const std::shared_ptr<const Layer>&)> on_commit;
  };

  // `root`: the folder Load requests may read under ("" refuses them;
  // the operator's own --load manifest may be anywhere).
  // `hashes` (may be null) learns the model hash of manifests that name
  // their model, once their layers are in. Checkpoint rows are read at
  // most `max_bytes_per_second` (0: as fast as the disk goes).
  TableLoader(PopulateEnv env, ClusterContext* cluster, std::string root,
              TokenHashes* hashes = nullptr, double max_bytes_per_second = 0);
  // Cancels the load in progress (between chunks: nothing of it is kept)
  // and answers the queued ones UNAVAILABLE.
  ~TableLoader();

  // The Load RPC: a manifest path (relative to the root) or JSON text;
  // FAILED_PRECONDITION without a root. `done` runs on the loader thread.
  // In a cluster this shard coordinates: every shard stages its own rows
  // from the files (StageFiles, under its own --load_root, which must show
  // the same files) and the layer commits everywhere or nowhere.
  // Nothing is read or committed once `deadline` (the caller's) has
  // passed: DEADLINE_EXCEEDED, naming what was not loaded.
  void LoadRequested(std::string manifest_path, std::string manifest_json,
                     std::chrono::system_clock::time_point deadline, Done done);
  // --load, in two steps. First the operator's manifest (any path) is read
  // and every source checked (headers only); returns that check's error or
  // the manifest's layer ids. Then StartPreparedLoad loads the rows in the
  // background; `done` runs when they are in.
  // Layers restored from --data_dir (PrepareRestore, before) are skipped:
  // the stored version wins (a manifest layer with "replace" still loads).
  absl::StatusOr<std::set<int64_t>> PrepareStartLoad(
      const std::string& manifest_path);
  // --data_dir: scans the folder (logging every folder it refuses or
  // removes), claims each stored layer's id before the server listens and
  // returns the ids. StartPreparedLoad maps them back first (verifying
  // their checksums with `verify`); one that fails is logged, moved aside
  // and not served, and the others still load.
  absl::StatusOr<std::set<int64_t>> PrepareRestore(const std::string& dir,
                                                   bool verify);
  void StartPreparedLoad(Done done);

  // A peer's StageFiles: reads this shard's rows of `layer_id` of the
  // manifest into a stager (not committed); on a thread of its own, so a
  // coordinator's load waiting on this shard never blocks it.
  void StageForPeer(std::string manifest_path, std::string manifest_json,
                    int64_t layer_id,
                    std::function<void(absl::StatusOr<Staged>)> done);

  // Ends the load in progress at its next step and every queued one,
  // UNAVAILABLE, nothing of them kept (server shutdown).
  void Cancel() { stopping_ = true; }

  // Manifests queued or loading.
  int pending() const { return pending_.load(); }
  // The load in progress (engramctl status): what, how far.
  struct Progress {
    std::string manifest;
    int layers_total = 0;
    int layers_done = 0;
    uint64_t bytes_total = 0;  // this server's rows
    uint64_t bytes_done = 0;
    double seconds = 0;
  };
  std::optional<Progress> progress() const;
  // Row bytes read from checkpoint files since start.
  uint64_t bytes_loaded() const { return bytes_loaded_.load(); }

 private:
  // Opens every layer's reader: the whole manifest is checked before any
  // row is read, so a bad entry loads nothing.
  absl::StatusOr<std::vector<std::unique_ptr<checkpoint::LayerReader>>> OpenAll(
      const checkpoint::LoadManifest& manifest, const std::string& root) const;
  // Loads each layer in turn; stops at the first failure.
  absl::StatusOr<Layers> LoadAll(
      const std::vector<std::unique_ptr<checkpoint::LayerReader>>& readers,
      std::chrono::system_clock::time_point deadline =
          std::chrono::system_clock::time_point::max());
  absl::StatusOr<std::shared_ptr<const Layer>> LoadLayer(
      const checkpoint::LayerReader& reader,
      std::chrono::system_clock::time_point deadline);
  absl::StatusOr<Staged> StageLayer(const checkpoint::LayerReader& reader);
  absl::StatusOr<checkpoint::LoadManifest> ReadRequested(
      const std::string& path, const std::string& json) const;
  absl::StatusOr<Layers> LoadAcrossCluster(
      const checkpoint::LoadManifest& manifest, const std::string& path,
      const std::string& json, std::chrono::system_clock::time_point deadline);
  void Submit(std::function<absl::StatusOr<Layers>()> work, Done done);
  // Progress of the load starting now (on the worker), until Submit's
  // work returns.
  void BeginProgress(
      std::string manifest,
      const std::vector<std::unique_ptr<checkpoint::LayerReader>>& readers);

  const PopulateEnv env_;
  ClusterContext* const cluster_;
  const std::string root_;
  TokenHashes* const hashes_;
  std::map<int64_t, TokenHashes::Entry> start_hashes_;  // --load's model
  std::string start_manifest_;                          // --load's path
  // Restores each stored layer under its claimed id; returns those in.
  Layers RestoreAll();

  std::vector<std::unique_ptr<checkpoint::LayerReader>> start_readers_;
  struct Restore {
    StoredLayer stored;
    std::shared_ptr<PopulateTicket> ticket;
  };
  std::vector<Restore> restores_;
  std::set<int64_t> restored_ids_;
  bool verify_ = true;
  std::atomic<int> pending_{0};
  std::atomic<uint64_t> bytes_loaded_{0};
  std::atomic<bool> stopping_{false};
  BytePacer pacer_;  // every checkpoint read, all threads
  mutable Mutex progress_mu_;
  std::optional<Progress> progress_ ABSL_GUARDED_BY(progress_mu_);
  std::atomic<int> layers_done_{0};  // of the load in progress
  uint64_t progress_base_bytes_ ABSL_GUARDED_BY(progress_mu_) = 0;
  std::chrono::steady_clock::time_point progress_start_
      ABSL_GUARDED_BY(progress_mu_);
  ThreadPool worker_{1};  // last: their threads use the members above
  ThreadPool peer_worker_{1};
};

}  // namespace engram

#endif  // ENGRAM_SERVER_TABLE_LOADER_H_
