// Where rows live in a sharded engram-store cluster: one pure function of
// (layer, layout, shard count, replication) that servers and clients
// evaluate alike, so no metadata service is needed to find a row.
#ifndef ENGRAM_CLUSTER_PLACEMENT_H_
#define ENGRAM_CLUSTER_PLACEMENT_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/layout.h"  // RowRange

namespace engram {

// Head h's N rows are cut into S contiguous ranges, range k being
// [floor(k*N/S), floor((k+1)*N/S)) (sizes differ by at most one row; some
// are empty when N < S). Range k of head h of layer l has its primary on
// shard (k + h + l) mod S and replicas on the next R-1 shards, so tables
// smaller than S, and successive heads and layers, spread over all shards.
// A value type; thread-safe.
class Placement {
 public:
  // INVALID_ARGUMENT unless 1 <= replication <= num_shards.
  static absl::StatusOr<Placement> Create(int num_shards, int replication);

  int num_shards() const { return num_shards_; }
  int replication() const { return replication_; }

  RowRange Range(int64_t rows, int range) const;
  // The range index holding `row` of a table with `rows` rows.
  int RangeOf(int64_t rows, int64_t row) const;
  // The shard holding copy `replica` (0 = primary) of range `range`.
  int Owner(int64_t layer_id, int head, int range, int replica) const;
  // All owners of the range holding `row`, primary first.
  std::vector<int> OwnersOfRow(int64_t layer_id, int head, int64_t rows,
                               int64_t row) const;
  // The non-empty ranges of head `head` that `shard` holds, ascending.
  std::vector<RowRange> OwnedRanges(int64_t layer_id, int head, int64_t rows,
                                    int shard) const;
  bool Owns(int shard, int64_t layer_id, int head, int64_t rows,
            int64_t row) const;

 private:
  Placement(int num_shards, int replication)
      : num_shards_(num_shards), replication_(replication) {}
  int num_shards_;
  int replication_;
};

}  // namespace engram

#endif  // ENGRAM_CLUSTER_PLACEMENT_H_
