// The seam between the client library and same-host direct reads: the
// cluster router reads through this interface, and the UCX implementation
// (client/direct_reader.*, target engram::client_direct) registers its
// factory when it is linked in. An application that links only
// engram::client therefore carries no UCX (and no CUDA). Internal to the
// client libraries.
#ifndef ENGRAM_CLIENT_DIRECT_READS_H_
#define ENGRAM_CLIENT_DIRECT_READS_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "common/layout.h"
#include "engram/internal/v1/peer.grpc.pb.h"

namespace engram {

// Thread-safe implementations only.
class DirectReads {
 public:
  virtual ~DirectReads() = default;
  using Row = RowCopy;  // dst: row_bytes of the layer's stored dtype
  // True when every row was copied and validated; false when direct reads
  // are not (yet) possible for this shard and layer, or `token_model` (when
  // non-zero) is not the one the mapped version has: use an RPC.
  virtual bool TryRead(int shard, int64_t layer_id, const LayerLayout& layout,
                       std::span<const Row> rows, uint64_t token_model) = 0;
  virtual void Forget(int64_t layer_id) = 0;
};

// Makes a DirectReads over the shards' stubs (borrowed), or null when it
// cannot start (no UCX at run time).
using DirectReadsFactory = std::unique_ptr<DirectReads> (*)(
    std::vector<internal::v1::EngramPeer::Stub*> stubs);

// Set once by engram::client_direct at static initialization.
void RegisterDirectReads(DirectReadsFactory factory);
// Null unless engram::client_direct is linked in.
DirectReadsFactory DirectReadsFactoryOrNull();

}  // namespace engram

#endif  // ENGRAM_CLIENT_DIRECT_READS_H_
