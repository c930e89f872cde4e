#include "transport/ucx_policy.h"

#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace engram::transport {
namespace {

bool IsTcp(absl::string_view token) {
  // "tcp" and its qualified forms ("tcp:aux" in some UCX versions).
  return token == "tcp" || absl::StartsWith(token, "tcp:");
}

bool SameAddress(const sockaddr* a, const sockaddr* b) {
  if (a == nullptr || b == nullptr || a->sa_family != b->sa_family) {
    return false;
  }
  if (a->sa_family == AF_INET) {
    return std::memcmp(&reinterpret_cast<const sockaddr_in*>(a)->sin_addr,
                       &reinterpret_cast<const sockaddr_in*>(b)->sin_addr,
                       sizeof(in_addr)) == 0;
  }
  if (a->sa_family == AF_INET6) {
    return std::memcmp(&reinterpret_cast<const sockaddr_in6*>(a)->sin6_addr,
                       &reinterpret_cast<const sockaddr_in6*>(b)->sin6_addr,
                       sizeof(in6_addr)) == 0;
  }
  return false;
}

}  // namespace

absl::StatusOr<UcxSettings> UcxSettingsFor(const char* env_tls,
                                           const char* env_net_devices,
                                           bool same_host_only,
                                           std::string_view tcp_interface) {
  UcxSettings settings;
  if (same_host_only) {
    // "sm": System V and POSIX shared memory, CMA (each needs the owner's
    // user or its segments' permission). Exports land in System V segments.
    settings.tls = "sm";
    return settings;
  }
  std::string tls = env_tls == nullptr ? "" : std::string(env_tls);
  absl::StripAsciiWhitespace(&tls);
  if (tls.empty()) tls = "all";
  if (!tcp_interface.empty()) {
    settings.tls = tls;
    // Bound to the cluster interface unless the operator listed devices.
    settings.net_devices = env_net_devices != nullptr && *env_net_devices
                               ? std::string(env_net_devices)
                               : std::string(tcp_interface);
    return settings;
  }
  if (tls == "all") {
    settings.tls = "^tcp";
  } else if (tls.front() == '^') {
    settings.tls = absl::StrCat(tls, ",tcp");
  } else {
    std::vector<std::string> kept;
    for (absl::string_view token : absl::StrSplit(tls, ',')) {
      if (!IsTcp(token) && !token.empty()) kept.emplace_back(token);
    }
    if (kept.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "UCX_TLS=", tls,
          " selects only UCX's TCP transport, which cannot enforce read-only "
          "access to exported tables (anyone who reaches its port could "
          "write into this process); it is used only when an interface is "
          "named for it (engramd --ucx_tcp_interface, trusted networks only)"));
    }
    settings.tls = absl::StrJoin(kept, ",");
  }
  return settings;
}

absl::StatusOr<std::string> InterfaceOf(std::string_view host) {
  std::string name(host);
  if (name.size() > 2 && name.front() == '[' && name.back() == ']') {
    name = name.substr(1, name.size() - 2);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* resolved = nullptr;
  if (int rc = getaddrinfo(name.c_str(), nullptr, &hints, &resolved); rc != 0) {
    return absl::NotFoundError(
        absl::StrCat("cannot resolve '", name, "': ", gai_strerror(rc)));
  }
  ifaddrs* interfaces = nullptr;
  if (getifaddrs(&interfaces) != 0) {
    freeaddrinfo(resolved);
    return absl::InternalError("getifaddrs failed");
  }
  std::string found;
  for (addrinfo* a = resolved; a != nullptr && found.empty(); a = a->ai_next) {
    for (ifaddrs* i = interfaces; i != nullptr; i = i->ifa_next) {
      if (SameAddress(a->ai_addr, i->ifa_addr)) {
        found = i->ifa_name;
        break;
      }
    }
  }
  freeifaddrs(interfaces);
  freeaddrinfo(resolved);
  if (found.empty()) {
    return absl::NotFoundError(absl::StrCat(
        "no interface of this host has the address of '", name, "'"));
  }
  return found;
}

}  // namespace engram::transport
