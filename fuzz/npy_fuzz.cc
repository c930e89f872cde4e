// .npy headers (engramctl populate, Load manifests' npy heads).
#include <cstddef>
#include <cstdint>

#include "checkpoint/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto header = engram::checkpoint::ParseNpyHeader(data, size, "fuzz.npy");
  if (header.ok() && header->data_offset + header->data_bytes > size) {
    __builtin_trap();  // the parser promised the data is in the file
  }
  return 0;
}
