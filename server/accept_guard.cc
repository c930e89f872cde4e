#include "server/accept_guard.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

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
std::atomic<int> per_address_cap{0};
std::atomic<int64_t> refused_per_address{0};

// The remote address of socket `fd` (family and address bytes, no port);
// empty when `fd` is not a connected IP socket.
std::string PeerAddress(int fd) {
  sockaddr_storage peer{};
  socklen_t length = sizeof peer;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &length) != 0) {
    return "";
  }
  if (peer.ss_family == AF_INET) {
    const auto& a = reinterpret_cast<const sockaddr_in&>(peer).sin_addr;
    return std::string("4") +
           std::string(reinterpret_cast<const char*>(&a), sizeof a);
  }
  if (peer.ss_family == AF_INET6) {
    const auto& a = reinterpret_cast<const sockaddr_in6&>(peer).sin6_addr;
    return std::string("6") +
           std::string(reinterpret_cast<const char*>(&a), sizeof a);
  }
  return "";
}

// Accepted connections by remote address. Closes are not seen here, so
// each address's list is checked when that address connects again: a
// descriptor no longer connected to it (closed, or reused) leaves the list.
// Bounded by the cap per address; addresses with no live entry are erased.
std::mutex by_address_mu;
std::unordered_map<std::string, std::vector<int>>& ByAddress() {
  static auto* map = new std::unordered_map<std::string, std::vector<int>>();
  return *map;
}

// True when `conn` (just accepted) may stay open.
bool AdmitByAddress(int conn) {
  const int cap = per_address_cap.load(std::memory_order_relaxed);
  if (cap <= 0) return true;
  const std::string address = PeerAddress(conn);
  if (address.empty()) return true;  // e.g. a Unix socket
  std::lock_guard<std::mutex> lock(by_address_mu);
  std::vector<int>& open = ByAddress()[address];
  std::erase_if(
      open, [&](int fd) { return fd == conn || PeerAddress(fd) != address; });
  if (static_cast<int>(open.size()) >= cap) return false;
  open.push_back(conn);
  return true;
}

void NoteRefusedPerAddress() {
  const int64_t n = refused_per_address.fetch_add(1, std::memory_order_relaxed);
  if (n < 5 || n % 1000 == 0) {
    LogWarning(absl::StrCat("refused a connection: its address has ",
                            per_address_cap.load(),
                            " open already (--max_connections_per_address; ",
                            n + 1, " refused so far)"));
  }
}

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

absl::Status InstallAcceptGuard(int64_t max_open_files, int reserved_fds,
                                int max_per_address) {
  per_address_cap.store(max_per_address);
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
int64_t ConnectionsRefusedPerAddress() { return refused_per_address.load(); }
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
      if (conn >= fd_ceiling.load(std::memory_order_relaxed)) {
        close(conn);
        NoteRefused();
        continue;
      }
      if (AdmitByAddress(conn)) return conn;
      close(conn);
      NoteRefusedPerAddress();
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
