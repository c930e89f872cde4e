#include "cluster/exported_layer.h"

namespace engram {

ExportedLayer::ExportedLayer(const internal::v1::TransportResponse& response,
                             std::vector<std::string>* descriptors)
    : token_model_(response.token_model()) {
  heads_.resize(response.heads_size());
  for (int h = 0; h < response.heads_size(); ++h) {
    for (const auto& r : response.heads(h).ranges()) {
      heads_[h].push_back(
          {r.offset(), r.length(), static_cast<uint32_t>(descriptors->size())});
      descriptors->push_back(r.access());
    }
  }
}

std::optional<transport::ReadOp> ExportedLayer::Op(int head, int64_t row,
                                                   uint64_t row_bytes,
                                                   uint8_t* dst) const {
  if (head < 0 || head >= num_heads() || row < 0) return std::nullopt;
  const uint64_t at = static_cast<uint64_t>(row) * row_bytes;
  for (const Range& r : heads_[head]) {
    if (at >= r.offset && at + row_bytes <= r.offset + r.length)
      return transport::ReadOp{r.region, at - r.offset, dst, row_bytes};
  }
  return std::nullopt;
}

}  // namespace engram
