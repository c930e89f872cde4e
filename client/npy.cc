#include "client/npy.h"

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

namespace engram {
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

absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("cannot open ", path, ": ", strerror(errno)));
  }
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is not a readable .npy file: ", why));
  };
  char magic[8];
  if (!in.read(magic, 8) || std::memcmp(magic, kMagic, 6) != 0) {
    return bad("missing \\x93NUMPY magic");
  }
  const int major = static_cast<uint8_t>(magic[6]);
  uint32_t header_len = 0;
  if (major == 1) {
    uint8_t len[2];
    if (!in.read(reinterpret_cast<char*>(len), 2)) return bad("truncated");
    header_len = len[0] | (len[1] << 8);
  } else if (major == 2 || major == 3) {
    uint8_t len[4];
    if (!in.read(reinterpret_cast<char*>(len), 4)) return bad("truncated");
    header_len = len[0] | (len[1] << 8) | (len[2] << 16) |
                 (static_cast<uint32_t>(len[3]) << 24);
  } else {
    return bad(absl::StrCat("format version ", major, " is unknown"));
  }
  std::string dict(header_len, '\0');
  if (!in.read(dict.data(), header_len)) return bad("truncated header");

  NpyArray array;
  std::string descr, fortran, shape;
  if (!DictValue(dict, "descr", &descr) ||
      !DictValue(dict, "fortran_order", &fortran) ||
      !DictValue(dict, "shape", &shape)) {
    return bad("header lacks descr, fortran_order or shape");
  }
  array.descr =
      std::string(absl::StripSuffix(absl::StripPrefix(descr, "'"), "'"));
  if (fortran != "False") return bad("Fortran-order arrays are not supported");
  if (array.descr.empty() || array.descr[0] == '>') {
    return bad(absl::StrCat("dtype ", array.descr,
                            " is big-endian or missing; use little-endian"));
  }
  array.item_size = ItemSize(array.descr);
  if (array.item_size == 0) {
    return bad(absl::StrCat("dtype ", array.descr, " is not a plain number"));
  }
  std::string dims(absl::StripSuffix(absl::StripPrefix(shape, "("), ")"));
  for (absl::string_view part :
       absl::StrSplit(dims, ',', absl::SkipWhitespace())) {
    int64_t d;
    if (!absl::SimpleAtoi(part, &d) || d < 0) {
      return bad(absl::StrCat("bad shape ", shape));
    }
    array.shape.push_back(d);
  }
  // Sized from the file before anything is allocated: a header may claim
  // any shape (its product may even overflow).
  const std::streamoff data_start = in.tellg();
  in.seekg(0, std::ios::end);
  const uint64_t available = static_cast<uint64_t>(
      std::max<std::streamoff>(0, in.tellg() - data_start));
  in.seekg(data_start);
  uint64_t bytes = array.item_size;
  for (int64_t d : array.shape) {
    if (d != 0 && bytes > available / static_cast<uint64_t>(d)) {
      return bad(absl::StrCat("shape ", shape, " needs more than the ",
                              available, " data bytes the file holds"));
    }
    bytes *= static_cast<uint64_t>(d);
  }
  array.data.resize(bytes);
  if (bytes > 0 && !in.read(reinterpret_cast<char*>(array.data.data()),
                            static_cast<std::streamsize>(bytes))) {
    return bad(absl::StrCat("data is shorter than shape ", shape, " needs"));
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

}  // namespace engram
