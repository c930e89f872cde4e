// One populate's hold on a layer id and its staged rows, as one RAII object
// shared by every populate path (single node, a shard's Stage).
#ifndef ENGRAM_STORE_LAYER_STAGER_H_
#define ENGRAM_STORE_LAYER_STAGER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/layout.h"
#include "store/host_memory.h"
#include "store/layer.h"
#include "store/layer_builder.h"
#include "store/layer_registry.h"

namespace engram {

// Claims the id in the registry (with the abort hook a forced Remove runs)
// and owns the LayerBuilder; when dropped it detaches the hook and gives the
// claim back unless the layer was committed or the claim was taken over.
// Not thread-safe: one stream drives it (the hook itself runs on the
// Remove's thread, under the registry's lock, until detached).
class LayerStager {
 public:
  struct Options {
    bool pin_memory = true;
    std::vector<std::vector<RowRange>> owned;  // empty: whole tables
    const ExportMapper* exporter = nullptr;
    std::function<void()> on_abort;  // may be empty
    bool replace = false;    // swap out a committed layer of the id at commit
    TableFilesTarget files;  // --data_dir (dir set): tables are files there,
                             // sealed at Finish
  };
  // ALREADY_EXISTS (the id is held), RESOURCE_EXHAUSTED (budget) or the
  // layout's INVALID_ARGUMENT; nothing is held then.
  static absl::StatusOr<std::unique_ptr<LayerStager>> Begin(
      LayerRegistry* layers, MemoryBudget* budget, int64_t layer_id,
      LayerLayout layout, Options options);
  ~LayerStager();
  LayerStager(const LayerStager&) = delete;
  LayerStager& operator=(const LayerStager&) = delete;

  // LayerBuilder::AddChunk, ABORTED once a forced Remove took the id.
  absl::Status AddChunk(int64_t head, int64_t row_offset,
                        std::string_view data);
  // LayerBuilder::FillRows, ABORTED once a forced Remove took the id.
  absl::Status FillRows(int64_t head, int64_t row_offset, int64_t rows,
                        const std::function<absl::Status(uint8_t* dst)>& fill);
  // The complete layer (INVALID_ARGUMENT naming missing rows), its files
  // sealed under the id's next version with --data_dir. The hook is
  // detached: from here on a forced Remove only marks the claim aborted,
  // and Commit answers ABORTED.
  absl::StatusOr<std::shared_ptr<Layer>> Finish();
  // Hands the claim over (e.g. to a staged transaction awaiting commit).
  std::shared_ptr<PopulateTicket> TakeTicket();

  const std::shared_ptr<PopulateTicket>& ticket() const { return ticket_; }
  bool aborted() const { return ticket_ != nullptr && ticket_->aborted(); }
  int64_t layer_id() const { return layer_id_; }
  int64_t rows_received() const { return builder_->rows_received(); }

 private:
  LayerStager(LayerRegistry* layers, int64_t layer_id)
      : layers_(layers), layer_id_(layer_id) {}
  absl::Status AbortedByRemove() const;
  LayerRegistry* const layers_;
  const int64_t layer_id_;
  std::shared_ptr<PopulateTicket> ticket_;
  std::unique_ptr<LayerBuilder> builder_;
};

}  // namespace engram

#endif  // ENGRAM_STORE_LAYER_STAGER_H_
