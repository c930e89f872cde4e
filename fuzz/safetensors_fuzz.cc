// safetensors files as Load reads them (pread, never mapped): the JSON header
// checked against the file (offsets, dtypes, shapes, truncation). The input is
// the whole file, handed over as a memfd.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "checkpoint/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int fd = memfd_create("fuzz.safetensors", MFD_CLOEXEC);
  if (fd < 0) return 0;
  if (size > 0 && write(fd, data, size) != static_cast<ssize_t>(size)) {
    close(fd);
    return 0;
  }
  auto file = engram::checkpoint::SafetensorsFile::Open("/proc/self/fd/" +
                                                        std::to_string(fd));
  if (file.ok()) {
    for (const auto& [name, tensor] : (*file)->tensors()) {
      if (tensor.begin > tensor.end || tensor.end > size) __builtin_trap();
    }
  }
  close(fd);
  return 0;
}
