#include "store/host_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/gpu.h"

namespace engram {

const char* PinModeName(PinMode mode) {
  switch (mode) {
    case PinMode::kNone:
      return "none";
    case PinMode::kMlock:
      return "mlock";
    case PinMode::kCudaHost:
      return "cuda_host";
  }
  return "unknown";
}

namespace {
std::atomic<bool> cuda_pinning{false};
}  // namespace

void HostBuffer::EnableCudaPinning(bool enabled) {
  cuda_pinning.store(enabled, std::memory_order_relaxed);
}

namespace {

size_t PageSize() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

// `resident` as page-rounded extents within `mapped`, sorted and merged.
std::vector<std::pair<size_t, size_t>> PageExtents(
    size_t mapped, const std::vector<std::pair<size_t, size_t>>& resident) {
  const size_t page = PageSize();
  std::vector<std::pair<size_t, size_t>> extents;
  for (auto [begin, end] : resident) {
    if (end <= begin) continue;
    extents.emplace_back(begin / page * page,
                         std::min(mapped, (end + page - 1) / page * page));
  }
  std::sort(extents.begin(), extents.end());
  std::vector<std::pair<size_t, size_t>> merged;
  for (auto e : extents) {
    if (!merged.empty() && e.first <= merged.back().second) {
      merged.back().second = std::max(merged.back().second, e.second);
    } else {
      merged.push_back(e);
    }
  }
  return merged;
}

}  // namespace

absl::StatusOr<HostBuffer> HostBuffer::Allocate(size_t bytes, bool try_pin) {
  if (bytes == 0) return absl::InvalidArgumentError("empty host buffer");
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t mapped = (bytes + page - 1) / page * page;
  void* p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot map ", bytes, " bytes of host memory: ", strerror(errno)));
  }
  // Huge pages cut TLB misses on random row reads; advisory only.
  if (mapped >= (size_t{2} << 20)) madvise(p, mapped, MADV_HUGEPAGE);
  HostBuffer buffer;
  buffer.data_ = static_cast<uint8_t*>(p);
  buffer.size_ = bytes;
  buffer.mapped_ = mapped;
  if (try_pin) buffer.Pin({});
  return buffer;
}

absl::StatusOr<HostBuffer> HostBuffer::MapFile(int fd, size_t bytes,
                                               bool writable) {
  const size_t page = PageSize();
  const size_t mapped = (std::max<size_t>(bytes, 1) + page - 1) / page * page;
  void* p = mmap(nullptr, mapped, PROT_READ | (writable ? PROT_WRITE : 0),
                 MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot map ", bytes, " bytes of a table file: ", strerror(errno)));
  }
  HostBuffer buffer;
  buffer.data_ = static_cast<uint8_t*>(p);
  buffer.size_ = bytes;
  buffer.mapped_ = mapped;
  return buffer;
}

absl::StatusOr<HostBuffer> HostBuffer::AllocateSparse(
    size_t bytes, const std::vector<std::pair<size_t, size_t>>& resident,
    bool try_pin, const ExportMapper* exporter) {
  if (bytes == 0) return absl::InvalidArgumentError("empty host buffer");
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t mapped = (bytes + page - 1) / page * page;
  void* p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot reserve ", bytes,
                     " bytes of address space: ", strerror(errno)));
  }
  HostBuffer buffer;
  buffer.data_ = static_cast<uint8_t*>(p);
  buffer.size_ = bytes;
  buffer.mapped_ = mapped;
  if (exporter != nullptr && *exporter) {
    // Page-rounded resident extents, sorted and merged so no page is mapped
    // twice (small non-resident ranges between them are covered too).
    const std::vector<std::pair<size_t, size_t>> merged =
        PageExtents(mapped, resident);
    for (auto [first, last] : merged) {
      absl::StatusOr<ExportedRange> range =
          (*exporter)(buffer.data_ + first, last - first);
      if (range.ok()) {
        range->offset = first;
        buffer.exports_.push_back(*std::move(range));
      }
    }
  }
  if (try_pin && !resident.empty()) buffer.Pin(resident);
  return buffer;
}

size_t HostBuffer::ResidentBytes(
    size_t bytes, const std::vector<std::pair<size_t, size_t>>& resident) {
  const size_t page = PageSize();
  const size_t mapped = (bytes + page - 1) / page * page;
  size_t total = 0;
  for (auto [first, last] : PageExtents(mapped, resident)) {
    total += last - first;
  }
  return total;
}

void HostBuffer::Pin(const std::vector<std::pair<size_t, size_t>>& resident) {
  if (data_ == nullptr || pin_mode_ != PinMode::kNone) return;
  if (resident.empty()) {
    if (cuda_pinning.load(std::memory_order_relaxed) &&
        gpu::HostRegister(data_, mapped_).ok()) {
      pin_mode_ = PinMode::kCudaHost;
    } else if (mlock(data_, mapped_) == 0) {
      pin_mode_ = PinMode::kMlock;
    }
    return;
  }
  bool all = true;
  for (auto [first, last] : PageExtents(mapped_, resident)) {
    all &= mlock(data_ + first, last - first) == 0;
  }
  if (all) pin_mode_ = PinMode::kMlock;
}

size_t HostBuffer::ResidentNow() const {
  if (data_ == nullptr) return 0;
  const size_t page = PageSize();
  std::vector<unsigned char> in_core(mapped_ / page);
  if (mincore(data_, mapped_, in_core.data()) != 0) return 0;
  size_t pages = 0;
  for (unsigned char c : in_core) pages += c & 1;
  return std::min(size_, pages * page);
}

HostBuffer::HostBuffer(HostBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      mapped_(std::exchange(other.mapped_, 0)),
      pin_mode_(std::exchange(other.pin_mode_, PinMode::kNone)),
      exports_(std::exchange(other.exports_, {})) {}

HostBuffer& HostBuffer::operator=(HostBuffer&& other) noexcept {
  if (this != &other) {
    Release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    mapped_ = std::exchange(other.mapped_, 0);
    pin_mode_ = std::exchange(other.pin_mode_, PinMode::kNone);
    exports_ = std::exchange(other.exports_, {});
  }
  return *this;
}

HostBuffer::~HostBuffer() { Release(); }

void HostBuffer::Release() {
  if (data_ != nullptr) {
    if (pin_mode_ == PinMode::kCudaHost) gpu::HostUnregister(data_);
    if (exports_.empty()) {
      munmap(data_, mapped_);  // also drops any mlock
    } else {
      // The transport unmaps its ranges; only the gaps between them are
      // ours (unmapping the whole span after them could hit a mapping
      // another thread placed in a freed hole meanwhile).
      size_t at = 0;
      for (ExportedRange& range : exports_) {
        if (range.offset > at) munmap(data_ + at, range.offset - at);
        if (range.release) range.release();
        at = range.offset + range.length;
      }
      if (mapped_ > at) munmap(data_ + at, mapped_ - at);
      exports_.clear();
    }
  }
  data_ = nullptr;
  size_ = mapped_ = 0;
}

bool MemoryBudget::TryReserve(uint64_t bytes) {
  uint64_t used = used_.load(std::memory_order_relaxed);
  do {
    if (bytes > limit_ || used > limit_ - bytes) return false;
  } while (!used_.compare_exchange_weak(used, used + bytes,
                                        std::memory_order_relaxed));
  return true;
}

void MemoryBudget::Release(uint64_t bytes) {
  used_.fetch_sub(bytes, std::memory_order_relaxed);
}

MemoryReservation& MemoryReservation::operator=(
    MemoryReservation&& other) noexcept {
  if (this != &other) {
    if (budget_ != nullptr) budget_->Release(bytes_);
    budget_ = std::exchange(other.budget_, nullptr);
    bytes_ = other.bytes_;
  }
  return *this;
}

}  // namespace engram
