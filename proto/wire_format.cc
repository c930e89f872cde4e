#include "proto/wire_format.h"

#include <bit>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

static_assert(std::endian::native == std::endian::little,
              "the wire format carries little-endian rows and ids");

namespace engram::wire {
namespace {

constexpr uint32_t kVarint = 0;
constexpr uint32_t kLengthDelimited = 2;
constexpr uint32_t kFixed32 = 5;
constexpr uint32_t kFixed64 = 1;

size_t VarintSize(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

uint8_t* PutVarint(uint64_t v, uint8_t* p) {
  while (v >= 0x80) {
    *p++ = static_cast<uint8_t>(v | 0x80);
    v >>= 7;
  }
  *p++ = static_cast<uint8_t>(v);
  return p;
}

uint8_t* PutTag(uint32_t field, uint32_t type, uint8_t* p) {
  return PutVarint((field << 3) | type, p);
}

size_t PackedSize(std::span<const int64_t> values) {
  size_t n = 0;
  for (int64_t v : values) n += VarintSize(static_cast<uint64_t>(v));
  return n;
}

// Sequential reader over the slices of a ByteBuffer.
class SliceReader {
 public:
  explicit SliceReader(const grpc::ByteBuffer& buffer) {
    // Dump only copies slice references, never the bytes.
    if (!buffer.Dump(&slices_).ok()) slices_.clear();
    for (const grpc::Slice& s : slices_) remaining_ += s.size();
  }
  size_t remaining() const { return remaining_; }

  bool ReadVarint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t byte;
      if (!Read(&byte, 1)) return false;
      *v |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if ((byte & 0x80) == 0) return true;
    }
    return false;
  }
  // Points `*p` at the next `n` bytes when they lie in one slice (and
  // consumes them); false (nothing consumed) when they straddle slices.
  bool Peek(size_t n, const uint8_t** p) {
    if (n > remaining_ || index_ >= slices_.size() ||
        slices_[index_].size() - offset_ < n) {
      return false;
    }
    *p = slices_[index_].begin() + offset_;
    return Read(nullptr, n);
  }
  // Copies `n` bytes into `dst` (nullptr skips them).
  bool Read(void* dst, size_t n) {
    if (n > remaining_) return false;
    uint8_t* out = static_cast<uint8_t*>(dst);
    while (n > 0) {
      const grpc::Slice& s = slices_[index_];
      size_t take = std::min(n, s.size() - offset_);
      if (out != nullptr) {
        std::memcpy(out, s.begin() + offset_, take);
        out += take;
      }
      offset_ += take;
      n -= take;
      remaining_ -= take;
      if (offset_ == s.size()) {
        ++index_;
        offset_ = 0;
      }
    }
    return true;
  }

 private:
  std::vector<grpc::Slice> slices_;
  size_t index_ = 0;
  size_t offset_ = 0;
  size_t remaining_ = 0;
};

absl::Status Malformed(const char* what) {
  return absl::DataLossError(absl::StrCat("malformed LookupResponse: ", what));
}

absl::Status WithResultIndex(const absl::Status& s, size_t k) {
  return absl::Status(s.code(),
                      absl::StrCat("results[", k, "]: ", s.message()));
}

}  // namespace

size_t LookupResponseHeaderSize(std::span<const int64_t> shape,
                                size_t data_bytes) {
  const size_t packed = PackedSize(shape);
  return 1 + VarintSize(packed) + packed  // shape
         + 1 + 1                          // dtype (small enum)
         + 1 + VarintSize(data_bytes);    // data tag + length
}

size_t EncodeLookupResponseHeader(std::span<const int64_t> shape, int dtype,
                                  size_t data_bytes, uint8_t* out) {
  uint8_t* p = out;
  p = PutTag(1, kLengthDelimited, p);
  p = PutVarint(PackedSize(shape), p);
  for (int64_t v : shape) p = PutVarint(static_cast<uint64_t>(v), p);
  p = PutTag(2, kVarint, p);
  p = PutVarint(static_cast<uint64_t>(dtype), p);
  p = PutTag(3, kLengthDelimited, p);
  p = PutVarint(data_bytes, p);
  return static_cast<size_t>(p - out);
}

size_t GatherResponseHeaderSize(size_t data_bytes) {
  return 1 + VarintSize(data_bytes);
}

size_t EncodeGatherResponseHeader(size_t data_bytes, uint8_t* out) {
  uint8_t* p = PutTag(1, kLengthDelimited, out);
  p = PutVarint(data_bytes, p);
  return static_cast<size_t>(p - out);
}

namespace {

// Decodes LookupResponse fields until `end` bytes remain in `reader`.
absl::Status DecodeLookupFields(SliceReader& reader, size_t end,
                                std::span<uint8_t> out, DecodedLookup* result) {
  bool saw_data = false;
  while (reader.remaining() > end) {
    uint64_t tag;
    if (!reader.ReadVarint(&tag)) return Malformed("truncated tag");
    const uint32_t field = static_cast<uint32_t>(tag >> 3);
    const uint32_t type = static_cast<uint32_t>(tag & 7);
    uint64_t value = 0;
    if (field == 1 && type == kLengthDelimited) {  // packed shape
      uint64_t len;
      if (!reader.ReadVarint(&len) || len > reader.remaining())
        return Malformed("bad shape length");
      const size_t end = reader.remaining() - len;
      while (reader.remaining() > end) {
        if (!reader.ReadVarint(&value)) return Malformed("bad shape value");
        result->shape.push_back(static_cast<int64_t>(value));
      }
    } else if (field == 1 && type == kVarint) {  // unpacked shape element
      if (!reader.ReadVarint(&value)) return Malformed("bad shape value");
      result->shape.push_back(static_cast<int64_t>(value));
    } else if (field == 2 && type == kVarint) {
      if (!reader.ReadVarint(&value)) return Malformed("bad dtype");
      result->dtype = static_cast<int>(value);
    } else if (field == 3 && type == kLengthDelimited) {
      uint64_t len;
      if (!reader.ReadVarint(&len) || len > reader.remaining())
        return Malformed("bad data length");
      if (len != out.size() && !(len == 0 && saw_data)) {
        return absl::InvalidArgumentError(
            absl::StrCat("lookup returned ", len,
                         " bytes of rows; the output "
                         "buffer holds ",
                         out.size()));
      }
      if (!reader.Read(out.data(), len)) return Malformed("truncated data");
      result->data_bytes = len;
      saw_data = true;
    } else if (field == 4 && type == kLengthDelimited) {  // packed floats
      uint64_t len;
      if (!reader.ReadVarint(&len) || len > reader.remaining() || len % 4)
        return Malformed("bad values length");
      size_t old = result->values.size();
      result->values.resize(old + len / 4);
      if (!reader.Read(result->values.data() + old, len))
        return Malformed("truncated values");
    } else {  // skip unknown fields
      switch (type) {
        case kVarint:
          if (!reader.ReadVarint(&value)) return Malformed("bad varint");
          break;
        case kFixed64:
          if (!reader.Read(nullptr, 8)) return Malformed("bad fixed64");
          break;
        case kFixed32:
          if (!reader.Read(nullptr, 4)) return Malformed("bad fixed32");
          break;
        case kLengthDelimited:
          if (!reader.ReadVarint(&value) || !reader.Read(nullptr, value))
            return Malformed("bad length-delimited field");
          break;
        default:
          return Malformed("unknown wire type");
      }
    }
  }
  if (reader.remaining() != end) return Malformed("field overruns its message");
  return absl::OkStatus();
}

}  // namespace

absl::Status DecodeLookupResponse(const grpc::ByteBuffer& response,
                                  std::span<uint8_t> out,
                                  DecodedLookup* result) {
  SliceReader reader(response);
  return DecodeLookupFields(reader, 0, out, result);
}

absl::Status DecodeLookupManyResponse(const grpc::ByteBuffer& response,
                                      std::span<const std::span<uint8_t>> outs,
                                      std::vector<DecodedLookup>* results) {
  SliceReader reader(response);
  results->assign(outs.size(), DecodedLookup());
  size_t k = 0;
  while (reader.remaining() > 0) {
    uint64_t tag, len;
    if (!reader.ReadVarint(&tag) || tag != ((1 << 3) | kLengthDelimited) ||
        !reader.ReadVarint(&len) || len > reader.remaining()) {
      return Malformed("bad LookupManyResponse.results entry");
    }
    if (k == outs.size()) {
      return absl::DataLossError(
          absl::StrCat("LookupMany returned more than the ", outs.size(),
                       " results asked for"));
    }
    if (absl::Status s = DecodeLookupFields(reader, reader.remaining() - len,
                                            outs[k], &(*results)[k]);
        !s.ok()) {
      return WithResultIndex(s, k);
    }
    ++k;
  }
  if (k != outs.size()) {
    return absl::DataLossError(absl::StrCat(
        "LookupMany returned ", k, " results for ", outs.size(), " lookups"));
  }
  return absl::OkStatus();
}

size_t LookupManyEntrySize(std::span<const int64_t> shape, size_t data_bytes) {
  const size_t sub = LookupResponseHeaderSize(shape, data_bytes) + data_bytes;
  return 1 + VarintSize(sub) + sub;
}

size_t EncodeLookupManyEntryHeader(std::span<const int64_t> shape, int dtype,
                                   size_t data_bytes, uint8_t* out) {
  const size_t sub = LookupResponseHeaderSize(shape, data_bytes) + data_bytes;
  uint8_t* p = PutTag(1, kLengthDelimited, out);
  p = PutVarint(sub, p);
  p += EncodeLookupResponseHeader(shape, dtype, data_bytes, p);
  return static_cast<size_t>(p - out);
}

grpc::ByteBuffer EncodeLookupManyRequest(
    std::span<const grpc::ByteBuffer> lookups) {
  std::vector<grpc::Slice> slices;
  for (const grpc::ByteBuffer& lookup : lookups) {
    uint8_t prefix[16];
    uint8_t* p = PutTag(1, kLengthDelimited, prefix);
    p = PutVarint(lookup.Length(), p);
    slices.emplace_back(prefix, static_cast<size_t>(p - prefix));
    std::vector<grpc::Slice> parts;
    if (lookup.Dump(&parts).ok()) {
      for (grpc::Slice& part : parts) slices.push_back(std::move(part));
    }
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

absl::Status ForEachGatheredRow(
    const grpc::ByteBuffer& response, size_t row_bytes, size_t rows,
    const std::function<void(size_t, const uint8_t*)>& row) {
  SliceReader reader(response);
  uint64_t tag = 0, len = 0;
  if (reader.remaining() == 0 && rows * row_bytes == 0) return absl::OkStatus();
  if (!reader.ReadVarint(&tag) || tag != 0x0a || !reader.ReadVarint(&len) ||
      len != reader.remaining()) {
    return absl::DataLossError("malformed GatherResponse");
  }
  if (len != rows * row_bytes) {
    return absl::DataLossError(absl::StrCat("GatherResponse carries ", len,
                                            " bytes; ", rows, " rows of ",
                                            row_bytes, " expected"));
  }
  std::vector<uint8_t> straddling(row_bytes);
  for (size_t j = 0; j < rows; ++j) {
    const uint8_t* p = nullptr;
    if (!reader.Peek(row_bytes, &p)) {
      reader.Read(straddling.data(), row_bytes);
      p = straddling.data();
    }
    row(j, p);
  }
  return absl::OkStatus();
}

grpc::ByteBuffer EncodeLookupRequest(int64_t layer_id,
                                     std::span<const int64_t> shape,
                                     std::span<const int64_t> ids,
                                     int output_dtype, int id_form,
                                     int64_t head_begin, int64_t head_end) {
  const size_t id_bytes = ids.size_bytes();
  const size_t packed = PackedSize(shape);
  std::vector<uint8_t> header(96 + 10 * shape.size());
  uint8_t* p = header.data();
  if (layer_id != 0) {
    p = PutTag(1, kVarint, p);
    p = PutVarint(static_cast<uint64_t>(layer_id), p);
  }
  p = PutTag(2, kLengthDelimited, p);
  p = PutVarint(packed, p);
  for (int64_t v : shape) p = PutVarint(static_cast<uint64_t>(v), p);
  if (output_dtype != 0) {
    p = PutTag(5, kVarint, p);
    p = PutVarint(static_cast<uint64_t>(output_dtype), p);
  }
  // Fields 7-9 go before the ids: the ids must stay the last slice.
  const int64_t trailing[] = {id_form, head_begin, head_end};
  for (int f = 0; f < 3; ++f) {
    if (trailing[f] == 0) continue;
    p = PutTag(7 + f, kVarint, p);
    p = PutVarint(static_cast<uint64_t>(trailing[f]), p);
  }
  p = PutTag(3, kLengthDelimited, p);
  p = PutVarint(id_bytes, p);
  grpc::Slice slices[2] = {
      grpc::Slice(header.data(), static_cast<size_t>(p - header.data())),
      grpc::Slice(ids.data(), id_bytes, grpc::Slice::STATIC_SLICE)};
  return grpc::ByteBuffer(slices, id_bytes > 0 ? 2 : 1);
}

}  // namespace engram::wire
