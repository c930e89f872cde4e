#include "store/table_checksum.h"

#include <xxhash.h>

#include <algorithm>
#include <cstring>

namespace engram {

// Format 1's checksum: four lanes of multiply-xor over 8-byte words.
class TableChecksum::Lanes {
 public:
  void Add(const uint8_t* data, size_t bytes) {
    total_ += bytes;
    if (pending_size_ > 0) {
      const size_t take = std::min(bytes, sizeof(pending_) - pending_size_);
      std::memcpy(pending_ + pending_size_, data, take);
      pending_size_ += take;
      data += take;
      bytes -= take;
      if (pending_size_ < sizeof(pending_)) return;
      Blocks(pending_, sizeof(pending_));
      pending_size_ = 0;
    }
    const size_t whole = bytes / 32 * 32;
    Blocks(data, whole);
    pending_size_ = bytes - whole;
    std::memcpy(pending_, data + whole, pending_size_);
  }
  uint64_t Finish() const {
    uint64_t tail = 0;
    for (size_t i = 0; i < pending_size_; ++i) {
      tail = (tail ^ pending_[i]) * kMul;
    }
    uint64_t h = tail ^ total_;
    for (uint64_t l : lane_) h = (h ^ l) * kMul ^ (h >> 31);
    return h;
  }

 private:
  static constexpr uint64_t kMul = 0x9E3779B97F4A7C15ull;
  void Blocks(const uint8_t* data, size_t bytes) {
    for (size_t i = 0; i + 32 <= bytes; i += 32) {
      for (int k = 0; k < 4; ++k) {
        uint64_t w;
        std::memcpy(&w, data + i + 8 * k, 8);
        lane_[k] = (lane_[k] ^ w) * kMul;
        lane_[k] ^= lane_[k] >> 29;
      }
    }
  }
  uint64_t lane_[4] = {1, 2, 3, 4};
  uint8_t pending_[32];
  size_t pending_size_ = 0;
  uint64_t total_ = 0;
};

struct TableChecksum::Xxh3 {
  Xxh3() : state(XXH3_createState()) { XXH3_64bits_reset(state); }
  ~Xxh3() { XXH3_freeState(state); }
  XXH3_state_t* state;
};

TableChecksum::TableChecksum(ChecksumKind kind) : kind_(kind) {
  if (kind_ == ChecksumKind::kLanes) {
    lanes_ = std::make_unique<Lanes>();
  } else {
    xxh3_ = std::make_unique<Xxh3>();
  }
}

TableChecksum::~TableChecksum() = default;

void TableChecksum::Add(const uint8_t* data, size_t bytes) {
  if (lanes_ != nullptr) {
    lanes_->Add(data, bytes);
  } else {
    XXH3_64bits_update(xxh3_->state, data, bytes);
  }
}

uint64_t TableChecksum::Finish() const {
  return lanes_ != nullptr ? lanes_->Finish()
                           : XXH3_64bits_digest(xxh3_->state);
}

uint64_t TableChecksum::Of(ChecksumKind kind, const uint8_t* data,
                           size_t bytes) {
  if (kind == ChecksumKind::kXxh3) return XXH3_64bits(data, bytes);
  TableChecksum sum(kind);
  sum.Add(data, bytes);
  return sum.Finish();
}

}  // namespace engram
