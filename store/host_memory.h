// Page-aligned host memory for tables, pinned where the platform allows, and
// the byte budget every table allocation is charged against.
#ifndef ENGRAM_STORE_HOST_MEMORY_H_
#define ENGRAM_STORE_HOST_MEMORY_H_

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/export_hook.h"

namespace engram {

// How a buffer's pages are held in RAM.
enum class PinMode {
  kNone,      // plain pageable memory (mlock refused, e.g. RLIMIT_MEMLOCK)
  kMlock,     // locked with mlock: never swapped, but not registered with CUDA
  kCudaHost,  // cudaHostAlloc / cudaHostRegister: DMA-able by a GPU
};
const char* PinModeName(PinMode mode);

// One anonymous mapping, page aligned, zero filled, released on destruction.
// Move-only; not thread-safe to mutate, safe to read concurrently.
class HostBuffer {
 public:
  HostBuffer() = default;
  // Maps `bytes` (> 0) and tries to pin them when `try_pin` is set: with
  // cudaHostRegister once EnableCudaPinning(true) was called (a GPU tier is
  // up), else, or if that fails, with mlock.
  static absl::StatusOr<HostBuffer> Allocate(size_t bytes, bool try_pin);
  // A mapping of `bytes` of address space of which only the `resident`
  // byte ranges [first, second) will be written: the rest costs no memory
  // (MAP_NORESERVE, never touched). Pins only the resident ranges (mlock).
  // For a shard holding some row ranges of a table. With `exporter`, the
  // resident ranges (page-rounded, overlaps merged) are mapped through it so
  // other shards can read them; a range it cannot map stays private (then
  // `exports()` lacks it and readers fall back to asking this process).
  // Maps `bytes` of the file open as `fd` from offset 0, shared (writes
  // go to the file), writable or read-only. The fd may be closed after.
  static absl::StatusOr<HostBuffer> MapFile(int fd, size_t bytes,
                                            bool writable);
  static absl::StatusOr<HostBuffer> AllocateSparse(
      size_t bytes, const std::vector<std::pair<size_t, size_t>>& resident,
      bool try_pin, const ExportMapper* exporter = nullptr);
  // What a buffer of `bytes` with these resident byte ranges really maps:
  // page-rounded, overlapping pages counted once.
  static size_t ResidentBytes(
      size_t bytes, const std::vector<std::pair<size_t, size_t>>& resident);
  // Pins the resident ranges (empty: the whole buffer, with
  // cudaHostRegister when enabled, else mlock); best effort, see
  // pin_mode(). Tables are pinned when complete, so a stream that stalls
  // mid-populate holds no locked memory.
  void Pin(const std::vector<std::pair<size_t, size_t>>& resident);
  // Bytes of the buffer in RAM right now (mincore; a file-backed buffer's
  // pages come and go with the page cache).
  size_t ResidentNow() const;
  // Process-wide switch, set by the server when its GPU tier opens.
  static void EnableCudaPinning(bool enabled);
  HostBuffer(HostBuffer&& other) noexcept;
  HostBuffer& operator=(HostBuffer&& other) noexcept;
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
  ~HostBuffer();

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  PinMode pin_mode() const { return pin_mode_; }
  const std::vector<ExportedRange>& exports() const { return exports_; }

 private:
  void Release();
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  size_t mapped_ = 0;
  PinMode pin_mode_ = PinMode::kNone;
  std::vector<ExportedRange> exports_;
};

// A byte budget shared by all tables of a process. Thread-safe (atomics).
class MemoryBudget {
 public:
  explicit MemoryBudget(uint64_t limit_bytes) : limit_(limit_bytes) {}
  // Charges `bytes`; false (and nothing charged) when it would pass the limit.
  bool TryReserve(uint64_t bytes);
  void Release(uint64_t bytes);
  uint64_t limit() const { return limit_; }
  uint64_t used() const { return used_.load(std::memory_order_relaxed); }

 private:
  const uint64_t limit_;
  std::atomic<uint64_t> used_{0};
};

// RAII charge against a MemoryBudget; move-only. The budget must outlive it.
class MemoryReservation {
 public:
  MemoryReservation() = default;
  MemoryReservation(MemoryBudget* budget, uint64_t bytes)
      : budget_(budget), bytes_(bytes) {}
  MemoryReservation(MemoryReservation&& other) noexcept
      : budget_(other.budget_), bytes_(other.bytes_) {
    other.budget_ = nullptr;
  }
  MemoryReservation& operator=(MemoryReservation&& other) noexcept;
  MemoryReservation(const MemoryReservation&) = delete;
  MemoryReservation& operator=(const MemoryReservation&) = delete;
  ~MemoryReservation() {
    if (budget_ != nullptr) budget_->Release(bytes_);
  }
  uint64_t bytes() const { return budget_ ? bytes_ : 0; }
  // Gives `bytes` (at most all) back to the budget early.
  void Shrink(uint64_t bytes) {
    if (budget_ == nullptr) return;
    bytes = std::min(bytes, bytes_);
    budget_->Release(bytes);
    bytes_ -= bytes;
  }

 private:
  MemoryBudget* budget_ = nullptr;
  uint64_t bytes_ = 0;
};

}  // namespace engram

#endif  // ENGRAM_STORE_HOST_MEMORY_H_
