// A shard's exports of one layer as its Transport call describes them: per
// head, the byte ranges other processes may read. Shared by the
// coordinating shard's rma path and the client's direct reads.
#ifndef ENGRAM_CLUSTER_EXPORTED_LAYER_H_
#define ENGRAM_CLUSTER_EXPORTED_LAYER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engram/internal/v1/peer.pb.h"
#include "transport/ucx_engine.h"

namespace engram {

// Immutable after construction; safe to share between threads.
class ExportedLayer {
 public:
  // Reads the response; appends each range's descriptor to `descriptors`
  // in the order UcxEngine::Attach numbers the regions.
  ExportedLayer(const internal::v1::TransportResponse& response,
                std::vector<std::string>* descriptors);

  int num_heads() const { return static_cast<int>(heads_.size()); }
  // The token model of the layer version described (0: the owner knows
  // none; kStaleTokenModel: its model is stale there).
  uint64_t token_model() const { return token_model_; }
  // The read that copies row `row` of head `head` (`row_bytes` wide) to
  // `dst`; nullopt when no exported range holds the whole row.
  std::optional<transport::ReadOp> Op(int head, int64_t row, uint64_t row_bytes,
                                      uint8_t* dst) const;

 private:
  struct Range {
    uint64_t offset;
    uint64_t length;
    uint32_t region;
  };
  std::vector<std::vector<Range>> heads_;
  uint64_t token_model_ = 0;
};

}  // namespace engram

#endif  // ENGRAM_CLUSTER_EXPORTED_LAYER_H_
