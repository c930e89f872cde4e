#include "store/layer_builder.h"

#include <bit>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace engram {
namespace {

// Index of the first set bit in [begin, end) of `bits`, or -1.
int64_t FirstSet(const std::vector<uint64_t>& bits, int64_t begin,
                 int64_t end) {
  for (int64_t i = begin; i < end;) {
    uint64_t word = bits[i >> 6] >> (i & 63);
    if (word != 0) {
      int64_t hit = i + std::countr_zero(word);
      return hit < end ? hit : -1;
    }
    i = ((i >> 6) + 1) << 6;
  }
  return -1;
}

// Index of the first clear bit in [begin, end), or -1.
int64_t FirstClear(const std::vector<uint64_t>& bits, int64_t begin,
                   int64_t end) {
  for (int64_t i = begin; i < end;) {
    uint64_t word = ~bits[i >> 6] >> (i & 63);
    if (word != 0) {
      int64_t hit = i + std::countr_zero(word);
      return hit < end ? hit : -1;
    }
    i = ((i >> 6) + 1) << 6;
  }
  return -1;
}

void ClearRange(std::vector<uint64_t>& bits, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i)
    bits[i >> 6] &= ~(uint64_t{1} << (i & 63));
}

void SetRange(std::vector<uint64_t>& bits, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end;) {
    if ((i & 63) == 0 && end - i >= 64) {
      bits[i >> 6] = ~uint64_t{0};
      i += 64;
    } else {
      bits[i >> 6] |= uint64_t{1} << (i & 63);
      ++i;
    }
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<LayerBuilder>> LayerBuilder::Create(
    int64_t layer_id, LayerLayout layout, MemoryBudget* budget, bool pin_memory,
    std::vector<std::vector<RowRange>> owned, const ExportMapper* exporter,
    const TableFilesTarget* files) {
  if (absl::Status s = ValidateLayout(layout); !s.ok()) return s;
  const bool to_files = files != nullptr && !files->dir.empty();
  if (to_files && exporter != nullptr) {
    return absl::InternalError("--data_dir tables are not exported");
  }
  if (!owned.empty() && owned.size() != layout.table_vocab_sizes.size()) {
    return absl::InternalError("owned ranges must list every head");
  }
  // Per head: the byte ranges this process stores.
  const size_t row_bytes = layout.row_bytes();
  std::vector<std::vector<std::pair<size_t, size_t>>> resident(
      layout.num_heads());
  for (int h = 0; h < layout.num_heads(); ++h) {
    if (owned.empty()) {
      resident[h].emplace_back(0, layout.table_bytes(h));
    } else {
      for (RowRange r : owned[h])
        resident[h].emplace_back(r.begin * row_bytes, r.end * row_bytes);
    }
  }
  // Charged: what is really mapped (every table page-rounded) plus the
  // staging bitmaps, all up front. Up front because populate is
  // all-or-nothing: a layer that cannot fit is refused before its bytes
  // are streamed, not after. The pages are only touched as rows arrive and
  // locked at Finish, and an idle stream is ended by the server's watchdog.
  uint64_t bytes = 0, staging = 0;
  for (int h = 0; h < layout.num_heads(); ++h) {
    bytes += HostBuffer::ResidentBytes(layout.table_bytes(h), resident[h]);
    staging += (layout.table_vocab_sizes[h] + 63) / 64 * sizeof(uint64_t);
  }
  bool charged = budget->TryReserve(bytes + staging);
  if (!charged && to_files && budget->TryReserve(staging)) {
    bytes = 0;  // stored in files only: served from the page cache
    pin_memory = false;
    charged = true;
  }
  if (!charged) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "layer ", layer_id, " needs ", bytes + staging,
        " bytes (tables page-rounded, plus staging); memory budget has ",
        budget->limit() - std::min(budget->limit(), budget->used()), " of ",
        budget->limit(), " bytes free (--memory_limit_bytes)"));
  }
  std::unique_ptr<LayerBuilder> builder(new LayerBuilder(
      layer_id, std::move(layout), MemoryReservation(budget, bytes + staging),
      std::move(owned)));
  builder->pin_memory_ = pin_memory;
  builder->staging_bytes_ = staging;
  builder->resident_ = std::move(resident);
  // Plain whole tables may be pinned for CUDA; the rest are sparse.
  builder->whole_tables_ = builder->owned_.empty() && exporter == nullptr;
  const LayerLayout& l = builder->layout_;
  if (to_files) {
    auto made = LayerFiles::Create(
        *files, layer_id, l,
        builder->owned_.empty()
            ? std::vector<std::vector<std::pair<size_t, size_t>>>{}
            : builder->resident_,
        &builder->tables_);
    if (!made.ok()) return made.status();
    builder->files_ = *std::move(made);
  }
  MutexLock lock(&builder->mu_);
  for (int h = 0; h < l.num_heads(); ++h) {
    if (!to_files) {
      absl::StatusOr<HostBuffer> table =
          builder->whole_tables_
              ? HostBuffer::Allocate(l.table_bytes(h), /*try_pin=*/false)
              : HostBuffer::AllocateSparse(l.table_bytes(h),
                                           builder->resident_[h],
                                           /*try_pin=*/false, exporter);
      if (!table.ok()) return table.status();
      builder->tables_.push_back(*std::move(table));
    }
    builder->received_.emplace_back((l.table_vocab_sizes[h] + 63) / 64, 0);
    builder->received_per_head_.push_back(0);
    builder->rows_total_ += builder->OwnedRows(h);
  }
  return builder;
}

LayerBuilder::LayerBuilder(int64_t layer_id, LayerLayout layout,
                           MemoryReservation reservation,
                           std::vector<std::vector<RowRange>> owned)
    : layer_id_(layer_id),
      layout_(std::move(layout)),
      owned_(std::move(owned)),
      reservation_(std::move(reservation)) {}

int64_t LayerBuilder::OwnedRows(int head) const {
  if (owned_.empty()) return layout_.table_vocab_sizes[head];
  int64_t rows = 0;
  for (RowRange r : owned_[head]) rows += r.size();
  return rows;
}

absl::Status LayerBuilder::AddChunk(int64_t head, int64_t row_offset,
                                    std::string_view data) {
  const size_t row_bytes = layout_.row_bytes();
  if (data.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk for head ", head, " at row ", row_offset, " carries no rows"));
  }
  if (data.size() % row_bytes != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk for head ", head, " at row ", row_offset, " has ", data.size(),
        " bytes, not a whole number of ", row_bytes, "-byte rows (D = ",
        layout_.embedding_dim, ", ", DTypeName(layout_.dtype), ")"));
  }
  return FillRows(head, row_offset,
                  static_cast<int64_t>(data.size() / row_bytes),
                  [&data](uint8_t* dst) {
                    std::memcpy(dst, data.data(), data.size());
                    return absl::OkStatus();
                  });
}

absl::Status LayerBuilder::FillRows(
    int64_t head, int64_t row_offset, int64_t rows,
    const std::function<absl::Status(uint8_t* dst)>& fill) {
  if (head < 0 || head >= layout_.num_heads()) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk head ", head, " is out of range: layer ", layer_id_,
                     " has ", layout_.num_heads(), " heads"));
  }
  const int64_t rows_in_table = layout_.table_vocab_sizes[head];
  if (rows <= 0 || row_offset < 0 || row_offset > rows_in_table - rows) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk for head ", head, " covers rows [", row_offset, ", ",
        row_offset + rows, ") outside the table's ", rows_in_table, " rows"));
  }
  if (!owned_.empty()) {
    bool held = false;
    for (RowRange r : owned_[head]) {
      held |= r.begin <= row_offset && row_offset + rows <= r.end;
    }
    if (!held) {
      return absl::InvalidArgumentError(absl::StrCat(
          "chunk for head ", head, " covers rows [", row_offset, ", ",
          row_offset + rows, ") that this shard does not hold"));
    }
  }
  {  // claim the rows, so that another thread cannot fill them too
    MutexLock lock(&mu_);
    std::vector<uint64_t>& bits = received_[head];
    if (int64_t dup = FirstSet(bits, row_offset, row_offset + rows); dup >= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "chunk for head ", head, " covers rows [", row_offset, ", ",
          row_offset + rows, ") but row ", dup, " already arrived (overlap)"));
    }
    SetRange(bits, row_offset, row_offset + rows);
    received_per_head_[head] += rows;
    rows_received_ += rows;
  }
  if (absl::Status s =
          fill(tables_[head].data() + row_offset * layout_.row_bytes());
      !s.ok()) {
    MutexLock lock(&mu_);  // give the claim back: a retry may fill them
    ClearRange(received_[head], row_offset, row_offset + rows);
    received_per_head_[head] -= rows;
    rows_received_ -= rows;
    return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Layer>> LayerBuilder::Finish() {
  MutexLock lock(&mu_);
  for (int h = 0; h < layout_.num_heads(); ++h) {
    const int64_t n = OwnedRows(h);
    if (received_per_head_[h] != n) {
      int64_t first_missing = -1;
      std::vector<RowRange> ranges =
          owned_.empty()
              ? std::vector<RowRange>{{0, layout_.table_vocab_sizes[h]}}
              : owned_[h];
      for (RowRange r : ranges) {
        first_missing = FirstClear(received_[h], r.begin, r.end);
        if (first_missing >= 0) break;
      }
      return absl::InvalidArgumentError(
          absl::StrCat("populate of layer ", layer_id_, " ended with head ", h,
                       " missing ", n - received_per_head_[h], " of ", n,
                       " rows (first missing row ", first_missing, ")"));
    }
  }
  if (pin_memory_) {
    for (int h = 0; h < layout_.num_heads(); ++h) {
      tables_[h].Pin(whole_tables_ ? std::vector<std::pair<size_t, size_t>>{}
                                   : resident_[h]);
    }
  }
  received_.clear();
  reservation_.Shrink(staging_bytes_);
  auto layer = std::make_shared<Layer>(
      layer_id_, layout_, std::move(tables_), std::move(reservation_),
      static_cast<uint64_t>(rows_total_) * layout_.row_bytes());
  layer->AttachFiles(std::move(files_));
  return layer;
}

}  // namespace engram
