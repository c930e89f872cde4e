#include "server/accept_guard.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "server/log.h"

namespace engram {
namespace {

using Accept4Fn = int (*)(int, sockaddr*, socklen_t*, int);

std::atomic<bool> armed{false};
std::atomic<int> fd_ceiling{0};  // accepted fds at or above it are refused
std::atomic<int64_t> refused{0};
std::atomic<int64_t> open_file_limit{0};
std::mutex spare_mu;
int spare_fd = -1;  // guarded by spare_mu

Accept4Fn RealAccept4() {
  static const Accept4Fn real =
      reinterpret_cast<Accept4Fn>(dlsym(RTLD_NEXT, "accept4"));
  return real;
}

void NoteRefused() {
  const int64_t n = refused.fetch_add(1, std::memory_order_relaxed);
  if (n < 5 || n % 1000 == 0) {
    LogWarning(
        absl::StrCat("refused a connection: file descriptors are short (",
                     n + 1, " refused so far; limit ", open_file_limit.load(),
                     ", see --max_open_files and --reserved_fds)"));
  }
}

}  // namespace

absl::Status InstallAcceptGuard(int64_t max_open_files, int reserved_fds) {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) {
    return absl::InternalError("getrlimit(RLIMIT_NOFILE) failed");
  }
  rlim_t wanted = limit.rlim_max;
  if (max_open_files > 0) {
    wanted = static_cast<rlim_t>(max_open_files);
    if (limit.rlim_max != RLIM_INFINITY && wanted > limit.rlim_max) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--max_open_files=", max_open_files, " is above the hard limit ",
          limit.rlim_max, " (ulimit -Hn)"));
    }
  }
  // fd numbers are ints; the guard compares them against the ceiling.
  if (wanted == RLIM_INFINITY || wanted > (1u << 30)) wanted = 1u << 30;
  limit.rlim_cur = wanted;
  if (setrlimit(RLIMIT_NOFILE, &limit) != 0) {
    return absl::InternalError(
        absl::StrCat("setrlimit(RLIMIT_NOFILE, ", wanted, ") failed"));
  }
  if (static_cast<int64_t>(wanted) <= 2 * reserved_fds) {
    return absl::InvalidArgumentError(
        absl::StrCat("the open-file limit ", wanted,
                     " leaves no room above --reserved_fds=", reserved_fds));
  }
  open_file_limit.store(static_cast<int64_t>(wanted));
  fd_ceiling.store(static_cast<int>(wanted) - reserved_fds);
  {
    std::lock_guard<std::mutex> lock(spare_mu);
    if (spare_fd < 0) spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  }
  if (RealAccept4() == nullptr) {
    return absl::InternalError("accept4 not found in libc");
  }
  armed.store(true);
  return absl::OkStatus();
}

int64_t ConnectionsRefusedForFds() { return refused.load(); }
int64_t OpenFileLimit() { return open_file_limit.load(); }

}  // namespace engram

// The guard itself. Every accept4 in the process comes here; only engramd
// links this file.
extern "C" int accept4(int fd, sockaddr* addr, socklen_t* addr_len, int flags) {
  using namespace engram;
  const Accept4Fn real = RealAccept4();
  while (true) {
    const int conn = real(fd, addr, addr_len, flags);
    if (!armed.load(std::memory_order_relaxed)) return conn;
    if (conn >= 0) {
      // The kernel hands out the lowest free number: `conn` at or past the
      // ceiling means fewer than --reserved_fds descriptors are free.
      if (conn < fd_ceiling.load(std::memory_order_relaxed)) return conn;
      close(conn);
      NoteRefused();
      continue;
    }
    if (errno != EMFILE && errno != ENFILE) return conn;
    // Out of descriptors (something other than connections took them):
    // use the spare to take one pending connection off the backlog and
    // close it, so gRPC sees EAGAIN and re-arms instead of giving up.
    std::lock_guard<std::mutex> lock(spare_mu);
    if (spare_fd < 0) {
      errno = EAGAIN;
      return -1;
    }
    close(spare_fd);
    const int pending = real(fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (pending >= 0) close(pending);
    spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (pending < 0) {
      errno = EAGAIN;
      return -1;
    }
    NoteRefused();
  }
}
