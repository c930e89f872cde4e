#include "checkpoint/safetensors.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "checkpoint/json.h"

namespace engram::checkpoint {
namespace {

// The safetensors format caps its header at 100 MB.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// An index names each tensor once (a large model's is a few MB).
constexpr uint64_t kMaxIndexBytes = 64ull << 20;

}  // namespace

size_t SafetensorsDTypeSize(const std::string& dtype) {
  static const std::map<std::string, size_t> kSizes = {
      {"BOOL", 1},    {"U8", 1},      {"I8", 1},  {"F8_E4M3", 1},
      {"F8_E5M2", 1}, {"F8_E8M0", 1}, {"I16", 2}, {"U16", 2},
      {"F16", 2},     {"BF16", 2},    {"I32", 4}, {"U32", 4},
      {"F32", 4},     {"I64", 8},     {"U64", 8}, {"F64", 8}};
  auto it = kSizes.find(dtype);
  return it == kSizes.end() ? 0 : it->second;
}

absl::StatusOr<std::shared_ptr<const SafetensorsFile>> SafetensorsFile::Open(
    const std::string& path, const std::string& root) {
  auto file = CheckpointFile::Open(path, root);
  if (!file.ok()) return file.status();
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is not a valid safetensors file: ", why));
  };
  const uint64_t size = (*file)->size();
  if (size < 8) return bad(absl::StrCat("it has ", size, " bytes"));
  // Read, not mapped: a file truncated meanwhile fails the read (DATA_LOSS)
  // rather than the process (SIGBUS).
  uint8_t length_bytes[8];
  if (absl::Status s = (*file)->ReadAt(0, 8, length_bytes); !s.ok()) return s;
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = header_len << 8 | length_bytes[i];
  if (header_len > kMaxHeaderBytes || header_len > size - 8) {
    // The claimed length is not repeated: for a file that is not a
    // safetensors file, it would be its first 8 bytes.
    return bad(
        absl::StrCat("its header length field exceeds ",
                     header_len > kMaxHeaderBytes
                         ? absl::StrCat("the ", kMaxHeaderBytes, "-byte limit")
                         : absl::StrCat("the file's ", size, " bytes")));
  }
  std::string header_text(header_len, '\0');
  if (absl::Status s = (*file)->ReadAt(
          8, header_len, reinterpret_cast<uint8_t*>(header_text.data()));
      !s.ok()) {
    return s;
  }
  auto header = ParseJson(header_text, path);
  if (!header.ok()) return header.status();
  if (!header->is_object()) return bad("the header is not a JSON object");
  auto result = std::make_shared<SafetensorsFile>();
  result->file_ = *std::move(file);
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = size - data_start;
  for (auto member = header->begin(); member != header->end(); ++member) {
    const std::string& name = member.key();
    const Json& t = member.value();
    if (name == "__metadata__") continue;
    auto bad_tensor = [&](const std::string& why) {
      return bad(absl::StrCat("tensor ", name, ": ", why));
    };
    const Json* dtype = JsonMember(t, "dtype");
    const Json* shape = JsonMember(t, "shape");
    const Json* offsets = JsonMember(t, "data_offsets");
    if (dtype == nullptr || !dtype->is_string() || shape == nullptr ||
        !shape->is_array() || offsets == nullptr || !offsets->is_array() ||
        offsets->size() != 2) {
      return bad_tensor("needs dtype, shape and data_offsets [begin, end]");
    }
    SafetensorInfo info;
    info.dtype = dtype->get<std::string>();
    const size_t item = SafetensorsDTypeSize(info.dtype);
    if (item == 0) {
      return bad_tensor(
          absl::StrCat("dtype ", info.dtype, " is not supported"));
    }
    auto begin = JsonInt64((*offsets)[0]);
    auto end = JsonInt64((*offsets)[1]);
    if (!begin.ok() || !end.ok() || *begin < 0 || *end < *begin) {
      return bad_tensor("data_offsets must be 0 <= begin <= end");
    }
    if (static_cast<uint64_t>(*end) > data_size) {
      return bad_tensor(absl::StrCat(
          "its data ends at byte ", *end, " of the data section but the file",
          " holds only ", data_size, " (truncated?)"));
    }
    const uint64_t bytes = static_cast<uint64_t>(*end - *begin);
    uint64_t elements = 1;
    bool fits = true;
    for (const Json& d : *shape) {
      auto n = JsonInt64(d);
      if (!n.ok() || *n < 0) return bad_tensor("shape has a bad dimension");
      info.shape.push_back(*n);
      if (*n != 0 && elements > bytes / static_cast<uint64_t>(*n)) {
        fits = false;  // more elements than bytes: no overflow below
      } else {
        elements *= static_cast<uint64_t>(*n);
      }
    }
    if (!fits || elements * item != bytes) {
      return bad_tensor(absl::StrCat(
          "shape [", absl::StrJoin(info.shape, ", "), "] of ", info.dtype,
          " does not match its ", bytes, " data bytes"));
    }
    info.begin = data_start + static_cast<uint64_t>(*begin);
    info.end = data_start + static_cast<uint64_t>(*end);
    result->tensors_.emplace(name, std::move(info));
  }
  return std::shared_ptr<const SafetensorsFile>(std::move(result));
}

const SafetensorInfo* SafetensorsFile::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

absl::StatusOr<std::map<std::string, std::string>> ReadSafetensorsIndex(
    const std::string& path, const std::string& root) {
  auto text = CheckpointFile::ReadWhole(path, kMaxIndexBytes,
                                        "safetensors index", root);
  if (!text.ok()) return text.status();
  auto index = ParseJson(*text, path);
  if (!index.ok()) return index.status();
  const Json* map = JsonMember(*index, "weight_map");
  if (map == nullptr || !map->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " has no \"weight_map\" object"));
  }
  std::map<std::string, std::string> files;
  // Names are relative to the index's folder (an absolute one stays).
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  for (const auto& [tensor, file] : map->items()) {
    if (!file.is_string() || file.get_ref<const std::string&>().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": weight_map[\"", tensor, "\"] is not a file name"));
    }
    const std::string& name = file.get_ref<const std::string&>();
    files[tensor] = (dir / name).string();
  }
  return files;
}

absl::Status WriteSafetensors(
    const std::string& path,
    const std::vector<std::pair<std::string, SafetensorInfo>>& tensors,
    const std::map<std::string, std::string>& data) {
  Json entries = Json::object();
  std::string body;
  for (const auto& [name, info] : tensors) {
    const std::string& bytes = data.at(name);
    entries[name] = {
        {"dtype", info.dtype},
        {"shape", info.shape},
        {"data_offsets", {body.size(), body.size() + bytes.size()}}};
    body += bytes;
  }
  std::string header = entries.dump();
  header.append((8 - header.size() % 8) % 8, ' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  uint8_t len[8];
  for (int i = 0; i < 8; ++i)
    len[i] = static_cast<uint8_t>(header.size() >> (8 * i));
  out.write(reinterpret_cast<const char*>(len), 8);
  out << header << body;
  out.flush();
  if (!out) {
    return absl::DataLossError(absl::StrCat("writing ", path, " failed"));
  }
  return absl::OkStatus();
}

}  // namespace engram::checkpoint
