// Load manifests (JSON) as the Load RPC and --load parse them, under a
// root that does not exist: every path must be refused or resolved inside.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/match.h"
#include "checkpoint/json.h"
#include "checkpoint/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  (void)engram::checkpoint::ParseJson(text, "fuzz");
  auto manifest = engram::checkpoint::ParseLoadManifest(
      text, "/nonexistent/engram-fuzz", "/nonexistent/engram-fuzz");
  (void)manifest;
  return 0;
}
