// Lookup requests as engramd parses them: protobuf bytes -> PrepareLookup
// (the server's own checks) -> the gather the server would then run, over
// a small float32 layer and a bfloat16 one.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "server/lookup_request.h"
#include "store/gather.h"
#include "store/layer_builder.h"

namespace {

struct Fixture {
  engram::MemoryBudget budget{64 << 20};
  engram::LayerRegistry layers;
  Fixture() {
    AddLayer(1, {7, 1, 13}, 4, engram::DType::kFloat32);
    AddLayer(2, {5, 9}, 3, engram::DType::kBFloat16);
  }
  void AddLayer(int64_t id, std::vector<int64_t> sizes, int64_t dim,
                engram::DType dtype) {
    engram::LayerLayout layout{sizes, dim, dtype};
    auto ticket = layers.BeginPopulate(id);
    auto builder = engram::LayerBuilder::Create(id, layout, &budget, false);
    for (size_t h = 0; h < sizes.size(); ++h) {
      std::vector<char> rows(sizes[h] * layout.row_bytes(), char(h + 1));
      (void)(*builder)->AddChunk(h, 0, {rows.data(), rows.size()});
    }
    (void)layers.Commit(*ticket, *(*builder)->Finish());
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Fixture* fixture = new Fixture;
  engram::LookupCall call;
  if (!call.request.ParseFromArray(data, static_cast<int>(size))) return 0;
  engram::ServiceLimits limits;
  limits.max_lookup_rows = 1 << 12;
  limits.max_message_bytes = 1 << 20;
  if (!engram::PrepareLookup(fixture->layers, limits, &call).ok()) return 0;
  std::vector<uint8_t> out(call.shape.num_ids() * call.out_row_bytes);
  // as_values requests are gathered as float32 (ServeValues).
  engram::GatherRows(
      *call.layer, call.ids, 0, call.shape.num_ids(),
      call.request.as_values() ? engram::DType::kFloat32 : call.out_dtype,
      out.data());
  return 0;
}
