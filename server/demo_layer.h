// The demo layer `engramd --demo` serves, so a first lookup works at once.
#ifndef ENGRAM_SERVER_DEMO_LAYER_H_
#define ENGRAM_SERVER_DEMO_LAYER_H_

#include <cstdint>

#include "absl/status/status.h"
#include "store/gpu_tier.h"
#include "store/host_memory.h"
#include "store/layer_registry.h"

namespace engram {

// Layer 0: four heads of 1000, 1003, 1009 and 1013 rows, D = 8, float32;
// element d of row r of head h is h*100000 + r + d/8.
absl::Status AddDemoLayer(LayerRegistry* layers, MemoryBudget* budget, bool pin,
                          GpuTier* gpu, const ExportMapper* exporter = nullptr);
inline constexpr int64_t kDemoLayerId = 0;

}  // namespace engram

#endif  // ENGRAM_SERVER_DEMO_LAYER_H_
