// A committed layer: its layout and one table buffer per head.
#ifndef ENGRAM_STORE_LAYER_H_
#define ENGRAM_STORE_LAYER_H_

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "store/host_memory.h"
#include "store/layout.h"

namespace engram {

class GpuLayerMirror;

// Immutable once published: LayerBuilder builds it, the server may attach a
// GPU mirror, and only then is it shared as shared_ptr<const Layer>; shared
// (shared_ptr<const Layer>) between the registry and in-flight lookups, so its
// memory is released only when the last reader drops it. Safe to read from any
// thread.
class Layer {
 public:
  Layer(int64_t id, LayerLayout layout, std::vector<HostBuffer> tables,
        MemoryReservation reservation)
      : id_(id),
        layout_(std::move(layout)),
        tables_(std::move(tables)),
        reservation_(std::move(reservation)) {
    table_ptrs_.reserve(tables_.size());
    for (const HostBuffer& t : tables_) table_ptrs_.push_back(t.data());
  }

  int64_t id() const { return id_; }
  const LayerLayout& layout() const { return layout_; }
  // Row-major [N_h, D] bytes of head h.
  const uint8_t* table(int head) const { return table_ptrs_[head]; }
  const uint8_t* const* table_ptrs() const { return table_ptrs_.data(); }
  // The ranges of head h's table other shards may read remotely (shards
  // with a transport only; empty otherwise).
  const std::vector<ExportedRange>& exports(int head) const {
    return tables_[head].exports();
  }
  // Row bytes stored here: the whole layout, or a shard's share of it.
  uint64_t bytes() const { return reservation_.bytes(); }
  // False for a shard's partial copy (only its row ranges are present).
  bool complete() const {
    return reservation_.bytes() == layout_.total_bytes();
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
  std::shared_ptr<const GpuLayerMirror> gpu_mirror_;
};

}  // namespace engram

#endif  // ENGRAM_STORE_LAYER_H_
