// Durable tables (--data_dir): a committed layer is a folder of files that
// are also its memory. DIR/layer-<id>.v<version>/ holds head-<h>.bin (head
// h's table, row-major, mapped shared) and meta (layout, version, sizes and
// a checksum per head, itself checksummed). Populate writes rows straight
// into the mapped head files of a hidden DIR/.tmp-* folder; sealing syncs
// them, writes meta and renames the folder into place, so a crash at any
// moment leaves the old state or the new one, never a half-written layer.
#ifndef ENGRAM_STORE_TABLE_FILES_H_
#define ENGRAM_STORE_TABLE_FILES_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/layout.h"
#include "common/mutex.h"
#include "store/host_memory.h"
#include "store/table_checksum.h"

namespace engram {

// Which part of a layer a process stores: a single node stores it all; a
// cluster shard the ranges placement gives shard `index` of `shards` with
// `replication` copies. Stored in meta: a folder is only served by the
// same place in a cluster of the same shape.
struct ShardShape {
  uint32_t shards = 1;
  uint32_t replication = 1;
  uint32_t index = 0;
  bool operator==(const ShardShape&) const = default;
};

// Where a populate's tables go with --data_dir.
struct TableFilesTarget {
  std::string dir;
  ShardShape shape;
};

// The on-disk folder of one layer version, from creation (hidden, being
// written) through sealing (visible under its final name) to deletion
// (Remove, or a newer version committed). Deleting unlinks the files; the
// mappings made from them stay valid until unmapped, so in-flight lookups
// finish. Thread-safe.
class LayerFiles {
 public:
  // Creates DIR/.tmp-layer-<id>-<nonce>/ with one sparse file per head,
  // sized to its table and mapped writable into `tables` (one HostBuffer
  // per head); `resident[h]` are the byte ranges of head h that will be
  // written (empty: all; a shard's share otherwise, the rest stays a hole).
  // RESOURCE_EXHAUSTED / FAILED_PRECONDITION naming the path when the
  // folder or a file cannot be made.
  static absl::StatusOr<std::shared_ptr<LayerFiles>> Create(
      const TableFilesTarget& target, int64_t layer_id,
      const LayerLayout& layout,
      std::vector<std::vector<std::pair<size_t, size_t>>> resident,
      std::vector<HostBuffer>* tables);
  // Makes the written tables durable under their final name: checksums
  // every head, syncs the head files, writes meta, renames the folder to
  // DIR/layer-<id>.v<version> and syncs DIR. DATA_LOSS on an I/O error
  // (nothing visible then).
  absl::Status Seal(uint64_t version, const std::vector<HostBuffer>& tables);
  // Takes the folder off the disk (renamed away first, so a crash midway
  // cannot bring the layer back). Idempotent.
  void Delete();
  // An unsealed folder is deleted.
  ~LayerFiles();
  LayerFiles(const LayerFiles&) = delete;
  LayerFiles& operator=(const LayerFiles&) = delete;

  std::string path() const;

 private:
  LayerFiles(std::string dir, std::string path, int64_t layer_id,
             LayerLayout layout, ShardShape shape,
             std::vector<std::vector<std::pair<size_t, size_t>>> resident)
      : dir_(std::move(dir)),
        layer_id_(layer_id),
        layout_(std::move(layout)),
        shape_(shape),
        resident_(std::move(resident)),
        path_(std::move(path)) {}
  friend absl::StatusOr<std::shared_ptr<class Layer>> OpenStoredLayer(
      const struct StoredLayer& stored,
      std::vector<std::vector<RowRange>> owned, MemoryBudget* budget, bool pin,
      bool verify, bool* upgraded);

  const std::string dir_;
  const int64_t layer_id_;
  const LayerLayout layout_;
  const ShardShape shape_;
  // Per head: the byte ranges written and checksummed (empty: all).
  const std::vector<std::vector<std::pair<size_t, size_t>>> resident_;
  mutable Mutex mu_;
  std::string path_ ABSL_GUARDED_BY(mu_);
  bool sealed_ ABSL_GUARDED_BY(mu_) = false;
  bool deleted_ ABSL_GUARDED_BY(mu_) = false;
};

// A sealed layer folder found under --data_dir.
struct StoredLayer {
  int64_t layer_id = 0;
  uint64_t version = 0;
  LayerLayout layout;
  ShardShape shape;
  std::string path;
  std::vector<uint64_t> checksums;  // per head, over its stored ranges
  // The meta's format: what `checksums` (and the meta's own sum) are.
  ChecksumKind checksum_kind = ChecksumKind::kXxh3;
};

// What a scan of --data_dir found: the newest sealed version of each id,
// and a line for every folder refused (bad or truncated meta, a head file
// of the wrong size) or superseded by a newer version. Leftovers of
// interrupted writes and deletes (.tmp-*, .trash-*) are removed, refused
// folders are renamed to .refused-* (kept for inspection, never loaded).
struct DataDirScan {
  std::vector<StoredLayer> layers;
  std::vector<std::string> refused;
  std::vector<std::string> removed;
};
// Folders stored for another place in the cluster (`shape` differs) are
// refused too.
absl::StatusOr<DataDirScan> ScanDataDir(const std::string& dir,
                                        const ShardShape& shape = {});

// Maps a stored layer's heads shared and read-only; `owned` (one list per
// head; empty: whole tables) are the rows this process holds. With
// `verify`, reads every stored row once and compares the checksums
// (DATA_LOSS naming the head and file); a layer stored in meta format 1 is
// then upgraded to the current format in place (*upgraded set). Charged to
// `budget` and pinned when it fits; else (a layer bigger than the memory
// budget) served from the page cache, unpinned.
absl::StatusOr<std::shared_ptr<Layer>> OpenStoredLayer(
    const StoredLayer& stored, std::vector<std::vector<RowRange>> owned,
    MemoryBudget* budget, bool pin, bool verify, bool* upgraded = nullptr);

}  // namespace engram

#endif  // ENGRAM_STORE_TABLE_FILES_H_
