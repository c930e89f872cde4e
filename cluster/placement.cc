#include "cluster/placement.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace engram {

absl::StatusOr<Placement> Placement::Create(int num_shards, int replication) {
  if (num_shards < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("a cluster needs at least one shard; got ", num_shards));
  }
  if (replication < 1 || replication > num_shards) {
    return absl::InvalidArgumentError(
        absl::StrCat("--replication=", replication,
                     " must be between 1 and the shard count ", num_shards));
  }
  return Placement(num_shards, replication);
}

RowRange Placement::Range(int64_t rows, int range) const {
  return {range * rows / num_shards_, (range + 1) * rows / num_shards_};
}

int Placement::RangeOf(int64_t rows, int64_t row) const {
  // Largest k with floor(k * rows / S) <= row.
  return static_cast<int>(((row + 1) * num_shards_ - 1) / rows);
}

int Placement::Owner(int64_t layer_id, int head, int range, int replica) const {
  // Layer ids may be negative: reduce before adding.
  const int64_t layer = ((layer_id % num_shards_) + num_shards_) % num_shards_;
  return static_cast<int>((range + head + layer + replica) % num_shards_);
}

std::vector<int> Placement::OwnersOfRow(int64_t layer_id, int head,
                                        int64_t rows, int64_t row) const {
  const int range = RangeOf(rows, row);
  std::vector<int> owners(replication_);
  for (int r = 0; r < replication_; ++r)
    owners[r] = Owner(layer_id, head, range, r);
  return owners;
}

std::vector<RowRange> Placement::OwnedRanges(int64_t layer_id, int head,
                                             int64_t rows, int shard) const {
  std::vector<RowRange> owned;
  for (int k = 0; k < num_shards_; ++k) {
    RowRange range = Range(rows, k);
    if (range.size() == 0) continue;
    for (int r = 0; r < replication_; ++r) {
      if (Owner(layer_id, head, k, r) == shard) {
        owned.push_back(range);
        break;
      }
    }
  }
  return owned;  // ascending: ranges are visited in row order
}

bool Placement::Owns(int shard, int64_t layer_id, int head, int64_t rows,
                     int64_t row) const {
  const int range = RangeOf(rows, row);
  for (int r = 0; r < replication_; ++r) {
    if (Owner(layer_id, head, range, r) == shard) return true;
  }
  return false;
}

}  // namespace engram
