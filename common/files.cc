#include "common/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace engram {
namespace {

absl::Status OpenError(const std::string& path, int err) {
  const std::string message =
      absl::StrCat("cannot open ", path, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    case ELOOP:
      return absl::FailedPreconditionError(
          absl::StrCat(path, " is a symbolic link, which is not followed"));
    default:
      return absl::FailedPreconditionError(message);
  }
}

}  // namespace

absl::StatusOr<std::string> ReadWholeFile(const std::string& path,
                                          const ReadFileOptions& options) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer.
  const int fd =
      ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK |
                               (options.no_follow ? O_NOFOLLOW : 0));
  if (fd < 0) return OpenError(path, errno);
  struct stat st;
  absl::Status refused;
  if (::fstat(fd, &st) != 0) {
    refused = absl::DataLossError(
        absl::StrCat("cannot stat ", path, ": ", std::strerror(errno)));
  } else if (!S_ISREG(st.st_mode)) {
    refused = absl::FailedPreconditionError(
        absl::StrCat(path, " is not a regular file"));
  } else if (static_cast<uint64_t>(st.st_size) > options.max_bytes) {
    refused = absl::FailedPreconditionError(
        absl::StrCat(path, " is ", st.st_size, " bytes; at most ",
                     options.max_bytes, " are read"));
  }
  if (!refused.ok()) {
    ::close(fd);
    return refused;
  }
  std::string out;
  out.reserve(st.st_size);
  char buf[1 << 16];
  ssize_t n = 0;
  while (out.size() <= options.max_bytes) {
    n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      out.append(buf, n);
    } else if (n == 0 || errno != EINTR) {
      break;
    }
  }
  const int err = errno;
  ::close(fd);
  if (n < 0) {
    return absl::DataLossError(
        absl::StrCat("cannot read ", path, ": ", std::strerror(err)));
  }
  if (out.size() > options.max_bytes) {  // grew while being read
    return absl::FailedPreconditionError(absl::StrCat(
        path, " is over ", options.max_bytes, " bytes; at most that is read"));
  }
  return out;
}

}  // namespace engram
