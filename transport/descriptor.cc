#include "transport/descriptor.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace engram::transport {
namespace {

// "ENR2", little endian (version 2 added the System V segment).
constexpr uint32_t kMagic = 0x3252'4e45;
// magic, base, length, slot, generation, shm id, shm offset, rkey length
constexpr size_t kHeaderBytes = 4 + 8 + 8 + 4 + 8 + 8 + 8 + 4;

template <typename T>
void Put(std::string* out, T value) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  out->append(bytes, sizeof(T));
}

template <typename T>
T Get(std::string_view bytes, size_t* at) {
  T value;
  std::memcpy(&value, bytes.data() + *at, sizeof(T));
  *at += sizeof(T);
  return value;
}

}  // namespace

std::string RegionDescriptor::Serialize() const {
  std::string out;
  out.reserve(kHeaderBytes + rkey.size());
  Put<uint32_t>(&out, kMagic);
  Put<uint64_t>(&out, base);
  Put<uint64_t>(&out, length);
  Put<uint32_t>(&out, epoch_slot);
  Put<uint64_t>(&out, generation);
  Put<int64_t>(&out, shm_id);
  Put<uint64_t>(&out, shm_offset);
  Put<uint32_t>(&out, static_cast<uint32_t>(rkey.size()));
  out += rkey;
  return out;
}

absl::StatusOr<RegionDescriptor> RegionDescriptor::Parse(
    std::string_view bytes) {
  if (bytes.size() < kHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "region descriptor of ", bytes.size(), " bytes is shorter than its ",
        kHeaderBytes, "-byte header"));
  }
  size_t at = 0;
  if (Get<uint32_t>(bytes, &at) != kMagic) {
    return absl::InvalidArgumentError("not a region descriptor (bad magic)");
  }
  RegionDescriptor d;
  d.base = Get<uint64_t>(bytes, &at);
  d.length = Get<uint64_t>(bytes, &at);
  d.epoch_slot = Get<uint32_t>(bytes, &at);
  d.generation = Get<uint64_t>(bytes, &at);
  d.shm_id = Get<int64_t>(bytes, &at);
  d.shm_offset = Get<uint64_t>(bytes, &at);
  const uint32_t rkey_bytes = Get<uint32_t>(bytes, &at);
  if (bytes.size() - at != rkey_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("region descriptor says its key has ", rkey_bytes,
                     " bytes; ", bytes.size() - at, " follow"));
  }
  d.rkey = std::string(bytes.substr(at));
  return d;
}

}  // namespace engram::transport
