// A stand-in for an application: includes only the public client header and
// links only engram::client. It must build and run without the CUDA runtime
// or UCX (the ctest next to it checks the binary for them).
#include <cstdio>

#include "client/client.h"

int main() {
  engram::ClientOptions options;
  options.timeout = absl::Milliseconds(300);
  auto client = engram::Client::Connect("127.0.0.1:1", options);
  if (!client.ok()) return 1;
  // Nothing listens on port 1: health must fail cleanly, not crash.
  if ((*client)->CheckHealth().ok()) return 1;
  // Direct reads need engram::client_direct, which is not linked here.
  options.direct_reads = true;
  auto direct = engram::Client::Connect("127.0.0.1:1", options);
  if (direct.status().code() != absl::StatusCode::kFailedPrecondition) {
    return 1;
  }
  engram::LayerLayout layout{{10, 20}, 4, engram::DType::kFloat32};
  std::printf("client_only_app: ok (layout of %lld bytes)\n",
              static_cast<long long>(layout.total_bytes()));
  return 0;
}
