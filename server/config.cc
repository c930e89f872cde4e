#include "server/config.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <initializer_list>
#include <limits>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace engram {
namespace {

template <typename T>
struct Range {
  const char* flag;
  T value;
  T min;
  T max;
};

template <typename T>
absl::Status CheckRanges(std::initializer_list<Range<T>> ranges) {
  for (const Range<T>& r : ranges) {
    if (r.value >= r.min && r.value <= r.max) continue;
    std::string range = r.max == std::numeric_limits<T>::max()
                            ? absl::StrCat("at least ", r.min)
                            : absl::StrCat("from ", r.min, " to ", r.max);
    return absl::InvalidArgumentError(absl::StrCat(
        "bad value ", r.value, " for --", r.flag, ": must be ", range));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckServerConfig(const ServerConfig& c) {
  constexpr int64_t kAny = std::numeric_limits<int64_t>::max();
  constexpr double kForever = std::numeric_limits<double>::max();
  if (c.listen.empty()) {
    return absl::InvalidArgumentError("--listen is empty: give HOST:PORT");
  }
  if (c.peer_read != "auto" && c.peer_read != "rma" &&
      c.peer_read != "gather") {
    return absl::InvalidArgumentError(
        absl::StrCat("bad value '", c.peer_read,
                     "' for --peer_read: must be auto, rma or gather"));
  }
  if (absl::Status s = CheckRanges<int64_t>({
          {"threads", c.threads, 0, kAny},
          {"max_message_bytes", c.max_message_bytes, 4096, int64_t{2047} << 20},
          {"max_lookup_rows", c.max_lookup_rows, 1, kAny},
          {"gpu", c.gpu, -1, kAny},
          {"gpu_min_rows", c.gpu_min_rows, 1, kAny},
          {"gpu_streams", c.gpu_streams, 1, 64},
          {"shard_index", c.shard_index, 0, kAny},
          {"replication", c.replication, 1, kAny},
          {"max_populate_streams", c.max_populate_streams, 1, kAny},
          {"max_pending_response_bytes", c.max_pending_response_bytes, 1, kAny},
          {"max_pending_response_bytes_per_connection",
           c.max_pending_response_bytes_per_connection, 1, kAny},
          {"max_concurrent_streams", c.max_concurrent_streams, 1, kAny},
          {"reserved_fds", c.reserved_fds, 8, kAny},
          {"max_open_files", c.max_open_files, 0, kAny},
          {"max_connections_per_address", c.max_connections_per_address, 0,
           kAny},
          {"max_watch_streams_per_caller", c.max_watch_streams_per_caller, 1,
           kAny},
      });
      !s.ok()) {
    return s;
  }
  for (auto [flag, seconds] :
       {std::pair("staged_timeout_seconds", c.staged_timeout_seconds),
        std::pair("watch_lease_seconds", c.watch_lease_seconds)}) {
    if (!(seconds > 0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "bad value ", seconds, " for --", flag, ": must be more than 0"));
    }
  }
  // 0 disables these.
  return CheckRanges<double>({
      {"drain_seconds", c.drain_seconds, 0, kForever},
      {"stream_idle_timeout_seconds", c.stream_idle_timeout_seconds, 0,
       kForever},
      {"connection_idle_timeout_seconds", c.connection_idle_timeout_seconds, 0,
       kForever},
      {"credentials_reload_seconds", c.credentials_reload_seconds, 0, kForever},
      {"load_max_mib_per_second", c.load_max_mib_per_second, 0, 1e9},
  });
}

absl::StatusOr<std::vector<std::string>> ClusterPeers(
    const ServerConfig& config) {
  std::vector<std::string> peers;
  if (config.peers.empty()) {
    if (config.shard_index != 0 || config.replication != 1) {
      return absl::InvalidArgumentError(
          "--shard_index and --replication need --peers (the shard list)");
    }
    return peers;
  }
  for (absl::string_view p : absl::StrSplit(config.peers, ',')) {
    std::string peer(absl::StripAsciiWhitespace(p));
    if (peer.empty() || peer.find(':') == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("--peers entry '", peer, "' is not HOST:PORT"));
    }
    for (const std::string& seen : peers) {
      if (seen == peer) {
        return absl::InvalidArgumentError(
            absl::StrCat("--peers lists ", peer, " twice"));
      }
    }
    peers.push_back(peer);
  }
  if (config.shard_index >= static_cast<int>(peers.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("--shard_index=", config.shard_index, " but --peers has ",
                     peers.size(), " shards"));
  }
  if (config.replication > static_cast<int>(peers.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("--replication=", config.replication, " exceeds the ",
                     peers.size(), " shards in --peers"));
  }
  return peers;
}

std::string LocalDialAddress(const std::string& listen, int port) {
  const size_t colon = listen.rfind(':');
  std::string host = colon == std::string::npos ? "" : listen.substr(0, colon);
  if (host.empty() || host == "0.0.0.0" || host == "*") host = "127.0.0.1";
  if (host == "[::]") host = "[::1]";
  return absl::StrCat(host, ":", port);
}

bool IsLoopbackHost(const std::string& host) {
  std::string name = host;
  if (name.size() > 2 && name.front() == '[' && name.back() == ']') {
    name = name.substr(1, name.size() - 2);
  }
  auto loopback = [](const sockaddr* a) {
    if (a->sa_family == AF_INET) {
      const uint32_t ip =
          ntohl(reinterpret_cast<const sockaddr_in*>(a)->sin_addr.s_addr);
      return (ip >> 24) == 127;
    }
    if (a->sa_family == AF_INET6) {
      const in6_addr& ip = reinterpret_cast<const sockaddr_in6*>(a)->sin6_addr;
      return IN6_IS_ADDR_LOOPBACK(&ip) ||
             (IN6_IS_ADDR_V4MAPPED(&ip) && ip.s6_addr[12] == 127);
    }
    return false;
  };
  // Addresses by value, names by what they resolve to (every address).
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* resolved = nullptr;
  if (getaddrinfo(name.c_str(), nullptr, &hints, &resolved) != 0) return false;
  bool all = resolved != nullptr;
  for (addrinfo* a = resolved; a != nullptr; a = a->ai_next) {
    all = all && loopback(a->ai_addr);
  }
  freeaddrinfo(resolved);
  return all;
}

absl::Status CheckSecurityFlags(const ServerConfig& config,
                                const std::vector<std::string>& peers) {
  if (config.tls_cert_file.empty() != config.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls_cert_file and --tls_key_file go together");
  }
  const bool tls = !config.tls_cert_file.empty();
  if (!tls &&
      (!config.tls_client_ca_file.empty() || !config.tls_ca_file.empty())) {
    return absl::InvalidArgumentError(
        "--tls_client_ca_file and --tls_ca_file need TLS: give "
        "--tls_cert_file and --tls_key_file");
  }
  if (!config.tls_identities_file.empty() &&
      config.tls_client_ca_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls_identities_file needs --tls_client_ca_file (client "
        "certificates are verified only with it)");
  }
  if (peers.empty()) return absl::OkStatus();
  if (tls && config.tls_ca_file.empty()) {
    return absl::InvalidArgumentError(
        "a cluster with TLS needs --tls_ca_file: the CA shards verify each "
        "other's certificates with");
  }
  const bool credentials = !config.tokens_file.empty() ||
                           !config.cluster_token_file.empty() ||
                           !config.tls_client_ca_file.empty();
  if (credentials && config.cluster_token_file.empty() &&
      config.tls_identities_file.empty()) {
    return absl::InvalidArgumentError(
        "with credentials configured, shards must prove themselves to each "
        "other: give --cluster_token_file (or mTLS identities with the peer "
        "role in --tls_identities_file)");
  }
  if (credentials || config.insecure_allow_unauthenticated_remote) {
    return absl::OkStatus();
  }
  for (const std::string& peer : peers) {
    const std::string host = peer.substr(0, peer.rfind(':'));
    if (!IsLoopbackHost(host)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--peers lists ", peer,
          ", not on loopback, and no credentials are configured: without "
          "them engramd serves only loopback clients. Give the shards "
          "--cluster_token_file (and clients --tokens_file) or mTLS, or "
          "pass --insecure_allow_unauthenticated_remote"));
    }
  }
  return absl::OkStatus();
}

void ResolveServerDefaults(ServerConfig* config) {
  if (config->threads == 0) {
    config->threads = std::max(1u, std::thread::hardware_concurrency());
  }
  if (config->memory_limit_bytes == 0) {
    const uint64_t pages = static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES));
    const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    config->memory_limit_bytes = pages * page / 10 * 8;
  }
}

}  // namespace engram
