// Staging area for one Populate: receives row chunks in any order, checks
// that every row of every head arrives exactly once, and yields a Layer.
#ifndef ENGRAM_STORE_LAYER_BUILDER_H_
#define ENGRAM_STORE_LAYER_BUILDER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/layout.h"
#include "common/mutex.h"
#include "store/host_memory.h"
#include "store/layer.h"
#include "store/table_files.h"

namespace engram {

// Owns the staged tables and their budget charge until Finish hands them to
// the Layer; dropping an unfinished builder frees everything. AddChunk and
// FillRows are thread-safe for disjoint rows; the rest is driven by one
// thread (one populate stream or load).
class LayerBuilder {
 public:
  // Validates the layout, charges the memory it maps (page-rounded tables
  // plus staging bitmaps) to `budget` (RESOURCE_EXHAUSTED past the limit)
  // and allocates the tables; they are pinned at Finish. With `owned` (one list
  // of row ranges per head: a shard of a cluster), only those rows are stored,
  // charged and expected; the others are never written. `exporter` places
  // the stored rows where other processes can read them remotely.
  // With `files` (not with `exporter`) the tables are files in a hidden
  // folder under it (store/table_files.h), sealed by the caller with
  // files()->Seal; a layer bigger than the budget is then still taken, as
  // stored bytes served from the page cache (unpinned, uncharged).
  static absl::StatusOr<std::unique_ptr<LayerBuilder>> Create(
      int64_t layer_id, LayerLayout layout, MemoryBudget* budget,
      bool pin_memory, std::vector<std::vector<RowRange>> owned = {},
      const ExportMapper* exporter = nullptr,
      const TableFilesTarget* files = nullptr);

  // Copies whole rows of `head` starting at `row_offset`. INVALID_ARGUMENT
  // for a bad head, offset, ragged or empty data, rows past the table end,
  // or rows that already arrived; on error nothing is written.
  absl::Status AddChunk(int64_t head, int64_t row_offset,
                        std::string_view data);

  // Like AddChunk for `rows` rows, but `fill(dst)` writes them in place
  // (from a checkpoint file: no staging copy). `fill` runs only when the
  // checks pass; its error is returned and the rows stay missing. Several
  // threads may fill disjoint rows at once (the rows are claimed first).
  absl::Status FillRows(int64_t head, int64_t row_offset, int64_t rows,
                        const std::function<absl::Status(uint8_t* dst)>& fill);

  // INVALID_ARGUMENT naming the first head with missing rows; otherwise the
  // committed-ready layer. The builder is spent afterwards.
  absl::StatusOr<std::shared_ptr<Layer>> Finish();

  int64_t layer_id() const { return layer_id_; }
  const LayerLayout& layout() const { return layout_; }
  int64_t rows_received() const {
    MutexLock lock(&mu_);
    return rows_received_;
  }
  int64_t rows_total() const { return rows_total_; }

 private:
  LayerBuilder(int64_t layer_id, LayerLayout layout,
               MemoryReservation reservation,
               std::vector<std::vector<RowRange>> owned);
  int64_t OwnedRows(int head) const;

  const int64_t layer_id_;
  const LayerLayout layout_;
  const std::vector<std::vector<RowRange>> owned_;  // empty: whole tables
  MemoryReservation reservation_;
  bool pin_memory_ = false;
  bool whole_tables_ = false;          // plain mappings, not sparse/exported
  std::shared_ptr<LayerFiles> files_;  // --data_dir only
  uint64_t staging_bytes_ = 0;         // the bitmaps' share of the reservation
  // Per head: byte ranges stored here.
  std::vector<std::vector<std::pair<size_t, size_t>>> resident_;
  std::vector<HostBuffer> tables_;
  // One bit per row per head: set once the row arrived.
  // Claims of rows by AddChunk/FillRows, which may run on several threads.
  mutable Mutex mu_;
  std::vector<std::vector<uint64_t>> received_ ABSL_GUARDED_BY(mu_);
  std::vector<int64_t> received_per_head_ ABSL_GUARDED_BY(mu_);
  int64_t rows_received_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t rows_total_ = 0;
};

}  // namespace engram

#endif  // ENGRAM_STORE_LAYER_BUILDER_H_
