// The row gathers of kernels/gpu.h: one family of kernels over one row
// operation (copy, or convert through float) for the GPU tier's fixed
// tables and for zero-copy lookups through a layer's view slot.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <mutex>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/float_convert.h"
#include "kernels/cuda_common.h"
#include "kernels/gpu.h"

namespace engram::gpu {
namespace {

using internal::Check;
using internal::DeviceView;
using internal::DTypeBytes;
using internal::kThreads;
using internal::S;
using internal::ViewDType;

// How a row's work items map to bytes: a copy moves row_bytes / sizeof(V)
// pieces, a conversion one element per item.
struct RowGeometry {
  int64_t items_per_row;
  int64_t in_row_bytes;
  int64_t out_row_bytes;
};

// Same-dtype rows: each item moves one V-sized piece, so a warp reads whole
// rows with wide, coalesced accesses.
template <typename V>
struct CopyRow {
  static RowGeometry Geometry(int64_t dim, size_t in_size) {
    const int64_t row = dim * static_cast<int64_t>(in_size);
    return {row / static_cast<int64_t>(sizeof(V)), row, row};
  }
  template <typename Index>
  __device__ __forceinline__ static void Move(const uint8_t* src, uint8_t* dst,
                                              Index item, Index /*items*/) {
    reinterpret_cast<V*>(dst)[item] =
        __ldg(reinterpret_cast<const V*>(src) + item);
  }
};

template <int kDType>
__device__ __forceinline__ float LoadAsFloat(const uint8_t* row, int64_t e) {
  if constexpr (kDType == 1) {
    return __ldg(reinterpret_cast<const float*>(row) + e);
  } else if constexpr (kDType == 2) {
    return convert::BFloat16ToFloat(
        __ldg(reinterpret_cast<const uint16_t*>(row) + e));
  } else {
    return convert::Float16ToFloat(
        __ldg(reinterpret_cast<const uint16_t*>(row) + e));
  }
}

template <int kDType>
__device__ __forceinline__ void StoreFromFloat(uint8_t* row, int64_t e,
                                               float v) {
  if constexpr (kDType == 1) {
    reinterpret_cast<float*>(row)[e] = v;
  } else if constexpr (kDType == 2) {
    reinterpret_cast<uint16_t*>(row)[e] = convert::FloatToBFloat16(v);
  } else {
    reinterpret_cast<uint16_t*>(row)[e] = convert::FloatToFloat16(v);
  }
}

constexpr int64_t FloatSize(int dtype) { return dtype == 1 ? 4 : 2; }

// Converting rows: one element per item, through float, with the same
// rounding as the CPU path (common/float_convert.h).
template <int kIn, int kOut>
struct ConvertRow {
  static RowGeometry Geometry(int64_t dim, size_t /*in_size*/) {
    return {dim, dim * FloatSize(kIn), dim * FloatSize(kOut)};
  }
  template <typename Index>
  __device__ __forceinline__ static void Move(const uint8_t* src, uint8_t* dst,
                                              Index e, Index /*items*/) {
    StoreFromFloat<kOut>(dst, e, LoadAsFloat<kIn>(src, e));
  }
};

// Dequantizing FP8 E4M3 / UE8M0 rows (W weight bytes, then W / kBlock
// scale bytes): one value per item, computed as the CPU path computes it.
template <int kOut, int kBlock>
struct DequantRow {
  static RowGeometry Geometry(int64_t dim, size_t /*in_size*/) {
    const int64_t weights = dim / (kBlock + 1) * kBlock;
    return {weights, dim, weights * FloatSize(kOut)};
  }
  template <typename Index>
  __device__ __forceinline__ static void Move(const uint8_t* src, uint8_t* dst,
                                              Index e, Index weights) {
    const float weight = convert::Fp8E4M3ToFloat(__ldg(src + e));
    const float scale =
        convert::Ue8m0ToFloat(__ldg(src + weights + e / kBlock));
    StoreFromFloat<kOut>(dst, e, convert::DequantFp8(weight, scale));
  }
};

// Calls fn(Op{}) with the row operation from in_dtype to out_dtype; copies
// use the widest piece that divides `align` (row sizes and base addresses
// or-ed together). False when there is no such conversion.
template <typename Fn>
bool WithRowOp(int in_dtype, int out_dtype, uint64_t align, Fn&& fn) {
  if (in_dtype == out_dtype) {
    if (align % 16 == 0) {
      fn(CopyRow<uint4>{});
    } else if (align % 8 == 0) {
      fn(CopyRow<uint2>{});
    } else if (align % 4 == 0) {
      fn(CopyRow<uint32_t>{});
    } else if (align % 2 == 0) {
      fn(CopyRow<uint16_t>{});
    } else {
      fn(CopyRow<uint8_t>{});
    }
    return true;
  }
  switch (in_dtype * 10 + out_dtype) {
    case 12:
      fn(ConvertRow<1, 2>{});
      return true;
    case 13:
      fn(ConvertRow<1, 3>{});
      return true;
    case 21:
      fn(ConvertRow<2, 1>{});
      return true;
    case 23:
      fn(ConvertRow<2, 3>{});
      return true;
    case 31:
      fn(ConvertRow<3, 1>{});
      return true;
    case 32:
      fn(ConvertRow<3, 2>{});
      return true;
    default:
      return false;
  }
}

// Calls fn(Op{}) with the dequantization of `block`-weight blocks to
// out_dtype; false for blocks or dtypes without one.
template <int kBlock, typename Fn>
bool WithDequantOut(int out_dtype, Fn&& fn) {
  switch (out_dtype) {
    case 1:
      fn(DequantRow<1, kBlock>{});
      return true;
    case 2:
      fn(DequantRow<2, kBlock>{});
      return true;
    case 3:
      fn(DequantRow<3, kBlock>{});
      return true;
    default:
      return false;
  }
}
template <typename Fn>
bool WithDequantOp(int block, int out_dtype, Fn&& fn) {
  switch (block) {
    case 16:
      return WithDequantOut<16>(out_dtype, fn);
    case 32:
      return WithDequantOut<32>(out_dtype, fn);
    case 64:
      return WithDequantOut<64>(out_dtype, fn);
    case 128:
      return WithDequantOut<128>(out_dtype, fn);
    default:
      return false;
  }
}

// Ids given by the caller, in any form (kernels/view_rows.h).
struct GivenIds {
  const int64_t* __restrict__ ids;
  ViewRowForm form;
  const int64_t* offsets;  // fused offsets (fused ids and entries only)
  __device__ __forceinline__ int64_t operator()(uint64_t row, int* table,
                                                const int64_t*) const {
    return ViewRow(form, row, __ldg(ids + row), offsets, table);
  }
};
// Row ids hashed from token ids (kernels/token_hash.h): table row mod H.
struct HashedIds {
  const TokenHashArgs* args;
  int heads;
  __device__ __forceinline__ int64_t operator()(uint64_t row, int* table,
                                                const int64_t* vocab) const {
    *table = static_cast<int>(row % heads);
    return TokenRowId(*args, row, __ldg(vocab + *table));
  }
};

// The grid-strided loop every gather runs: output row r (of total /
// items_per_row) = row ids(r) of the table ids(r) names. An id outside its
// table is never read: its row is left unwritten and *error becomes
// min(*error, r).
template <typename Op, typename Index, typename Ids>
__device__ __forceinline__ void GatherRows(const uint8_t* const* tables,
                                           const int64_t* vocab, int heads,
                                           Index items_per_row, Index total,
                                           int64_t in_row_bytes,
                                           int64_t out_row_bytes, Ids ids,
                                           uint8_t* __restrict__ out,
                                           unsigned long long* error) {
  const Index stride = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index t = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x;
       t < total; t += stride) {
    const Index row = t / items_per_row;
    const Index item = t - row * items_per_row;
    int h = 0;
    const int64_t id = ids(row, &h, vocab);
    if (static_cast<uint64_t>(id) >= static_cast<uint64_t>(__ldg(vocab + h))) {
      if (item == 0) atomicMin(error, static_cast<unsigned long long>(row));
      continue;
    }
    Op::Move(tables[h] + id * in_row_bytes,
             out + static_cast<size_t>(row) * out_row_bytes, item,
             items_per_row);
  }
}

// The GPU tier: fixed device arrays of tables and vocab sizes.
template <typename Op, typename Index>
__global__ void TableGatherKernel(const uint8_t* const* tables,
                                  const int64_t* vocab, int heads,
                                  RowGeometry geo, Index total,
                                  const int64_t* ids, uint8_t* out,
                                  unsigned long long* error) {
  GatherRows<Op, Index>(
      tables, vocab, heads, static_cast<Index>(geo.items_per_row), total,
      geo.in_row_bytes, geo.out_row_bytes,
      GivenIds{ids, ViewRowForm{kViewPerHead, 0, heads, heads}, nullptr}, out,
      error);
}

// One layer's part of a zero-copy launch.
struct ViewPart {
  unsigned long long* slot;
  const int64_t* ids;
  uint8_t* out;
  unsigned long long* status;  // kStatusWords, distinct per part
  uint64_t total;              // work items
  RowGeometry geo;
  int64_t dim;  // the layout the caller sized `out` for
  int32_t heads;
  int32_t dtype;
  ViewRowForm form;      // given ids: their form
  bool hashed;           // ids come from `hash` (a token lookup)
  uint64_t token_model;  // hashed: the only token model it may read
  TokenHashArgs hash;
};
constexpr int kMaxViewParts = 8;
struct ViewParts {
  ViewPart part[kMaxViewParts];
  int count;
};

// kStatusOk when `view` can be read as `p` expects, else why not.
__device__ __forceinline__ unsigned long long ViewProblem(
    const DeviceView* view, const ViewPart& p) {
  if (view == nullptr || view->state != kViewPresent) {
    return view != nullptr && view->state == kViewRemoved ? kStatusRemoved
                                                          : kStatusUnavailable;
  }
  if (view->heads != p.heads || view->dim != p.dim || view->dtype != p.dtype) {
    return kStatusLayoutChanged;
  }
  if (p.hashed && view->token_model != p.token_model) {
    return kStatusModelChanged;
  }
  return kStatusOk;
}

// Zero-copy lookups of up to kMaxViewParts layers in one cooperative launch
// (docs/gpu.md): block 0 pins each slot's current view into the part's
// status[1] and resets its words; after the grid barrier every block reads
// through exactly that view, so a launch never mixes versions; the last
// block to finish re-reads the epoch slots (the tripwire).
template <typename Op, typename Index>
__global__ void ViewGatherKernel(const __grid_constant__ ViewParts parts) {
  if (blockIdx.x == 0 && threadIdx.x < parts.count) {
    const ViewPart& p = parts.part[threadIdx.x];
    const unsigned long long view = atomicAdd(p.slot, 0ull);  // atomic read
    p.status[1] = view;
    p.status[2] = 0;  // blocks finished
    p.status[0] = ViewProblem(reinterpret_cast<const DeviceView*>(view), p);
  }
  cooperative_groups::this_grid().sync();
  for (int i = 0; i < parts.count; ++i) {
    const ViewPart& p = parts.part[i];
    const auto* view =
        reinterpret_cast<const DeviceView*>(__ldcg(p.status + 1));
    if (ViewProblem(view, p) != kStatusOk) continue;
    if (p.hashed) {
      GatherRows<Op, Index>(view->tables, view->vocab, p.heads,
                            static_cast<Index>(p.geo.items_per_row),
                            static_cast<Index>(p.total), p.geo.in_row_bytes,
                            p.geo.out_row_bytes, HashedIds{&p.hash, p.heads},
                            p.out, p.status);
    } else {
      GatherRows<Op, Index>(
          view->tables, view->vocab, p.heads,
          static_cast<Index>(p.geo.items_per_row), static_cast<Index>(p.total),
          p.geo.in_row_bytes, p.geo.out_row_bytes,
          GivenIds{p.ids, p.form, view->offsets}, p.out, p.status);
    }
  }
  __shared__ bool last;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();  // this block's reads and row errors before the count
    last = atomicAdd(parts.part[0].status + 2, 1ull) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int i = 0; i < parts.count; ++i) {
    const ViewPart& p = parts.part[i];
    const auto* view =
        reinterpret_cast<const DeviceView*>(__ldcg(p.status + 1));
    if (ViewProblem(view, p) != kStatusOk) continue;
    for (int h = threadIdx.x; h < p.heads; h += blockDim.x) {
      const uint64_t* epoch = view->epoch_slots[h];
      if (epoch != nullptr && *reinterpret_cast<const volatile uint64_t*>(
                                  epoch) != view->generations[h]) {
        atomicExch(p.status, static_cast<unsigned long long>(kStatusReleased));
      }
    }
  }
}

// Blocks of `kernel` (kThreads each) that fit on the current device at once:
// a cooperative launch may not ask for more. Computed once per kernel and
// device.
int CoResidentBlocks(const void* kernel) {
  static std::mutex mu;
  static std::vector<std::tuple<const void*, int, int>> known;
  int device = 0;
  cudaGetDevice(&device);
  std::lock_guard<std::mutex> lock(mu);
  for (const auto& [k, d, blocks] : known) {
    if (k == kernel && d == device) return blocks;
  }
  int sms = 0, per_sm = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0);
  cudaGetLastError();
  const int blocks = std::max(1, sms) * std::max(1, per_sm);
  known.emplace_back(kernel, device, blocks);
  return blocks;
}

// Blocks for `work` items: enough resident warps to hide latency, no more.
int GridFor(uint64_t work) {
  static const int max_blocks = [] {
    int device = 0, sms = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    return std::max(1, sms) * 16;
  }();
  const uint64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<int>(std::clamp<uint64_t>(blocks, 1, max_blocks));
}

uint64_t AddressBits(const void* p) { return reinterpret_cast<uintptr_t>(p); }

constexpr uint64_t kSmallIndex = uint64_t{1} << 31;

template <typename Op, typename Index>
absl::Status LaunchViewParts(ViewParts& parts, uint64_t largest,
                             Stream stream) {
  const void* kernel =
      reinterpret_cast<const void*>(&ViewGatherKernel<Op, Index>);
  const uint64_t wanted = (largest + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(std::clamp<uint64_t>(
      wanted, 1, static_cast<uint64_t>(CoResidentBlocks(kernel))));
  void* args[] = {&parts};
  return Check(cudaLaunchCooperativeKernel(kernel, dim3(blocks), dim3(kThreads),
                                           args, 0, S(stream)),
               "view gather launch");
}

// One launch of `gathers` (same dtypes, at most kMaxViewParts).
absl::Status LaunchViewGroup(const ViewGather* const* gathers, size_t count,
                             Stream stream) {
  const ViewGather& first = *gathers[0];
  const size_t in_size = DTypeBytes(first.in_dtype);
  uint64_t align = 0;
  for (size_t i = 0; i < count; ++i) {
    const ViewGather* v = gathers[i];
    align |= static_cast<uint64_t>(v->dim) * in_size | AddressBits(v->out);
  }
  absl::Status status;
  auto launch = [&](auto op) {
    using Op = decltype(op);
    ViewParts parts{};
    parts.count = static_cast<int>(count);
    uint64_t largest = 0;
    for (size_t i = 0; i < count; ++i) {
      const ViewGather& v = *gathers[i];
      ViewPart& p = parts.part[i];
      p.slot = static_cast<unsigned long long*>(const_cast<void*>(v.slot));
      p.ids = v.ids;
      p.out = v.out;
      p.status = reinterpret_cast<unsigned long long*>(v.status);
      p.geo = Op::Geometry(v.dim, in_size);
      p.total = static_cast<uint64_t>(v.num_ids) *
                static_cast<uint64_t>(p.geo.items_per_row);
      p.dim = v.dim;
      p.heads = v.heads;
      p.dtype = ViewDType(v.in_dtype, v.quant_block);
      p.form = v.form;
      if (p.form.columns == 0) {
        p.form = ViewRowForm{kViewPerHead, 0, v.heads, v.heads};
      }
      p.hashed = v.tokens != nullptr;
      if (p.hashed) {
        p.hash = *v.tokens;
        p.token_model = v.token_model;
      }
      largest = std::max(largest, p.total);
    }
    status = largest < kSmallIndex
                 ? LaunchViewParts<Op, uint32_t>(parts, largest, stream)
                 : LaunchViewParts<Op, uint64_t>(parts, largest, stream);
  };
  const bool known =
      first.dequantize
          ? WithDequantOp(first.quant_block, first.out_dtype, launch)
          : WithRowOp(first.in_dtype, first.out_dtype, align, launch);
  if (!known) {
    return absl::InvalidArgumentError(
        absl::StrCat("no ", first.dequantize ? "dequantization" : "conversion",
                     " from dtype ", first.in_dtype, " (quantization block ",
                     first.quant_block, ") to ", first.out_dtype));
  }
  return status;
}

}  // namespace

absl::Status ResetErrorFlag(uint64_t* error_flag, Stream stream) {
  return Check(cudaMemsetAsync(error_flag, 0xff, sizeof(uint64_t), S(stream)),
               "cudaMemsetAsync");
}

absl::Status LaunchGather(const GatherLaunch& g, Stream stream) {
  const size_t in_size = DTypeBytes(g.in_dtype);
  if (in_size == 0 || DTypeBytes(g.out_dtype) == 0 || g.heads <= 0 ||
      g.dim <= 0 || g.num_ids < 0) {
    return absl::InvalidArgumentError("bad gather launch arguments");
  }
  if (g.num_ids == 0) return absl::OkStatus();
  const uint64_t align =
      static_cast<uint64_t>(g.dim) * in_size | AddressBits(g.out);
  const bool known = WithRowOp(g.in_dtype, g.out_dtype, align, [&](auto op) {
    using Op = decltype(op);
    const RowGeometry geo = Op::Geometry(g.dim, in_size);
    const uint64_t total = static_cast<uint64_t>(g.num_ids) *
                           static_cast<uint64_t>(geo.items_per_row);
    auto* error = reinterpret_cast<unsigned long long*>(g.error_flag);
    if (total < kSmallIndex) {
      TableGatherKernel<Op, uint32_t>
          <<<GridFor(total), kThreads, 0, S(stream)>>>(
              g.tables, g.vocab, g.heads, geo, static_cast<uint32_t>(total),
              g.ids, g.out, error);
    } else {
      TableGatherKernel<Op, uint64_t>
          <<<GridFor(total), kThreads, 0, S(stream)>>>(
              g.tables, g.vocab, g.heads, geo, total, g.ids, g.out, error);
    }
  });
  if (!known) {
    return absl::InvalidArgumentError(absl::StrCat(
        "no conversion from dtype ", g.in_dtype, " to ", g.out_dtype));
  }
  return Check(cudaGetLastError(), "gather kernel launch");
}

absl::Status LaunchViewGathers(const ViewGather* gathers, size_t count,
                               Stream stream) {
  for (size_t i = 0; i < count; ++i) {
    const ViewGather& v = gathers[i];
    if (v.slot == nullptr || v.status == nullptr || v.heads <= 0 ||
        v.heads > kMaxViewHeads || v.dim <= 0 || v.num_ids < 0 ||
        (v.form.columns == 0 && v.num_ids % v.heads != 0) ||
        DTypeBytes(v.in_dtype) == 0 || DTypeBytes(v.out_dtype) == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad view gather arguments (lookup ", i, ")"));
    }
    const ViewRowForm& f = v.form;
    const bool entries = f.id_form == kViewEntries;
    if (f.columns != 0 &&
        (f.id_form < kViewPerHead || f.id_form > kViewEntries ||
         f.head_begin < 0 ||
         (entries ? f.columns != 1 || f.head_end <= f.head_begin ||
                        f.head_end > v.heads
                  : f.columns < 1 || f.head_begin + f.columns > v.heads ||
                        v.num_ids % f.columns != 0) ||
         v.tokens != nullptr)) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad id form arguments (lookup ", i, ")"));
    }
    if (v.tokens != nullptr) {
      const TokenHashArgs& t = *v.tokens;
      if (t.tokens == nullptr || t.token_map == nullptr || t.batch <= 0 ||
          t.length <= 0 || t.ngram < 2 || t.ngram > kMaxTokenNgram ||
          t.heads <= 0 || (t.ngram - 1) * t.heads != v.heads ||
          t.history_length < 0 || t.history_length > t.ngram - 1 ||
          (t.history_length > 0 && t.history == nullptr) ||
          v.num_ids != t.batch * t.length * v.heads) {
        return absl::InvalidArgumentError(
            absl::StrCat("bad token hash arguments (lookup ", i, ")"));
      }
    }
    for (size_t j = 0; j < i; ++j) {
      if (gathers[j].status == v.status) {
        return absl::InvalidArgumentError(absl::StrCat(
            "lookups ", j, " and ", i,
            " of one launch share their status words: give each its own"));
      }
    }
  }
  // Lookups of the same dtypes share a launch (kMaxViewParts at a time).
  std::vector<const ViewGather*> order;
  order.reserve(count);
  for (size_t i = 0; i < count; ++i) order.push_back(&gathers[i]);
  std::stable_sort(
      order.begin(), order.end(), [](const ViewGather* a, const ViewGather* b) {
        return std::tie(a->in_dtype, a->out_dtype, a->dequantize,
                        a->quant_block) < std::tie(b->in_dtype, b->out_dtype,
                                                   b->dequantize,
                                                   b->quant_block);
      });
  for (size_t begin = 0; begin < order.size();) {
    size_t end = begin + 1;
    while (end < order.size() && end - begin < kMaxViewParts &&
           order[end]->in_dtype == order[begin]->in_dtype &&
           order[end]->out_dtype == order[begin]->out_dtype &&
           order[end]->dequantize == order[begin]->dequantize &&
           (!order[begin]->dequantize ||
            order[end]->quant_block == order[begin]->quant_block)) {
      ++end;
    }
    if (absl::Status s =
            LaunchViewGroup(order.data() + begin, end - begin, stream);
        !s.ok()) {
      return s;
    }
    begin = end;
  }
  return absl::OkStatus();
}

bool CanDequantizeBlock(int block) {
  return WithDequantOp(block, 1, [](auto) {});
}

absl::Status LaunchViewGather(const ViewGather& launch, Stream stream) {
  return LaunchViewGathers(&launch, 1, stream);
}

}  // namespace engram::gpu
