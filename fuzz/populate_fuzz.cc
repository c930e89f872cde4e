// A Populate (or peer Stage) stream as engramd takes it: a header whose
// layer config is validated, then chunks of rows at any offsets, then
// Finish - the checks that keep a stream from writing outside a table.
// Input: messages, each a 2-byte little-endian length and a serialized
// engram.v1.PopulateRequest.
#include <cstddef>
#include <cstdint>
#include <memory>

#include "engram/v1/engram.pb.h"
#include "proto/convert.h"
#include "store/layer_builder.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static engram::MemoryBudget* budget = new engram::MemoryBudget(8 << 20);
  std::unique_ptr<engram::LayerBuilder> builder;
  while (size >= 2) {
    const size_t n = data[0] | (data[1] << 8);
    data += 2;
    size -= 2;
    if (n > size) return 0;
    engram::v1::PopulateRequest message;
    const bool parsed = message.ParseFromArray(data, static_cast<int>(n));
    data += n;
    size -= n;
    if (!parsed) return 0;
    if (builder == nullptr) {
      if (!message.has_header()) return 0;
      auto layout = engram::LayoutFromConfig(message.header().config());
      if (!layout.ok()) return 0;
      auto created = engram::LayerBuilder::Create(message.header().layer_id(),
                                                  *layout, budget, false);
      if (!created.ok()) return 0;
      builder = *std::move(created);
      continue;
    }
    if (!message.has_chunk()) return 0;
    (void)builder->AddChunk(message.chunk().head(),
                            message.chunk().row_offset(),
                            message.chunk().data());
  }
  if (builder != nullptr) (void)builder->Finish();
  return 0;
}
