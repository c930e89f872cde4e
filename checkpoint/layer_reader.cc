#include "checkpoint/layer_reader.h"

#include <algorithm>
#include <cstring>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "checkpoint/npy.h"
#include "checkpoint/safetensors.h"
#include "common/dtype.h"
#include "common/status_context.h"

namespace engram::checkpoint {
namespace {

// "; tensors there like it: a, b, c" — the (at most 6) names sharing the
// longest prefix with `wanted`, so a typo shows its fix.
std::string NamesLike(std::vector<std::string> names,
                      const std::string& wanted) {
  if (names.empty()) return "; it holds no tensors";
  auto shared = [&](const std::string& n) {
    size_t k = 0;
    while (k < n.size() && k < wanted.size() && n[k] == wanted[k]) ++k;
    return k;
  };
  std::stable_sort(names.begin(), names.end(),
                   [&](const std::string& a, const std::string& b) {
                     return shared(a) > shared(b);
                   });
  const size_t shown = std::min<size_t>(names.size(), 6);
  return absl::StrCat("; tensors there like it: ",
                      absl::StrJoin(names.begin(), names.begin() + shown, ", "),
                      names.size() > shown
                          ? absl::StrCat(" (", names.size(), " in all)")
                          : std::string());
}

// True when a source element type (safetensors name) is the layer's own
// float type, stored without conversion.
bool SameFloat(const std::string& st_dtype, DType layer) {
  return (st_dtype == "F32" && layer == DType::kFloat32) ||
         (st_dtype == "BF16" && layer == DType::kBFloat16) ||
         (st_dtype == "F16" && layer == DType::kFloat16);
}

// The safetensors name of an .npy descr's element type, for one set of
// rules: "<f4" -> F32, "<f2" -> F16, "<u2"/"<V2" -> BF16 bits (NumPy has
// no bfloat16; training code saves its bits as uint16 or void2).
std::string NpyAsSafetensorsDType(const std::string& descr, DType layer) {
  const std::string t = descr.substr(1);
  if (t == "f4") return "F32";
  if (t == "f2") return "F16";
  if ((t == "u2" || t == "V2") && layer == DType::kBFloat16) return "BF16";
  return descr;  // taken as opaque bytes by a uint8 layer only
}

// Checks one source's element type against the layer's and returns whether
// it is converted from float32; INVALID_ARGUMENT naming `what` otherwise.
absl::StatusOr<bool> CheckDType(const std::string& st_dtype,
                                const LayerLayout& layout,
                                const std::string& what) {
  if (layout.dtype == DType::kUInt8 || SameFloat(st_dtype, layout.dtype)) {
    return false;  // copied as bytes
  }
  if (st_dtype == "F32" &&
      (layout.dtype == DType::kBFloat16 || layout.dtype == DType::kFloat16)) {
    return true;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      what, " holds ", st_dtype, " elements; a ", DTypeName(layout.dtype),
      " layer takes ", DTypeName(layout.dtype),
      " (or float32, converted) sources; opaque rows are dtype uint8"));
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

}  // namespace

absl::StatusOr<std::unique_ptr<LayerReader>> LayerReader::Open(
    const LayerSpec& spec, const std::string& root) {
  std::unique_ptr<LayerReader> reader(new LayerReader());
  reader->layer_id_ = spec.layer_id;
  reader->replace_ = spec.replace;
  reader->layout_ = spec.layout;
  const LayerLayout& layout = reader->layout_;
  const std::string where = absl::StrCat("layer ", spec.layer_id);
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", why));
  };
  auto with_layer = [&](const absl::Status& s) {
    return WithContext(s, where);
  };
  size_t row_bytes = 0;  // what the columns add up to
  const int heads = layout.num_heads();

  if (spec.source.format == LayerSource::Format::kNpy) {
    for (int h = 0; h < heads; ++h) {
      const std::string& path = spec.source.files[h];
      auto file = CheckpointFile::Open(path, root);
      if (!file.ok()) return with_layer(file.status());
      auto header = ReadNpyHeader(**file);
      if (!header.ok()) return with_layer(header.status());
      const std::string what = absl::StrCat("head ", h, " (", path, ")");
      const std::vector<int64_t>& shape = header->shape;
      if (shape.empty() || shape.size() > 2 ||
          shape[0] != layout.table_vocab_sizes[h]) {
        return bad(absl::StrCat(what, " has shape ", ShapeText(shape),
                                "; head ", h, " needs [",
                                layout.table_vocab_sizes[h], ", D]"));
      }
      auto convert = CheckDType(
          NpyAsSafetensorsDType(header->descr, layout.dtype), layout, what);
      if (!convert.ok()) return convert.status();
      const int64_t width = shape.size() == 2 ? shape[1] : 1;
      const size_t src_row = width * header->item_size;
      const size_t dst_row =
          *convert ? width * DTypeSize(layout.dtype) : src_row;
      if (dst_row != layout.row_bytes()) {
        return bad(absl::StrCat(what, " has ", dst_row, "-byte rows (shape ",
                                ShapeText(shape), ", ", header->descr,
                                "); the layer's rows are ", layout.row_bytes(),
                                " bytes (D = ", layout.embedding_dim, " ",
                                DTypeName(layout.dtype), ")"));
      }
      Column c;
      c.file = *file;
      c.head = h;
      c.head_offset.assign(heads, 0);
      c.head_offset[h] = header->data_offset;
      c.src_row_bytes = src_row;
      c.from_float32 = *convert;
      reader->columns_.push_back(std::move(c));
      reader->source_bytes_ += header->data_bytes;
    }
    // One column per head: ReadRows picks the one whose head it is.
    return reader;
  }

  // safetensors: where each tensor lives.
  std::map<std::string, std::string> weight_map;
  if (!spec.source.index.empty()) {
    auto m = ReadSafetensorsIndex(spec.source.index, root);
    if (!m.ok()) return with_layer(m.status());
    weight_map = *std::move(m);
  }
  std::map<std::string, std::shared_ptr<const SafetensorsFile>> opened;
  auto open = [&](const std::string& path)
      -> absl::StatusOr<std::shared_ptr<const SafetensorsFile>> {
    auto it = opened.find(path);
    if (it != opened.end()) return it->second;
    auto f = SafetensorsFile::Open(path, root);
    if (!f.ok()) return with_layer(f.status());
    opened[path] = *f;
    return *f;
  };
  int64_t total_rows = 0;
  std::vector<uint64_t> head_start;
  for (int64_t n : layout.table_vocab_sizes) {
    head_start.push_back(total_rows);
    total_rows += n;
  }
  for (const std::string& name : spec.source.tensors) {
    const std::string what = absl::StrCat("tensor ", name);
    std::shared_ptr<const SafetensorsFile> file;
    const SafetensorInfo* info = nullptr;
    if (!weight_map.empty()) {
      auto it = weight_map.find(name);
      if (it == weight_map.end()) {
        std::vector<std::string> names;
        for (const auto& [n, file] : weight_map) names.push_back(n);
        return bad(absl::StrCat(what, " is not in ", spec.source.index,
                                NamesLike(names, name)));
      }
      auto path = ResolvePath(it->second, "", root);
      if (!path.ok()) return with_layer(path.status());
      auto f = open(*path);
      if (!f.ok()) return f.status();
      file = *f;
      info = file->Find(name);
      if (info == nullptr) {
        return bad(absl::StrCat(what, " is not in ", *path,
                                " although the index says so"));
      }
    } else {
      for (const std::string& path : spec.source.files) {
        auto f = open(path);
        if (!f.ok()) return f.status();
        if ((info = (*f)->Find(name)) != nullptr) {
          file = *f;
          break;
        }
      }
      if (info == nullptr) {
        std::vector<std::string> names;
        for (const std::string& path : spec.source.files) {
          auto f = open(path);
          if (!f.ok()) continue;
          for (const auto& [n, tensor] : (*f)->tensors()) names.push_back(n);
        }
        return bad(absl::StrCat(what, " is in none of ",
                                absl::StrJoin(spec.source.files, ", "),
                                NamesLike(names, name)));
      }
    }
    if (info->shape.empty() || info->shape[0] != total_rows) {
      return bad(absl::StrCat(what, " has shape ", ShapeText(info->shape), " (",
                              info->dtype, "); table_vocab_sizes add up to ",
                              total_rows, " rows"));
    }
    auto convert = CheckDType(info->dtype, layout, what);
    if (!convert.ok()) return with_layer(convert.status());
    const size_t src_row =
        total_rows == 0 ? 0 : (info->end - info->begin) / total_rows;
    const size_t dst_row =
        *convert ? src_row / 4 * DTypeSize(layout.dtype) : src_row;
    Column c;
    c.file = std::shared_ptr<const CheckpointFile>(file, &file->file());
    for (int h = 0; h < heads; ++h)
      c.head_offset.push_back(info->begin + head_start[h] * src_row);
    c.src_row_bytes = src_row;
    c.dst_offset = row_bytes;
    c.from_float32 = *convert;
    row_bytes += dst_row;
    reader->columns_.push_back(std::move(c));
    reader->source_bytes_ += info->end - info->begin;
  }
  if (row_bytes != layout.row_bytes()) {
    std::vector<std::string> parts;
    for (size_t i = 0; i < reader->columns_.size(); ++i) {
      const Column& c = reader->columns_[i];
      const size_t next = i + 1 < reader->columns_.size()
                              ? reader->columns_[i + 1].dst_offset
                              : row_bytes;
      parts.push_back(
          absl::StrCat(spec.source.tensors[i], " ", next - c.dst_offset));
    }
    return bad(absl::StrCat("the tensors add up to ", row_bytes, "-byte rows (",
                            absl::StrJoin(parts, " + "),
                            "); the layer's rows are ", layout.row_bytes(),
                            " bytes (D = ", layout.embedding_dim, " ",
                            DTypeName(layout.dtype), ")"));
  }
  return reader;
}

absl::Status LayerReader::ReadRows(int head, int64_t row, int64_t rows,
                                   uint8_t* dst) const {
  const size_t row_bytes = layout_.row_bytes();
  // A column that is the whole row, unconverted, is read straight into
  // place; the others go through a small buffer that stays in cache.
  constexpr size_t kScratchBytes = 2 << 20;
  thread_local std::vector<uint8_t> scratch;
  for (const Column& c : columns_) {
    if (c.head >= 0 && c.head != head) continue;  // npy: another head's file
    const uint64_t offset = c.head_offset[head] + row * c.src_row_bytes;
    if (!c.from_float32 && c.src_row_bytes == row_bytes) {
      if (absl::Status s = c.file->ReadAt(offset, rows * row_bytes, dst);
          !s.ok()) {
        return s;
      }
      continue;
    }
    const int64_t step = std::max<int64_t>(
        1, static_cast<int64_t>(kScratchBytes / c.src_row_bytes));
    scratch.resize(static_cast<size_t>(step) * c.src_row_bytes);
    const size_t dst_width =
        c.from_float32 ? c.src_row_bytes / 4 * DTypeSize(layout_.dtype)
                       : c.src_row_bytes;
    for (int64_t done = 0; done < rows; done += step) {
      const int64_t n = std::min(step, rows - done);
      if (absl::Status s = c.file->ReadAt(offset + done * c.src_row_bytes,
                                          n * c.src_row_bytes, scratch.data());
          !s.ok()) {
        return s;
      }
      uint8_t* out = dst + done * row_bytes + c.dst_offset;
      if (c.from_float32 && dst_width == row_bytes) {
        ConvertElements(scratch.data(), DType::kFloat32, out, layout_.dtype,
                        n * c.src_row_bytes / 4);
        continue;
      }
      for (int64_t r = 0; r < n; ++r) {
        const uint8_t* in = scratch.data() + r * c.src_row_bytes;
        if (c.from_float32) {
          ConvertElements(in, DType::kFloat32, out + r * row_bytes,
                          layout_.dtype, c.src_row_bytes / 4);
        } else {
          std::memcpy(out + r * row_bytes, in, c.src_row_bytes);
        }
      }
    }
  }
  return absl::OkStatus();
}

void LayerReader::Prefetch(int head, int64_t row, int64_t rows) const {
  for (const Column& c : columns_) {
    if (c.head >= 0 && c.head != head) continue;
    c.file->WillReadSequentially(c.head_offset[head] + row * c.src_row_bytes,
                                 static_cast<uint64_t>(rows) * c.src_row_bytes);
  }
}

}  // namespace engram::checkpoint
