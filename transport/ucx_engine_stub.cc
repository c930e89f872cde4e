// Built when ENGRAM_WITH_UCX is off: no remote reads; shards use the
// peer-gather path.
#include "transport/ucx_engine.h"

namespace engram::transport {

bool UcxCompiledIn() { return false; }

absl::StatusOr<std::unique_ptr<UcxEngine>> UcxEngine::Create(EngineOptions) {
  return absl::UnimplementedError(
      "this engramd was built without UCX (ENGRAM_WITH_UCX=OFF); remote "
      "reads are not available, use --peer_read=gather");
}

}  // namespace engram::transport
