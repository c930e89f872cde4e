// engramd's configuration. Each member is the flag of the same name
// (server/main.cc defines them): the names are a deployment contract,
// manifests and scripts pass them.
#ifndef ENGRAM_SERVER_CONFIG_H_
#define ENGRAM_SERVER_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace engram {

struct ServerConfig {
  std::string listen = "0.0.0.0:50051";
  std::string metrics_listen = "0.0.0.0:9464";  // empty disables /metrics
  // A plaintext listener serving only grpc.health.v1.Health, for probes
  // that cannot speak TLS (kubelet's gRPC probes); empty: none.
  std::string health_listen;
  uint64_t memory_limit_bytes = 0;  // 0: 80% of physical memory
  int threads = 0;                  // 0: one per core
  int64_t max_message_bytes = int64_t{256} << 20;
  int64_t max_lookup_rows = int64_t{1} << 22;
  bool demo = false;
  // A load manifest to load at start (any path the operator names), and
  // the folder Load requests may read under ("" refuses them).
  std::string load;
  std::string load_root;
  // Caps how fast checkpoint files are read (--load, Load, a cluster's
  // staging), so loading does not starve a disk or a shared file system
  // others use; 0: no cap.
  double load_max_mib_per_second = 0;
  // Durable tables: committed layers are files under data_dir, mapped back
  // at start ("" keeps tables in memory only); verify_data_dir checks every
  // stored table's checksums before serving it.
  std::string data_dir;
  bool verify_data_dir = true;
  bool pin_memory = true;
  double drain_seconds = 10;
  int gpu = -1;                         // CUDA device for the GPU tier; -1 off
  uint64_t gpu_memory_limit_bytes = 0;  // 0: 90% of the device's free memory
  int64_t gpu_min_rows = 16384;         // measured crossover (docs/gpu_tier.md)
  int gpu_streams = 4;
  // Sharded cluster: this shard's index into `peers` (HOST:PORT of every
  // shard, itself included, same order on all). Empty peers: single node.
  int shard_index = 0;
  std::string peers;
  int replication = 1;
  double staged_timeout_seconds = 120;
  // How a shard reads rows other shards own: "rma" (UCX one-sided reads
  // straight into the response), "gather" (the owner packs them, over
  // gRPC), or "auto" (rma where UCX reads natively: same-host mapping or
  // RDMA; gather over TCP).
  std::string peer_read = "auto";
  // Single node: keep tables in UCX-exported shared memory so clients on
  // this host can read rows directly (ClientOptions::direct_reads). Cluster
  // shards export whenever peer_read is not "gather".
  bool direct_reads = false;
  // Exported tables' shared memory is owner-only; this group (a name) may
  // read it (read-only), for direct readers running as other users.
  std::string shm_group;
  // UCX's TCP transport (rma between hosts without RDMA) is off unless this
  // names the interface it may use ("auto": the one holding this shard's
  // --peers address). TCP cannot enforce read-only access to exported
  // tables: anyone who reaches that interface could write into engramd.
  std::string ucx_tcp_interface;
  // Abuse limits (docs/operations.md, "Limits").
  // Populate/Stage streams that send nothing for this long are ended.
  double stream_idle_timeout_seconds = 60;
  // Populate + Stage streams open at once (each stages a table in memory).
  int max_populate_streams = 64;
  // Lookup/Gather response bytes allocated and not yet sent, in all and per
  // connection: past them a lookup is RESOURCE_EXHAUSTED instead of
  // buffered (a client that never reads cannot grow the server).
  int64_t max_pending_response_bytes = int64_t{1} << 30;
  int64_t max_pending_response_bytes_per_connection = int64_t{512} << 20;
  // Concurrent calls per HTTP/2 connection.
  int max_concurrent_streams = 1024;
  // Connections with no call for this long are closed (clients reconnect).
  double connection_idle_timeout_seconds = 300;
  // New connections are refused while fewer than this many file
  // descriptors are free (the listener never runs out of them).
  int reserved_fds = 64;
  // RLIMIT_NOFILE soft limit to run with; 0 raises it to the hard limit.
  int64_t max_open_files = 0;
  // Connections open at once from one remote address (0: no cap); one
  // address cannot take every descriptor. Behind a proxy or mesh sidecar
  // every client has the proxy's address: raise it there.
  int max_connections_per_address = 512;
  // WatchLayer (docs/gpu.md): a replaced version a reader has not released
  // after this long ends its stream; streams one caller may hold open.
  double watch_lease_seconds = 60;
  int max_watch_streams_per_caller = 64;
  // Security (docs/security.md). TLS on the gRPC port with this
  // certificate chain and key (PEM; re-read when they change).
  std::string tls_cert_file;
  std::string tls_key_file;
  // The CA that signs the shards' certificates: shard-to-shard channels
  // verify each other with it (and present tls_cert_file).
  std::string tls_ca_file;
  // Verify client certificates signed by this CA (mTLS); their identities
  // get roles from tls_identities_file.
  std::string tls_client_ca_file;
  std::string tls_identities_file;
  // "ROLE NAME TOKEN" lines; bearer tokens and their roles.
  std::string tokens_file;
  // The secret shards present to each other (peer role).
  std::string cluster_token_file;
  // Without credentials only loopback clients are served unless this is
  // set (the name says what it is).
  bool insecure_allow_unauthenticated_remote = false;
  // How often credential files are checked for changes (also on SIGHUP).
  double credentials_reload_seconds = 10;
  // Written once serving: the ports and the addresses a local probe dials
  // (docs/operations.md, "Port file").
  std::string port_file;
};

// Every value is in its flag's range (threads >= 0, a known peer_read,
// ...): INVALID_ARGUMENT naming the flag, its value and the range.
absl::Status CheckServerConfig(const ServerConfig& config);

// True when `host` (an address, "[v6]", or a name) is on loopback: an
// address in 127/8, ::1 or ::ffff:127/104, or a name whose every address
// is. Compared by address, never by spelling ("127.evil.example" is not).
bool IsLoopbackHost(const std::string& host);

// The address a client on this host dials to reach a listener bound to
// `listen` (HOST:PORT) on `port`: loopback for a wildcard host (0.0.0.0,
// [::], empty), the host itself otherwise.
std::string LocalDialAddress(const std::string& listen, int port);

// The security flags agree with each other and with `peers` (the
// --peers list): INVALID_ARGUMENT naming the flags otherwise. A cluster
// whose shards are not all on loopback needs credentials (or the
// insecure flag).
absl::Status CheckSecurityFlags(const ServerConfig& config,
                                const std::vector<std::string>& peers);

// Fills defaults that depend on the machine (threads, memory limit).
void ResolveServerDefaults(ServerConfig* config);

// The --peers list split into addresses; INVALID_ARGUMENT naming the flag
// when the cluster flags disagree (index out of range, replication above
// the shard count, an empty or duplicate address).
absl::StatusOr<std::vector<std::string>> ClusterPeers(
    const ServerConfig& config);

}  // namespace engram

#endif  // ENGRAM_SERVER_CONFIG_H_
