// The checksums --data_dir seals tables and their meta with, by the meta
// format that uses them: format 2 (written now) is XXH3-64 (libxxhash);
// format 1 (written before) is a four-lane multiply-xor, kept only so that
// folders written by older engramd still verify, and are upgraded.
#ifndef ENGRAM_STORE_TABLE_CHECKSUM_H_
#define ENGRAM_STORE_TABLE_CHECKSUM_H_

#include <cstddef>
#include <cstdint>
#include <memory>

namespace engram {

enum class ChecksumKind : uint32_t {
  kLanes = 1,  // meta format 1
  kXxh3 = 2,   // meta format 2
};

// One checksum over data fed in pieces of any size: the same value as over
// their concatenation. Not thread-safe; one per stream of data.
class TableChecksum {
 public:
  explicit TableChecksum(ChecksumKind kind);
  ~TableChecksum();
  TableChecksum(const TableChecksum&) = delete;
  TableChecksum& operator=(const TableChecksum&) = delete;

  void Add(const uint8_t* data, size_t bytes);
  uint64_t Finish() const;

  // The whole checksum of one buffer.
  static uint64_t Of(ChecksumKind kind, const uint8_t* data, size_t bytes);

 private:
  class Lanes;
  struct Xxh3;
  const ChecksumKind kind_;
  std::unique_ptr<Lanes> lanes_;
  std::unique_ptr<Xxh3> xxh3_;
};

}  // namespace engram

#endif  // ENGRAM_STORE_TABLE_CHECKSUM_H_
