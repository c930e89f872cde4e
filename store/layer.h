// A committed layer: its layout and one table buffer per head.
#ifndef ENGRAM_STORE_LAYER_H_
#define ENGRAM_STORE_LAYER_H_

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/layout.h"
#include "store/host_memory.h"

namespace engram {

class GpuLayerMirror;
class LayerFiles;

// Immutable once published: LayerBuilder builds it, the server may attach a
// GPU mirror, and only then is it shared as shared_ptr<const Layer>; shared
// (shared_ptr<const Layer>) between the registry and in-flight lookups, so its
// memory is released only when the last reader drops it. Safe to read from any
// thread.
class Layer {
 public:
  // `data_bytes`: row bytes the tables hold (less than the layout's total
  // for a shard's share).
  Layer(int64_t id, LayerLayout layout, std::vector<HostBuffer> tables,
        MemoryReservation reservation, uint64_t data_bytes)
      : id_(id),
        layout_(std::move(layout)),
        tables_(std::move(tables)),
        reservation_(std::move(reservation)),
        data_bytes_(data_bytes),
        has_rows_(true) {
    table_ptrs_.reserve(tables_.size());
    for (const HostBuffer& t : tables_) table_ptrs_.push_back(t.data());
  }
  // A layer known by its layout only, holding no rows: what a shard that
  // is still copying its rows from replicas coordinates lookups with.
  static std::shared_ptr<const Layer> Placeholder(int64_t id,
                                                  LayerLayout layout) {
    auto layer = std::make_shared<Layer>(id, std::move(layout),
                                         std::vector<HostBuffer>{},
                                         MemoryReservation(), 0);
    layer->has_rows_ = false;
    layer->table_ptrs_.assign(layer->layout_.num_heads(), nullptr);
    return layer;
  }

  int64_t id() const { return id_; }
  const LayerLayout& layout() const { return layout_; }
  // Row-major [N_h, D] bytes of head h.
  const uint8_t* table(int head) const { return table_ptrs_[head]; }
  const uint8_t* const* table_ptrs() const { return table_ptrs_.data(); }
  // The ranges of head h's table other shards may read remotely (shards
  // with a transport only; empty otherwise).
  const std::vector<HostBuffer>& tables() const { return tables_; }
  const std::vector<ExportedRange>& exports(int head) const {
    return tables_[head].exports();
  }
  // Memory held here for the rows (page-rounded tables; the whole layout
  // or a shard's share of it), as charged to the budget.
  uint64_t bytes() const { return reservation_.bytes(); }
  // False for a shard's partial copy (only its row ranges are present).
  bool complete() const { return data_bytes_ == layout_.total_bytes(); }
  // Row bytes stored here (bytes() is the memory holding them).
  uint64_t data_bytes() const { return data_bytes_; }
  // False for a Placeholder: nothing may be read from table().
  bool has_rows() const { return has_rows_; }
  // Which commit of this id it is (LayerRegistry::Commit sets it before
  // publishing the layer; 0 before that).
  uint64_t version() const { return version_; }
  // --data_dir: the files that hold the tables (nullptr: memory only).
  // Only before the layer is published.
  void AttachFiles(std::shared_ptr<LayerFiles> files) {
    files_ = std::move(files);
  }
  const std::shared_ptr<LayerFiles>& files() const { return files_; }
  // Deletes the layer's files (it was removed or replaced); the memory
  // lives on for in-flight readers. No-op for a memory-only layer.
  void ReleaseStorage() const;
  // Row bytes in RAM now: all of them unless the layer is file-backed and
  // unpinned (then what the page cache holds).
  uint64_t resident_bytes() const {
    if (!may_fault()) return data_bytes_;
    uint64_t n = 0;
    for (const HostBuffer& t : tables_) n += t.ResidentNow();
    return n;
  }
  // True when reading rows may wait on the disk (an unpinned file-backed
  // layer): such lookups are kept off the gRPC threads.
  bool may_fault() const {
    return files_ != nullptr && pin_mode() == PinMode::kNone;
  }
  // Device copy of the tables, or nullptr when the layer is host-only.
  const GpuLayerMirror* gpu_mirror() const { return gpu_mirror_.get(); }
  // Only before the layer is published (the registry's lock orders it
  // before any reader).
  void AttachGpuMirror(std::shared_ptr<const GpuLayerMirror> mirror) {
    gpu_mirror_ = std::move(mirror);
  }

  // The weakest pinning among the heads.
  PinMode pin_mode() const {
    PinMode mode = PinMode::kCudaHost;
    for (const HostBuffer& t : tables_) mode = std::min(mode, t.pin_mode());
    return mode;
  }

 private:
  const int64_t id_;
  const LayerLayout layout_;
  const std::vector<HostBuffer> tables_;
  std::vector<const uint8_t*> table_ptrs_;
  MemoryReservation reservation_;
  const uint64_t data_bytes_;
  bool has_rows_;  // set before the layer is shared
  friend class LayerRegistry;
  // Written once by the registry under its lock, before the layer is
  // published (publication orders it before any reader).
  mutable uint64_t version_ = 0;
  std::shared_ptr<const GpuLayerMirror> gpu_mirror_;
  std::shared_ptr<LayerFiles> files_;
};

}  // namespace engram

#endif  // ENGRAM_STORE_LAYER_H_
