// Which table and row an output row of a zero-copy lookup reads, for every
// form of ids the server's Lookup takes (common/lookup_plan.h: per-head or
// fused ids, optionally a head slice, or entries), written once for host
// and device so the CPU tests hold it to ResolveIds
// (tests/kernels/view_rows_test.cc). Plain data and inline functions only.
#ifndef ENGRAM_KERNELS_VIEW_ROWS_H_
#define ENGRAM_KERNELS_VIEW_ROWS_H_

#include <cstdint>

#include "kernels/host_device.h"

namespace engram::gpu {

// ViewGather::id_form (the values of engram::IdForm).
enum ViewIdForm : int32_t {
  kViewPerHead = 0,  // [.., C]: column c is table head_begin + c
  kViewFused = 1,    // the same, ids in the layer's fused id space
  kViewEntries = 2,  // [n]: each fused id names its table
};

// How one lookup's ids name rows. Plain value, passed by value to kernels.
struct ViewRowForm {
  int32_t id_form = kViewPerHead;
  int32_t head_begin = 0;
  int32_t head_end = 0;  // entries: tables [head_begin, head_end)
  int32_t columns = 1;   // per-head and fused: ids per position
};

// The table output row `row` reads (*table) and the row in it for `id`;
// the caller checks the row against the table's size (a fused id of
// another table, or an entry outside the range, gives -1: never a row).
// `offsets` holds the fused offset of every table and, after the last,
// the layer's total rows.
ENGRAM_HOST_DEVICE int64_t ViewRow(const ViewRowForm& f, uint64_t row,
                                   int64_t id, const int64_t* offsets,
                                   int* table) {
  if (f.id_form != kViewEntries) {
    const int t = f.head_begin + static_cast<int>(row % f.columns);
    *table = t;
    return f.id_form == kViewFused ? id - offsets[t] : id;
  }
  *table = f.head_begin;
  if (id < offsets[f.head_begin] || id >= offsets[f.head_end]) return -1;
  int lo = f.head_begin, hi = f.head_end;  // offsets[lo] <= id < offsets[hi]
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (offsets[mid] <= id) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  *table = lo;
  return id - offsets[lo];
}

}  // namespace engram::gpu

#endif  // ENGRAM_KERNELS_VIEW_ROWS_H_
