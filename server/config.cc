#include "server/flags.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace engram {
namespace {

struct FlagSpec {
  const char* name;
  const char* help;
  bool is_bool;
  // Applies a value; false when it does not parse.
  std::function<bool(ServerConfig*, const std::string&)> set;
  std::function<std::string(const ServerConfig&)> show;
};

template <typename T>
bool ParseNumber(const std::string& text, T* out) {
  if constexpr (std::is_same_v<T, double>) {
    return absl::SimpleAtod(text, out);
  } else {
    return absl::SimpleAtoi(text, out);
  }
}

bool ParseBool(const std::string& text, bool* out) {
  return absl::SimpleAtob(text, out);
}

const std::vector<FlagSpec>& Flags() {
  static const auto* flags = new std::vector<FlagSpec>{
      {"listen", "gRPC address, HOST:PORT (port 0 picks a free port)", false,
       [](ServerConfig* c, const std::string& v) {
         c->listen = v;
         return !v.empty();
       },
       [](const ServerConfig& c) { return c.listen; }},
      {"metrics_listen",
       "Prometheus /metrics address, HOST:PORT; empty disables it", false,
       [](ServerConfig* c, const std::string& v) {
         c->metrics_listen = v;
         return true;
       },
       [](const ServerConfig& c) { return c.metrics_listen; }},
      {"memory_limit_bytes",
       "budget for table memory in bytes; 0 means 80% of physical memory",
       false,
       [](ServerConfig* c, const std::string& v) {
         return ParseNumber(v, &c->memory_limit_bytes);
       },
       [](const ServerConfig& c) {
         return absl::StrCat(c.memory_limit_bytes);
       }},
      {"threads", "gather worker threads; 0 means one per core", false,
       [](ServerConfig* c, const std::string& v) {
         return ParseNumber(v, &c->threads) && c->threads >= 0;
       },
       [](const ServerConfig& c) { return absl::StrCat(c.threads); }},
      {"max_message_bytes",
       "largest gRPC message received or sent (requests, chunks, lookup "
       "responses)",
       false,
       [](ServerConfig* c, const std::string& v) {
         return ParseNumber(v, &c->max_message_bytes) &&
                c->max_message_bytes >= 4096 &&
                c->max_message_bytes <= int64_t{2047} << 20;
       },
       [](const ServerConfig& c) { return absl::StrCat(c.max_message_bytes); }},
      {"max_lookup_rows", "most rows (B*L*H) one Lookup may ask for", false,
       [](ServerConfig* c, const std::string& v) {
         return ParseNumber(v, &c->max_lookup_rows) && c->max_lookup_rows > 0;
       },
       [](const ServerConfig& c) { return absl::StrCat(c.max_lookup_rows); }},
      {"demo",
       "serve a small synthetic layer (id 0, 4 heads, D = 8, float32) so a "
       "first lookup works",
       true,
       [](ServerConfig* c, const std::string& v) {
         return ParseBool(v, &c->demo);
       },
       [](const ServerConfig& c) { return c.demo ? "true" : "false"; }},
      {"load",
       "a load manifest (docs/tables.md) whose layers are loaded at start; "
       "not ready until they are in",
       false,
       [](ServerConfig* c, const std::string& v) {
         c->load = v;
         return true;
       },
       [](const ServerConfig& c) { return c.load; }},
      {"load_root",
       "folder whose manifests and checkpoint files Load requests may read; "
       "empty refuses Load requests",
       false,
       [](ServerConfig* c, const std::string& v) {
         c->load_root = v;
         return true;
       },
       [](const ServerConfig& c) { return c.load_root; }},
      {"data_dir",
       "keep committed layers as files in this folder (local NVMe, or /dev/shm "
       "for a node-local shared copy) and serve them again after a restart; "
       "tables may then exceed the memory budget",
       false,
       [](ServerConfig* c, const std::string& v) {
         c->data_dir = v;
         return true;
       },
       [](const ServerConfig& c) { return c.data_dir; }},
      {"verify_data_dir",
       "at start, check every stored table's checksums before serving it "
       "(reads every row once)",
       true,
       [](ServerConfig* c, const std::string& v) {
         return ParseBool(v, &c->verify_data_dir);
       },
       [](const ServerConfig& c) {
         return c.verify_data_dir ? "true" : "false";
       }},
      {"pin_memory", "lock table memory in RAM (mlock), best effort", true,
       [](ServerConfig* c, const std::string& v) {
         return ParseBool(v, &c->pin_memory);
       },
       [](const ServerConfig& c) { return c.pin_memory ? "true" : "false"; }},
      {"drain_seconds",
       "on SIGTERM/SIGINT, seconds in-flight calls get to finish", false,
       [](ServerConfig* c, const std::string& v) {
         return ParseNumber(v, &c->drain_seconds) && c->drain_seconds >= 0;
       },
       [](const ServerConfig& c) { return absl::StrCat(c.drain_seconds); }},
      {"gpu",
       "CUDA device to mirror layers to and serve lookups from; -1 keeps "
       "everything on the CPU",
       false,
       [](ServerConfig* c, const std::string& v) {
         return ParseNumber(v, &c->gpu) && c->gpu >= -1;
       },
       [](const ServerConfig& c) { return absl::StrCat(c.gpu); }},
      {"gpu_memory_limit_bytes",
       "GPU memory budget for mirrored layers; 0 means 90% of the device's "
       "free memory",
       false,
       [](ServerConfig* c, const std::string& v) {
         return ParseNumber(v, &c->gpu_memory_limit_bytes);
       },
       [](const ServerConfig& c) {
         return absl::StrCat(c.gpu_memory_limit_bytes);
       }},
      {"gpu_min_rows",
       "lookups of fewer rows are served by the CPU even when the layer is "
       "on the GPU (the measured crossover)",
       false,
       [](ServerConfig* c, const std::string& v) {
         return ParseNumber(v, &c->gpu_min_rows) && c->gpu_min_rows >= 1;
       },
       [](const ServerConfig& c) { return absl::StrCat(c.gpu_min_rows); }},
      {"gpu_streams", "concurrent GPU lookups (CUDA streams)", false,
       [](ServerConfig* c, const std::string& v) {
         return ParseNumber(v, &c->gpu_streams) && c->gpu_streams >= 1 &&
                c->gpu_streams <= 64;
       },
       [](const ServerConfig& c) { return absl::StrCat(c.gpu_streams); }},
      {"shard_index",
       "this shard's position in --peers (Kubernetes: the pod ordinal)", false,
       [](ServerConfig* c, const std::string& v) {
         return ParseNumber(v, &c->shard_index) && c->shard_index >= 0;
       },
       [](const ServerConfig& c) { return absl::StrCat(c.shard_index); }},
      {"peers",
       "HOST:PORT of every shard, this one included, in the same order on all "
       "shards; empty runs a single node",
       false,
       [](ServerConfig* c, const std::string& v) {
         c->peers = v;
         return true;
       },
       [](const ServerConfig& c) { return c.peers; }},
      {"replication", "copies of every row range (on consecutive shards)",
       false,
       [](ServerConfig* c, const std::string& v) {
         return ParseNumber(v, &c->replication) && c->replication >= 1;
       },
       [](const ServerConfig& c) { return absl::StrCat(c.replication); }},
      {"peer_read",
       "how rows owned by other shards are read: auto (UCX one-sided reads "
       "where the transport does them natively - same-host shared memory, "
       "RDMA - else gather), rma (always UCX; transport picked by UCX_TLS) "
       "or gather (the owner packs them, over gRPC)",
       false,
       [](ServerConfig* c, const std::string& v) {
         c->peer_read = v;
         return v == "auto" || v == "rma" || v == "gather";
       },
       [](const ServerConfig& c) { return c.peer_read; }},
      {"direct_reads",
       "single node: export table memory (UCX shared memory) so clients on "
       "this host read rows directly (ClientOptions::direct_reads)",
       true,
       [](ServerConfig* c, const std::string& v) {
         return ParseBool(v, &c->direct_reads);
       },
       [](const ServerConfig& c) { return c.direct_reads ? "true" : "false"; }},
      {"shm_group",
       "exported tables' shared memory (--direct_reads, --peer_read=rma) is "
       "owner-only; members of this group may read it (read-only), for "
       "direct readers running as other users",
       false,
       [](ServerConfig* c, const std::string& v) {
         c->shm_group = v;
         return true;
       },
       [](const ServerConfig& c) { return c.shm_group; }},
      {"ucx_tcp_interface",
       "let UCX's TCP transport carry --peer_read=rma between shards, on "
       "this interface only (auto: the one holding this shard's --peers "
       "address); empty (default): UCX opens no network listener. TCP cannot "
       "enforce read-only access: anyone who reaches the interface could "
       "write into engramd's memory - trusted networks only",
       false,
       [](ServerConfig* c, const std::string& v) {
         c->ucx_tcp_interface = v;
         return true;
       },
       [](const ServerConfig& c) { return c.ucx_tcp_interface; }},
      {"staged_timeout_seconds",
       "populate data staged for a coordinator that never commits is dropped "
       "after this long",
       false,
       [](ServerConfig* c, const std::string& v) {
         return ParseNumber(v, &c->staged_timeout_seconds) &&
                c->staged_timeout_seconds > 0;
       },
       [](const ServerConfig& c) {
         return absl::StrCat(c.staged_timeout_seconds);
       }},
      {"stream_idle_timeout_seconds",
       "a Populate or Stage stream that sends nothing for this long is ended "
       "(DEADLINE_EXCEEDED) and its staged rows dropped; 0 disables",
       false,
       [](ServerConfig* c, const std::string& v) {
         return ParseNumber(v, &c->stream_idle_timeout_seconds) &&
                c->stream_idle_timeout_seconds >= 0;
       },
       [](const ServerConfig& c) {
         return absl::StrCat(c.stream_idle_timeout_seconds);
       }},
      {"max_populate_streams",
       "Populate and Stage streams open at once; more are "
       "RESOURCE_EXHAUSTED",
       false,
       [](ServerConfig* c, const std::string& v) {
         return ParseNumber(v, &c->max_populate_streams) &&
                c->max_populate_streams > 0;
       },
       [](const ServerConfig& c) {
         return absl::StrCat(c.max_populate_streams);
       }},
      {"max_pending_response_bytes",
       "lookup/gather response bytes held for all clients that have not read "
       "them yet; past it lookups are RESOURCE_EXHAUSTED",
       false,
       [](ServerConfig* c, const std::string& v) {
         return ParseNumber(v, &c->max_pending_response_bytes) &&
                c->max_pending_response_bytes > 0;
       },
       [](const ServerConfig& c) {
         return absl::StrCat(c.max_pending_response_bytes);
       }},
      {"max_pending_response_bytes_per_connection",
       "the same, for one client connection", false,
       [](ServerConfig* c, const std::string& v) {
         return ParseNumber(v, &c->max_pending_response_bytes_per_connection) &&
                c->max_pending_response_bytes_per_connection > 0;
       },
       [](const ServerConfig& c) {
         return absl::StrCat(c.max_pending_response_bytes_per_connection);
       }},
      {"max_concurrent_streams", "concurrent calls per client connection",
       false,
       [](ServerConfig* c, const std::string& v) {
         return ParseNumber(v, &c->max_concurrent_streams) &&
                c->max_concurrent_streams > 0;
       },
       [](const ServerConfig& c) {
         return absl::StrCat(c.max_concurrent_streams);
       }},
      {"connection_idle_timeout_seconds",
       "a client connection without calls for this long is closed (clients "
       "reconnect on their next call); 0 disables",
       false,
       [](ServerConfig* c, const std::string& v) {
         return ParseNumber(v, &c->connection_idle_timeout_seconds) &&
                c->connection_idle_timeout_seconds >= 0;
       },
       [](const ServerConfig& c) {
         return absl::StrCat(c.connection_idle_timeout_seconds);
       }},
      {"reserved_fds",
       "new connections are refused while fewer file descriptors than this "
       "are free (the open-file limit is raised to its maximum at start)",
       false,
       [](ServerConfig* c, const std::string& v) {
         return ParseNumber(v, &c->reserved_fds) && c->reserved_fds >= 8;
       },
       [](const ServerConfig& c) { return absl::StrCat(c.reserved_fds); }},
      {"max_open_files",
       "open-file limit (RLIMIT_NOFILE) to run with; 0 raises it to the hard "
       "limit",
       false,
       [](ServerConfig* c, const std::string& v) {
         return ParseNumber(v, &c->max_open_files) && c->max_open_files >= 0;
       },
       [](const ServerConfig& c) { return absl::StrCat(c.max_open_files); }},
      {"max_connections_per_address",
       "connections open at once from one remote address (0: no cap); "
       "raise it behind a proxy or mesh sidecar, where every client has the "
       "proxy's address",
       false,
       [](ServerConfig* c, const std::string& v) {
         return ParseNumber(v, &c->max_connections_per_address) &&
                c->max_connections_per_address >= 0;
       },
       [](const ServerConfig& c) {
         return absl::StrCat(c.max_connections_per_address);
       }},
      {"watch_lease_seconds",
       "a WatchLayer reader (device lookups) that has not released a "
       "replaced or removed version after this long has its stream ended, "
       "and the version freed",
       false,
       [](ServerConfig* c, const std::string& v) {
         return ParseNumber(v, &c->watch_lease_seconds) &&
                c->watch_lease_seconds > 0;
       },
       [](const ServerConfig& c) {
         return absl::StrCat(c.watch_lease_seconds);
       }},
      {"max_watch_streams_per_caller",
       "WatchLayer streams one caller (credential, or address without "
       "credentials) may hold open",
       false,
       [](ServerConfig* c, const std::string& v) {
         return ParseNumber(v, &c->max_watch_streams_per_caller) &&
                c->max_watch_streams_per_caller > 0;
       },
       [](const ServerConfig& c) {
         return absl::StrCat(c.max_watch_streams_per_caller);
       }},
      {"tls_cert_file",
       "serve TLS with this certificate chain (PEM; re-read when it changes)",
       false,
       [](ServerConfig* c, const std::string& v) {
         c->tls_cert_file = v;
         return true;
       },
       [](const ServerConfig& c) { return c.tls_cert_file; }},
      {"tls_key_file", "the private key of --tls_cert_file (PEM)", false,
       [](ServerConfig* c, const std::string& v) {
         c->tls_key_file = v;
         return true;
       },
       [](const ServerConfig& c) { return c.tls_key_file; }},
      {"tls_ca_file",
       "the CA that signs the shards' certificates: shards verify each other "
       "with it and present --tls_cert_file to each other",
       false,
       [](ServerConfig* c, const std::string& v) {
         c->tls_ca_file = v;
         return true;
       },
       [](const ServerConfig& c) { return c.tls_ca_file; }},
      {"tls_client_ca_file",
       "verify client certificates signed by this CA (mTLS); a certificate "
       "from another CA, or expired, is refused in the handshake",
       false,
       [](ServerConfig* c, const std::string& v) {
         c->tls_client_ca_file = v;
         return true;
       },
       [](const ServerConfig& c) { return c.tls_client_ca_file; }},
      {"tls_identities_file",
       "'ROLE IDENTITY' lines: the role of a verified client certificate "
       "whose common name or subject alternative name is IDENTITY",
       false,
       [](ServerConfig* c, const std::string& v) {
         c->tls_identities_file = v;
         return true;
       },
       [](const ServerConfig& c) { return c.tls_identities_file; }},
      {"tokens_file",
       "'ROLE NAME TOKEN' lines (role read, write, admin or peer): bearer "
       "tokens clients send as 'authorization: Bearer TOKEN'",
       false,
       [](ServerConfig* c, const std::string& v) {
         c->tokens_file = v;
         return true;
       },
       [](const ServerConfig& c) { return c.tokens_file; }},
      {"cluster_token_file",
       "the secret shards present to each other (its first line); grants "
       "the peer role",
       false,
       [](ServerConfig* c, const std::string& v) {
         c->cluster_token_file = v;
         return true;
       },
       [](const ServerConfig& c) { return c.cluster_token_file; }},
      {"insecure_allow_unauthenticated_remote",
       "without credentials engramd serves only loopback clients; this "
       "serves anyone who can reach the port, with every right (insecure)",
       true,
       [](ServerConfig* c, const std::string& v) {
         return ParseBool(v, &c->insecure_allow_unauthenticated_remote);
       },
       [](const ServerConfig& c) {
         return c.insecure_allow_unauthenticated_remote ? "true" : "false";
       }},
      {"credentials_reload_seconds",
       "how often token and identity files are checked for changes (SIGHUP "
       "reloads at once); 0 only on SIGHUP",
       false,
       [](ServerConfig* c, const std::string& v) {
         return ParseNumber(v, &c->credentials_reload_seconds) &&
                c->credentials_reload_seconds >= 0;
       },
       [](const ServerConfig& c) {
         return absl::StrCat(c.credentials_reload_seconds);
       }},
      {"port_file",
       "write 'grpc_port=N' and 'metrics_port=M' here once serving (for "
       "scripts using port 0)",
       false,
       [](ServerConfig* c, const std::string& v) {
         c->port_file = v;
         return true;
       },
       [](const ServerConfig& c) { return c.port_file; }},
  };
  return *flags;
}

}  // namespace

absl::StatusOr<ServerConfig> ParseServerFlags(int argc, char** argv) {
  ServerConfig config;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h" || arg == "--helpfull") {
      config.help = true;
      continue;
    }
    if (!absl::StartsWith(arg, "--")) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unexpected argument '", arg, "' (flags are --name=value)"));
    }
    std::string name = arg.substr(2);
    std::string value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    const FlagSpec* spec = nullptr;
    for (const FlagSpec& f : Flags()) {
      if (name == f.name) spec = &f;
    }
    bool negated = false;
    if (spec == nullptr && absl::StartsWith(name, "no")) {
      for (const FlagSpec& f : Flags()) {
        if (f.is_bool && name.substr(2) == f.name) spec = &f;
      }
      negated = spec != nullptr;
    }
    if (spec == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag --", name, " (see --help)"));
    }
    if (!has_value) {
      if (spec->is_bool) {
        value = negated ? "false" : "true";
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("flag --", name, " needs a value"));
      }
    }
    if (!spec->set(&config, value)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "bad value '", value, "' for --", spec->name, ": ", spec->help));
    }
  }
  return config;
}

std::string ServerFlagsHelp() {
  std::string out =
      "engramd: serves Engram embedding tables over gRPC "
      "(engram.v1.EngramStore)\n"
      "\nUsage: engramd [--flag=value ...]\n\nFlags:\n";
  ServerConfig defaults;
  for (const FlagSpec& f : Flags()) {
    absl::StrAppend(&out, "  --", f.name, " (default: \"", f.show(defaults),
                    "\")\n      ", f.help, "\n");
  }
  absl::StrAppend(&out, "  --help\n      print this text and exit\n");
  return out;
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
