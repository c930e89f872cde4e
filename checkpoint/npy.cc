#include "checkpoint/npy.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "checkpoint/checkpoint_file.h"

namespace engram::checkpoint {
namespace {

constexpr char kMagic[] = "\x93NUMPY";

// Value text of `key` in the header dict, e.g. 'descr': '<f4'.
bool DictValue(const std::string& dict, const std::string& key,
               std::string* value) {
  size_t k = dict.find("'" + key + "'");
  if (k == std::string::npos) return false;
  size_t colon = dict.find(':', k);
  if (colon == std::string::npos) return false;
  size_t start = colon + 1;
  while (start < dict.size() && dict[start] == ' ') ++start;
  size_t end;
  if (dict[start] == '(') {
    end = dict.find(')', start);
    if (end == std::string::npos) return false;
    ++end;
  } else if (dict[start] == '\'') {
    end = dict.find('\'', start + 1);
    if (end == std::string::npos) return false;
    ++end;
  } else {
    end = dict.find_first_of(",}", start);
  }
  *value = dict.substr(start, end - start);
  return true;
}

size_t ItemSize(const std::string& descr) {
  if (descr.size() < 3) return 0;
  int64_t n = 0;
  if (!absl::SimpleAtoi(descr.substr(2), &n)) return 0;
  return static_cast<size_t>(n);
}

}  // namespace

int64_t NpyArray::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<NpyHeader> ParseNpyHeader(const uint8_t* bytes, uint64_t size,
                                         uint64_t file_size,
                                         const std::string& path) {
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is not a readable .npy file: ", why));
  };
  if (size < 10 || std::memcmp(bytes, kMagic, 6) != 0) {
    return bad("missing \\x93NUMPY magic");
  }
  const int major = bytes[6];
  uint64_t header_len = 0, pos = 0;
  if (major == 1) {
    header_len = bytes[8] | (bytes[9] << 8);
    pos = 10;
  } else if (major == 2 || major == 3) {
    if (size < 12) return bad("truncated");
    header_len = bytes[8] | (bytes[9] << 8) | (bytes[10] << 16) |
                 (static_cast<uint32_t>(bytes[11]) << 24);
    pos = 12;
  } else {
    return bad(absl::StrCat("format version ", major, " is unknown"));
  }
  if (header_len > kMaxNpyHeaderBytes) {
    return bad(absl::StrCat("its header claims ", header_len,
                            " bytes; the limit is ", kMaxNpyHeaderBytes));
  }
  if (header_len > size - pos || file_size < size) {
    return bad("truncated header");
  }
  const std::string dict(reinterpret_cast<const char*>(bytes + pos),
                         header_len);
  NpyHeader header;
  header.data_offset = pos + header_len;
  std::string descr, fortran, shape;
  if (!DictValue(dict, "descr", &descr) ||
      !DictValue(dict, "fortran_order", &fortran) ||
      !DictValue(dict, "shape", &shape)) {
    return bad("header lacks descr, fortran_order or shape");
  }
  header.descr =
      std::string(absl::StripSuffix(absl::StripPrefix(descr, "'"), "'"));
  if (fortran != "False") return bad("Fortran-order arrays are not supported");
  if (header.descr.empty() || header.descr[0] == '>') {
    return bad(absl::StrCat("dtype ", header.descr,
                            " is big-endian or missing; use little-endian"));
  }
  header.item_size = ItemSize(header.descr);
  if (header.item_size == 0) {
    return bad(absl::StrCat("dtype ", header.descr, " is not a plain number"));
  }
  std::string dims(absl::StripSuffix(absl::StripPrefix(shape, "("), ")"));
  for (absl::string_view part :
       absl::StrSplit(dims, ',', absl::SkipWhitespace())) {
    int64_t d;
    if (!absl::SimpleAtoi(part, &d) || d < 0) {
      return bad(absl::StrCat("bad shape ", shape));
    }
    header.shape.push_back(d);
  }
  // Checked against the file before anything is allocated: a header may
  // claim any shape (its product may even overflow).
  const uint64_t available = file_size - header.data_offset;
  uint64_t need = header.item_size;
  for (int64_t d : header.shape) {
    if (d != 0 && need > available / static_cast<uint64_t>(d)) {
      return bad(absl::StrCat("shape ", shape, " needs more than the ",
                              available, " data bytes the file holds"));
    }
    need *= static_cast<uint64_t>(d);
  }
  if (need > available) {  // a 0-d array's one item, or the last factor
    return bad(absl::StrCat("shape ", shape, " needs ", need,
                            " data bytes; the file holds ", available));
  }
  header.data_bytes = need;
  return header;
}

absl::StatusOr<NpyHeader> ReadNpyHeader(const CheckpointFile& file) {
  absl::StatusOr<std::string> start = file.ReadPrefix(12);
  if (!start.ok()) return start.status();
  // The header's length, from the prefix (invalid prefixes are reported by
  // the parse below).
  uint64_t header_end = start->size();
  if (start->size() >= 10) {
    const auto* b = reinterpret_cast<const uint8_t*>(start->data());
    const uint64_t len16 = b[8] | (b[9] << 8);
    const uint64_t len32 =
        start->size() < 12
            ? 0
            : len16 | (b[10] << 16) | (static_cast<uint64_t>(b[11]) << 24);
    header_end = b[6] == 1 ? 10 + len16 : 12 + len32;
  }
  absl::StatusOr<std::string> bytes =
      file.ReadPrefix(std::min(header_end, 12 + kMaxNpyHeaderBytes));
  if (!bytes.ok()) return bytes.status();
  return ParseNpyHeader(reinterpret_cast<const uint8_t*>(bytes->data()),
                        bytes->size(), file.size(), file.path());
}

absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  auto file = CheckpointFile::Open(path);
  if (!file.ok()) return file.status();
  auto header = ReadNpyHeader(**file);
  if (!header.ok()) return header.status();
  NpyArray array;
  array.descr = header->descr;
  array.shape = header->shape;
  array.item_size = header->item_size;
  array.data.resize(header->data_bytes);
  if (absl::Status s = (*file)->ReadAt(header->data_offset, array.data.size(),
                                       array.data.data());
      !s.ok()) {
    return s;
  }
  return array;
}

absl::Status WriteNpy(const std::string& path, const std::string& descr,
                      const std::vector<int64_t>& shape, const void* data,
                      size_t bytes) {
  std::string dims = absl::StrJoin(shape, ", ");
  if (shape.size() == 1) dims += ",";
  std::string dict =
      absl::StrCat("{'descr': '", descr,
                   "', 'fortran_order': False, 'shape': (", dims, "), }");
  // Pad so that magic + length + dict + '\n' is a multiple of 64.
  const size_t unpadded = 10 + dict.size() + 1;
  dict.append((64 - unpadded % 64) % 64, ' ');
  dict += '\n';
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot write ", path, ": ", strerror(errno)));
  }
  const uint16_t len = static_cast<uint16_t>(dict.size());
  out.write(kMagic, 6);
  out.put(1);
  out.put(0);
  out.put(static_cast<char>(len & 0xff));
  out.put(static_cast<char>(len >> 8));
  out.write(dict.data(), static_cast<std::streamsize>(dict.size()));
  out.write(static_cast<const char*>(data),
            static_cast<std::streamsize>(bytes));
  if (!out)
    return absl::DataLossError(absl::StrCat("writing ", path, " failed"));
  return absl::OkStatus();
}

}  // namespace engram::checkpoint
