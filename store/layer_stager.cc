#include "store/layer_stager.h"

#include "absl/strings/str_cat.h"

namespace engram {

absl::StatusOr<std::unique_ptr<LayerStager>> LayerStager::Begin(
    LayerRegistry* layers, MemoryBudget* budget, int64_t layer_id,
    LayerLayout layout, Options options) {
  absl::StatusOr<std::shared_ptr<PopulateTicket>> ticket =
      layers->BeginPopulate(layer_id, std::move(options.on_abort),
                            options.replace);
  if (!ticket.ok()) return ticket.status();
  std::unique_ptr<LayerStager> stager(new LayerStager(layers, layer_id));
  stager->ticket_ = *std::move(ticket);  // given back by ~LayerStager
  absl::StatusOr<std::unique_ptr<LayerBuilder>> builder = LayerBuilder::Create(
      layer_id, std::move(layout), budget, options.pin_memory,
      std::move(options.owned), options.exporter,
      options.files.dir.empty() ? nullptr : &options.files);
  if (!builder.ok()) return builder.status();
  stager->builder_ = *std::move(builder);
  return stager;
}

LayerStager::~LayerStager() {
  builder_.reset();  // frees staged tables and their budget charge
  if (ticket_ != nullptr) {
    layers_->DetachAbortHook(ticket_);
    layers_->Abandon(ticket_);  // no-op once committed
  }
}

absl::Status LayerStager::AbortedByRemove() const {
  return absl::AbortedError(
      absl::StrCat("populate of layer ", layer_id_,
                   " was aborted by a forced Remove; nothing was kept"));
}

absl::Status LayerStager::AddChunk(int64_t head, int64_t row_offset,
                                   std::string_view data) {
  if (aborted()) return AbortedByRemove();
  return builder_->AddChunk(head, row_offset, data);
}

absl::Status LayerStager::FillRows(
    int64_t head, int64_t row_offset, int64_t rows,
    const std::function<absl::Status(uint8_t* dst)>& fill) {
  if (aborted()) return AbortedByRemove();
  return builder_->FillRows(head, row_offset, rows, fill);
}

absl::StatusOr<std::shared_ptr<Layer>> LayerStager::Finish() {
  layers_->DetachAbortHook(ticket_);
  absl::StatusOr<std::shared_ptr<Layer>> layer = builder_->Finish();
  if (!layer.ok() || (*layer)->files() == nullptr) return layer;
  // The claim on the id is held: nothing else commits it before this
  // layer, so the version it will get is known now.
  if (absl::Status s = (*layer)->files()->Seal(layers_->NextVersion(layer_id_),
                                               (*layer)->tables());
      !s.ok()) {
    return s;
  }
  return layer;
}

std::shared_ptr<PopulateTicket> LayerStager::TakeTicket() {
  return std::exchange(ticket_, nullptr);
}

}  // namespace engram
