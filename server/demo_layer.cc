#include "server/demo_layer.h"

#include <vector>

#include "server/populate_reactor.h"
#include "store/layer_builder.h"

namespace engram {

absl::Status AddDemoLayer(LayerRegistry* layers, MemoryBudget* budget, bool pin,
                          GpuTier* gpu, const ExportMapper* exporter) {
  LayerLayout layout{{1000, 1003, 1009, 1013}, 8, DType::kFloat32};
  absl::StatusOr<std::shared_ptr<PopulateTicket>> ticket =
      layers->BeginPopulate(kDemoLayerId);
  if (!ticket.ok()) return ticket.status();
  auto builder =
      LayerBuilder::Create(kDemoLayerId, layout, budget, pin, {}, exporter);
  if (!builder.ok()) {
    layers->Abandon(*ticket);
    return builder.status();
  }
  for (int h = 0; h < layout.num_heads(); ++h) {
    const int64_t rows = layout.table_vocab_sizes[h];
    std::vector<float> table(rows * layout.embedding_dim);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t d = 0; d < layout.embedding_dim; ++d) {
        table[r * layout.embedding_dim + d] =
            static_cast<float>(h * 100000 + r) + static_cast<float>(d) / 8.0f;
      }
    }
    absl::Status s = (*builder)->AddChunk(
        h, 0,
        std::string_view(reinterpret_cast<const char*>(table.data()),
                         table.size() * sizeof(float)));
    if (!s.ok()) {
      layers->Abandon(*ticket);
      return s;
    }
  }
  absl::StatusOr<std::shared_ptr<Layer>> layer = (*builder)->Finish();
  if (!layer.ok()) {
    layers->Abandon(*ticket);
    return layer.status();
  }
  return MirrorAndCommit(gpu, layers, *ticket, *std::move(layer));
}

}  // namespace engram
