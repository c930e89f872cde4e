// Load manifests (JSON) as the Load RPC and --load parse them, under a
// root that does not exist: every path must be refused or resolved inside.
// The same bytes as a safetensors index file (a memfd) read the way Load
// reads one: size-capped, then its weight_map.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/match.h"
#include "checkpoint/json.h"
#include "checkpoint/manifest.h"
#include "checkpoint/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view text(reinterpret_cast<const char*>(data), size);
  (void)engram::checkpoint::ParseJson(text, "fuzz");
  auto manifest = engram::checkpoint::ParseLoadManifest(
      text, "/nonexistent/engram-fuzz", "/nonexistent/engram-fuzz");
  (void)manifest;
  const int fd = memfd_create("fuzz.index.json", MFD_CLOEXEC);
  if (fd < 0) return 0;
  if (size == 0 || write(fd, data, size) == static_cast<ssize_t>(size)) {
    auto index = engram::checkpoint::ReadSafetensorsIndex("/proc/self/fd/" +
                                                          std::to_string(fd));
    if (index.ok()) {
      for (const auto& [tensor, file] : *index) {
        if (file.empty()) __builtin_trap();  // names a file, always
      }
    }
  }
  close(fd);
  return 0;
}
