#include "checkpoint/checkpoint_file.h"

#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace engram::checkpoint {

namespace {

// `path` opened beneath `root`: openat2 with RESOLVE_BENEATH where the
// kernel has it (Linux 5.6), else opened by name and checked afterwards by
// where the descriptor really leads (/proc/self/fd). -1 with errno set;
// EXDEV when it leads outside.
int OpenBeneath(const std::string& path, const std::string& root, int flags) {
  char real_root[PATH_MAX];
  if (::realpath(root.c_str(), real_root) == nullptr) return -1;
  const std::string prefix = std::string(real_root) + "/";
  if (path.compare(0, prefix.size(), prefix) != 0) {
    errno = EXDEV;
    return -1;
  }
  const std::string relative = path.substr(prefix.size());
  const int dir = ::open(real_root, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return -1;
  open_how how{};
  how.flags = static_cast<uint64_t>(flags);
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  int fd = static_cast<int>(
      ::syscall(SYS_openat2, dir, relative.c_str(), &how, sizeof how));
  const int err = errno;
  ::close(dir);
  if (fd >= 0 || err != ENOSYS) {
    errno = err;
    return fd;
  }
  fd = ::open(path.c_str(), flags);
  if (fd < 0) return -1;
  char opened[PATH_MAX];
  const ssize_t n = ::readlink(absl::StrCat("/proc/self/fd/", fd).c_str(),
                               opened, sizeof opened - 1);
  if (n <= 0 || std::string(opened, static_cast<size_t>(n))
                        .compare(0, prefix.size(), prefix) != 0) {
    ::close(fd);
    errno = EXDEV;
    return -1;
  }
  return fd;
}

}  // namespace

absl::StatusOr<std::shared_ptr<const CheckpointFile>> CheckpointFile::Open(
    const std::string& path, const std::string& root) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused
  // below); it changes nothing for regular files.
  constexpr int kFlags = O_RDONLY | O_CLOEXEC | O_NONBLOCK;
  const int fd = root.empty() ? ::open(path.c_str(), kFlags)
                              : OpenBeneath(path, root, kFlags);
  if (fd < 0 && errno == EXDEV) {
    return absl::PermissionDeniedError(absl::StrCat(
        path, " leads outside the load root ", root, " (--load_root)"));
  }
  if (fd < 0) {
    const int err = errno;
    const std::string why =
        absl::StrCat("cannot open ", path, ": ", std::strerror(err));
    if (err == ENOENT || err == ENOTDIR) return absl::NotFoundError(why);
    if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(why);
    return absl::FailedPreconditionError(why);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::FailedPreconditionError(
        absl::StrCat(path, " is not a regular file"));
  }
  return std::shared_ptr<const CheckpointFile>(
      new CheckpointFile(path, fd, static_cast<uint64_t>(st.st_size)));
}

CheckpointFile::~CheckpointFile() { ::close(fd_); }

absl::Status CheckpointFile::ReadAt(uint64_t offset, size_t bytes,
                                    uint8_t* dst) const {
  while (bytes > 0) {
    const ssize_t n = ::pread(fd_, dst, bytes, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::DataLossError(
          absl::StrCat("reading ", bytes, " bytes at offset ", offset, " of ",
                       path_, " failed: ",
                       n == 0 ? "the file ended (changed since it was opened?)"
                              : std::strerror(errno)));
    }
    dst += n;
    offset += static_cast<uint64_t>(n);
    bytes -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> CheckpointFile::ReadPrefix(uint64_t bytes) const {
  std::string out(std::min(bytes, size_), '\0');
  if (absl::Status s =
          ReadAt(0, out.size(), reinterpret_cast<uint8_t*>(out.data()));
      !s.ok()) {
    return s;
  }
  return out;
}

absl::StatusOr<std::string> CheckpointFile::ReadWhole(const std::string& path,
                                                      uint64_t max_bytes,
                                                      const std::string& what,
                                                      const std::string& root) {
  absl::StatusOr<std::shared_ptr<const CheckpointFile>> file = Open(path, root);
  if (!file.ok()) return file.status();
  if ((*file)->size() > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " has ", (*file)->size(), " bytes; a ", what,
                     " may have at most ", max_bytes));
  }
  return (*file)->ReadPrefix(max_bytes);
}

void CheckpointFile::WillReadSequentially(uint64_t offset,
                                          uint64_t bytes) const {
  if (offset >= size_) return;
  ::posix_fadvise(fd_, static_cast<off_t>(offset),
                  static_cast<off_t>(std::min(bytes, size_ - offset)),
                  POSIX_FADV_WILLNEED);
}

}  // namespace engram::checkpoint
