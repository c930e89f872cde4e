// .npy headers (engramctl populate, Load manifests' npy heads): parsed from
// bytes, and read from a file (a memfd) the way Load reads them, with pread
// and the header size cap.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "checkpoint/checkpoint_file.h"
#include "checkpoint/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto header = engram::checkpoint::ParseNpyHeader(data, size, "fuzz.npy");
  if (header.ok() && header->data_offset + header->data_bytes > size) {
    __builtin_trap();  // the parser promised the data is in the file
  }
  const int fd = memfd_create("fuzz.npy", MFD_CLOEXEC);
  if (fd < 0) return 0;
  if (size == 0 || write(fd, data, size) == static_cast<ssize_t>(size)) {
    auto file = engram::checkpoint::CheckpointFile::Open("/proc/self/fd/" +
                                                         std::to_string(fd));
    if (file.ok()) {
      auto read = engram::checkpoint::ReadNpyHeader(**file);
      // Reading must agree with parsing the whole file.
      if (read.ok() != header.ok()) __builtin_trap();
      if (read.ok() && (read->data_offset != header->data_offset ||
                        read->data_bytes != header->data_bytes)) {
        __builtin_trap();
      }
    }
  }
  close(fd);
  return 0;
}
