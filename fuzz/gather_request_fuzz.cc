// Peer Gather requests as a shard checks them (CheckGather: pairing,
// ranges, ownership under the placement, limits), then the copy it runs,
// over a layer this shard (1 of 3, R = 2) holds its ranges of.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "cluster/placement.h"
#include "server/lookup_request.h"
#include "store/gather.h"
#include "store/layer_builder.h"

namespace {

struct Fixture {
  engram::MemoryBudget budget{64 << 20};
  engram::Placement placement = *engram::Placement::Create(3, 2);
  std::shared_ptr<engram::Layer> layer;
  Fixture() {
    const engram::LayerLayout layout{{40, 7, 101}, 4, engram::DType::kFloat32};
    const std::vector<std::vector<engram::RowRange>> owned = Owned(layout);
    auto builder =
        engram::LayerBuilder::Create(3, layout, &budget, false, owned);
    for (int h = 0; h < layout.num_heads(); ++h) {
      for (const engram::RowRange& r : owned[h]) {
        std::vector<char> rows((r.end - r.begin) * layout.row_bytes(), 7);
        (void)(*builder)->AddChunk(h, r.begin, {rows.data(), rows.size()});
      }
    }
    layer = *(*builder)->Finish();
  }
  std::vector<std::vector<engram::RowRange>> Owned(
      const engram::LayerLayout& layout) const {
    std::vector<std::vector<engram::RowRange>> owned;
    for (int h = 0; h < layout.num_heads(); ++h) {
      owned.push_back(
          placement.OwnedRanges(3, h, layout.table_vocab_sizes[h], 1));
    }
    return owned;
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Fixture* fixture = new Fixture;
  engram::internal::v1::GatherRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  if (!engram::CheckGather(request, *fixture->layer, fixture->placement, 1,
                           1 << 12, 1 << 20)
           .ok()) {
    return 0;
  }
  std::vector<uint8_t> out(request.row_ids_size() *
                           fixture->layer->layout().row_bytes());
  engram::GatherRowsAt(*fixture->layer, request.heads().data(),
                       request.row_ids().data(), request.row_ids_size(),
                       out.data());
  return 0;
}
