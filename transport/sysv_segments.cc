#include "transport/sysv_segments.h"

#include <sys/ipc.h>
#include <sys/shm.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace engram::transport {

absl::Status RestrictOwnSysvSegments(mode_t mode, gid_t group) {
  std::ifstream table("/proc/sysvipc/shm");
  if (!table) return absl::OkStatus();  // no System V IPC: nothing to do
  const pid_t self = getpid();
  std::string line;
  std::getline(table, line);  // the header
  while (std::getline(table, line)) {
    // key shmid perms size cpid lpid nattch uid gid ...
    std::istringstream fields(line);
    long long key = 0, size = 0;
    int shmid = 0;
    unsigned perms = 0;
    pid_t cpid = 0, lpid = 0;
    long long nattch = 0;
    uid_t uid = 0;
    gid_t gid = 0;
    if (!(fields >> key >> shmid >> std::oct >> perms >> std::dec >> size >>
          cpid >> lpid >> nattch >> uid >> gid)) {
      continue;
    }
    if (cpid != self) continue;
    if ((perms & 0777) == (mode & 0777) &&
        (group == static_cast<gid_t>(-1) || gid == group)) {
      continue;
    }
    shmid_ds ds{};
    if (shmctl(shmid, IPC_STAT, &ds) != 0) continue;  // gone meanwhile
    ds.shm_perm.mode = (ds.shm_perm.mode & ~0777u) | (mode & 0777);
    if (group != static_cast<gid_t>(-1)) ds.shm_perm.gid = group;
    if (shmctl(shmid, IPC_SET, &ds) != 0) {
      return absl::PermissionDeniedError(
          absl::StrCat("cannot restrict shared-memory segment ", shmid, ": ",
                       std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

std::optional<SysvLocation> SysvSegmentAt(const void* address) {
  const uint64_t at = reinterpret_cast<uint64_t>(address);
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    // start-end perms offset dev inode path; a System V segment's inode is
    // its id and its path "/SYSV<key in hex> (deleted)".
    std::istringstream fields(line);
    std::string range, perms, offset, dev, path;
    long long inode = 0;
    if (!(fields >> range >> perms >> offset >> dev >> inode >> path)) continue;
    if (!absl::StartsWith(path, "/SYSV")) continue;
    const size_t dash = range.find('-');
    if (dash == std::string::npos) continue;
    const uint64_t start = std::stoull(range.substr(0, dash), nullptr, 16);
    const uint64_t end = std::stoull(range.substr(dash + 1), nullptr, 16);
    if (at < start || at >= end) continue;
    return SysvLocation{inode, at - start + std::stoull(offset, nullptr, 16)};
  }
  return std::nullopt;
}

absl::StatusOr<AttachedSegment> AttachedSegment::Attach(int64_t shm_id,
                                                        bool writable) {
  shmid_ds ds{};
  if (shmctl(static_cast<int>(shm_id), IPC_STAT, &ds) != 0) {
    const int e = errno;
    return e == EACCES
               ? absl::PermissionDeniedError(
                     absl::StrCat("shared-memory segment ", shm_id,
                                  ": not readable by this user"))
               : absl::NotFoundError(absl::StrCat(
                     "shared-memory segment ", shm_id, ": ", std::strerror(e)));
  }
  void* p = shmat(static_cast<int>(shm_id), nullptr, writable ? 0 : SHM_RDONLY);
  if (p == reinterpret_cast<void*>(-1)) {
    return absl::PermissionDeniedError(absl::StrCat(
        "attaching shared-memory segment ", shm_id,
        writable ? " read-write: " : " read-only: ", std::strerror(errno)));
  }
  AttachedSegment segment;
  segment.data_ = static_cast<const uint8_t*>(p);
  segment.size_ = ds.shm_segsz;
  segment.creator_ = ds.shm_cpid;
  return segment;
}

AttachedSegment::AttachedSegment(AttachedSegment&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(other.size_),
      creator_(other.creator_) {}

AttachedSegment& AttachedSegment::operator=(AttachedSegment&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) shmdt(data_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = other.size_;
    creator_ = other.creator_;
  }
  return *this;
}

AttachedSegment::~AttachedSegment() {
  if (data_ != nullptr) shmdt(data_);
}

}  // namespace engram::transport
