// engramd: the engram-store server process. Its flags are defined here and
// turned into a ServerConfig (server/config.h: one member per flag).
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <random>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "common/command_line.h"
#include "common/malloc_tuning.h"
#include "common/mutex.h"
#include "common/version.h"
#include "proto/channel_tuning.h"
#include "server/accept_guard.h"
#include "server/config.h"
#include "server/log.h"
#include "server/server.h"

// Defaults come from ServerConfig's members: one place says them.
ABSL_FLAG(std::string, listen, engram::ServerConfig().listen,
          "gRPC address, HOST:PORT (port 0 picks a free port)");
ABSL_FLAG(std::string, metrics_listen, engram::ServerConfig().metrics_listen,
          "Prometheus /metrics address, HOST:PORT; empty disables it");
ABSL_FLAG(std::string, health_listen, engram::ServerConfig().health_listen,
          "plaintext address, HOST:PORT, serving only grpc.health.v1.Health "
          "for probes that cannot use TLS (kubelet's gRPC probes, the image's "
          "HEALTHCHECK); empty: none");
ABSL_FLAG(uint64_t, memory_limit_bytes,
          engram::ServerConfig().memory_limit_bytes,
          "budget for table memory in bytes; 0 means 80% of physical memory");
ABSL_FLAG(int, threads, engram::ServerConfig().threads,
          "gather worker threads; 0 means one per core");
ABSL_FLAG(int64_t, max_message_bytes, engram::ServerConfig().max_message_bytes,
          "largest gRPC message received or sent (requests, chunks, lookup "
          "responses)");
ABSL_FLAG(int64_t, max_lookup_rows, engram::ServerConfig().max_lookup_rows,
          "most rows (B*L*H) one Lookup may ask for");
ABSL_FLAG(bool, demo, engram::ServerConfig().demo,
          "serve a small synthetic layer (id 0, 4 heads, D = 8, float32) so a"
          " first lookup works");
ABSL_FLAG(std::string, load, engram::ServerConfig().load,
          "a load manifest (docs/tables.md) whose layers are loaded at start;"
          " not ready until they are in");
ABSL_FLAG(std::string, load_root, engram::ServerConfig().load_root,
          "folder whose manifests and checkpoint files Load requests may "
          "read; empty refuses Load requests");
ABSL_FLAG(double, load_max_mib_per_second,
          engram::ServerConfig().load_max_mib_per_second,
          "cap on how fast checkpoint files are read (--load, Load requests, "
          "a cluster's staging), so loading leaves a shared disk or file "
          "system to others; 0: no cap");
ABSL_FLAG(std::string, data_dir, engram::ServerConfig().data_dir,
          "keep committed layers as files in this folder (local NVMe, or "
          "/dev/shm for a node-local shared copy) and serve them again after "
          "a restart; tables may then exceed the memory budget");
ABSL_FLAG(bool, verify_data_dir, engram::ServerConfig().verify_data_dir,
          "at start, check every stored table's checksums before serving it "
          "(reads every row once)");
ABSL_FLAG(bool, pin_memory, engram::ServerConfig().pin_memory,
          "lock table memory in RAM (mlock), best effort");
ABSL_FLAG(double, drain_seconds, engram::ServerConfig().drain_seconds,
          "on SIGTERM/SIGINT, seconds in-flight calls get to finish");
ABSL_FLAG(int, gpu, engram::ServerConfig().gpu,
          "CUDA device to mirror layers to and serve lookups from; -1 keeps "
          "everything on the CPU");
ABSL_FLAG(uint64_t, gpu_memory_limit_bytes,
          engram::ServerConfig().gpu_memory_limit_bytes,
          "GPU memory budget for mirrored layers; 0 means 90% of the device's"
          " free memory");
ABSL_FLAG(int64_t, gpu_min_rows, engram::ServerConfig().gpu_min_rows,
          "lookups of fewer rows are served by the CPU even when the layer is"
          " on the GPU (the measured crossover)");
ABSL_FLAG(int, gpu_streams, engram::ServerConfig().gpu_streams,
          "concurrent GPU lookups (CUDA streams)");
ABSL_FLAG(int, shard_index, engram::ServerConfig().shard_index,
          "this shard's position in --peers (Kubernetes: the pod ordinal)");
ABSL_FLAG(std::string, peers, engram::ServerConfig().peers,
          "HOST:PORT of every shard, this one included, in the same order on "
          "all shards; empty runs a single node");
ABSL_FLAG(int, replication, engram::ServerConfig().replication,
          "copies of every row range (on consecutive shards)");
ABSL_FLAG(std::string, peer_read, engram::ServerConfig().peer_read,
          "how rows owned by other shards are read: auto (UCX one-sided reads"
          " where the transport does them natively - same-host shared memory,"
          " RDMA - else gather), rma (always UCX; transport picked by "
          "UCX_TLS) or gather (the owner packs them, over gRPC)");
ABSL_FLAG(bool, direct_reads, engram::ServerConfig().direct_reads,
          "single node: export table memory (UCX shared memory) so clients on"
          " this host read rows directly (ClientOptions::direct_reads)");
ABSL_FLAG(std::string, shm_group, engram::ServerConfig().shm_group,
          "exported tables' shared memory (--direct_reads, --peer_read=rma) "
          "is owner-only; members of this group may read it (read-only), for "
          "direct readers running as other users");
ABSL_FLAG(std::string, ucx_tcp_interface,
          engram::ServerConfig().ucx_tcp_interface,
          "let UCX's TCP transport carry --peer_read=rma between shards, on "
          "this interface only (auto: the one holding this shard's --peers "
          "address); empty (default): UCX opens no network listener. TCP "
          "cannot enforce read-only access: anyone who reaches the interface "
          "could write into engramd's memory - trusted networks only");
ABSL_FLAG(double, staged_timeout_seconds,
          engram::ServerConfig().staged_timeout_seconds,
          "populate data staged for a coordinator that never commits is "
          "dropped after this long");
ABSL_FLAG(double, stream_idle_timeout_seconds,
          engram::ServerConfig().stream_idle_timeout_seconds,
          "a Populate or Stage stream that sends nothing for this long is "
          "ended (DEADLINE_EXCEEDED) and its staged rows dropped; 0 disables");
ABSL_FLAG(int, max_populate_streams,
          engram::ServerConfig().max_populate_streams,
          "Populate and Stage streams open at once; more are "
          "RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_pending_response_bytes,
          engram::ServerConfig().max_pending_response_bytes,
          "lookup/gather response bytes held for all clients that have not "
          "read them yet; past it lookups are RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_pending_response_bytes_per_connection,
          engram::ServerConfig().max_pending_response_bytes_per_connection,
          "the same, for one client connection");
ABSL_FLAG(int, max_concurrent_streams,
          engram::ServerConfig().max_concurrent_streams,
          "concurrent calls per client connection");
ABSL_FLAG(double, connection_idle_timeout_seconds,
          engram::ServerConfig().connection_idle_timeout_seconds,
          "a client connection without calls for this long is closed (clients"
          " reconnect on their next call); 0 disables");
ABSL_FLAG(int, reserved_fds, engram::ServerConfig().reserved_fds,
          "new connections are refused while fewer file descriptors than this"
          " are free (the open-file limit is raised to its maximum at start)");
ABSL_FLAG(int64_t, max_open_files, engram::ServerConfig().max_open_files,
          "open-file limit (RLIMIT_NOFILE) to run with; 0 raises it to the "
          "hard limit");
ABSL_FLAG(int, max_connections_per_address,
          engram::ServerConfig().max_connections_per_address,
          "connections open at once from one remote address (0: no cap); "
          "raise it behind a proxy or mesh sidecar, where every client has "
          "the proxy's address");
ABSL_FLAG(double, watch_lease_seconds,
          engram::ServerConfig().watch_lease_seconds,
          "a WatchLayer reader (device lookups) that has not released a "
          "replaced or removed version after this long has its stream ended, "
          "and the version freed");
ABSL_FLAG(int, max_watch_streams_per_caller,
          engram::ServerConfig().max_watch_streams_per_caller,
          "WatchLayer streams one caller (credential, or address without "
          "credentials) may hold open");
ABSL_FLAG(std::string, tls_cert_file, engram::ServerConfig().tls_cert_file,
          "serve TLS with this certificate chain (PEM; re-read when it "
          "changes)");
ABSL_FLAG(std::string, tls_key_file, engram::ServerConfig().tls_key_file,
          "the private key of --tls_cert_file (PEM)");
ABSL_FLAG(std::string, tls_ca_file, engram::ServerConfig().tls_ca_file,
          "the CA that signs the shards' certificates: shards verify each "
          "other with it and present --tls_cert_file to each other");
ABSL_FLAG(std::string, tls_client_ca_file,
          engram::ServerConfig().tls_client_ca_file,
          "verify client certificates signed by this CA (mTLS); a certificate"
          " from another CA, or expired, is refused in the handshake");
ABSL_FLAG(std::string, tls_identities_file,
          engram::ServerConfig().tls_identities_file,
          "'ROLE IDENTITY' lines: the role of a verified client certificate "
          "whose common name or subject alternative name is IDENTITY");
ABSL_FLAG(std::string, tokens_file, engram::ServerConfig().tokens_file,
          "'ROLE NAME TOKEN' lines (role read, write, admin or peer): bearer "
          "tokens clients send as 'authorization: Bearer TOKEN'");
ABSL_FLAG(std::string, cluster_token_file,
          engram::ServerConfig().cluster_token_file,
          "the secret shards present to each other (its first line); grants "
          "the peer role");
ABSL_FLAG(bool, insecure_allow_unauthenticated_remote,
          engram::ServerConfig().insecure_allow_unauthenticated_remote,
          "without credentials engramd serves only loopback clients; this "
          "serves anyone who can reach the port, with every right (insecure)");
ABSL_FLAG(double, credentials_reload_seconds,
          engram::ServerConfig().credentials_reload_seconds,
          "how often token and identity files are checked for changes (SIGHUP"
          " reloads at once); 0 only on SIGHUP");
ABSL_FLAG(std::string, port_file, engram::ServerConfig().port_file,
          "write 'grpc_port=N' and 'metrics_port=M' here once serving (for "
          "scripts using port 0)");

namespace {

constexpr char kUsage[] =
    "engramd: serves Engram embedding tables over gRPC "
    "(engram.v1.EngramStore)\n\nUsage: engramd [--flag=value ...]";

engram::ServerConfig ConfigFromFlags() {
  engram::ServerConfig c;
  c.listen = absl::GetFlag(FLAGS_listen);
  c.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  c.health_listen = absl::GetFlag(FLAGS_health_listen);
  c.memory_limit_bytes = absl::GetFlag(FLAGS_memory_limit_bytes);
  c.threads = absl::GetFlag(FLAGS_threads);
  c.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  c.max_lookup_rows = absl::GetFlag(FLAGS_max_lookup_rows);
  c.demo = absl::GetFlag(FLAGS_demo);
  c.load = absl::GetFlag(FLAGS_load);
  c.load_root = absl::GetFlag(FLAGS_load_root);
  c.load_max_mib_per_second = absl::GetFlag(FLAGS_load_max_mib_per_second);
  c.data_dir = absl::GetFlag(FLAGS_data_dir);
  c.verify_data_dir = absl::GetFlag(FLAGS_verify_data_dir);
  c.pin_memory = absl::GetFlag(FLAGS_pin_memory);
  c.drain_seconds = absl::GetFlag(FLAGS_drain_seconds);
  c.gpu = absl::GetFlag(FLAGS_gpu);
  c.gpu_memory_limit_bytes = absl::GetFlag(FLAGS_gpu_memory_limit_bytes);
  c.gpu_min_rows = absl::GetFlag(FLAGS_gpu_min_rows);
  c.gpu_streams = absl::GetFlag(FLAGS_gpu_streams);
  c.shard_index = absl::GetFlag(FLAGS_shard_index);
  c.peers = absl::GetFlag(FLAGS_peers);
  c.replication = absl::GetFlag(FLAGS_replication);
  c.peer_read = absl::GetFlag(FLAGS_peer_read);
  c.direct_reads = absl::GetFlag(FLAGS_direct_reads);
  c.shm_group = absl::GetFlag(FLAGS_shm_group);
  c.ucx_tcp_interface = absl::GetFlag(FLAGS_ucx_tcp_interface);
  c.staged_timeout_seconds = absl::GetFlag(FLAGS_staged_timeout_seconds);
  c.stream_idle_timeout_seconds =
      absl::GetFlag(FLAGS_stream_idle_timeout_seconds);
  c.max_populate_streams = absl::GetFlag(FLAGS_max_populate_streams);
  c.max_pending_response_bytes =
      absl::GetFlag(FLAGS_max_pending_response_bytes);
  c.max_pending_response_bytes_per_connection =
      absl::GetFlag(FLAGS_max_pending_response_bytes_per_connection);
  c.max_concurrent_streams = absl::GetFlag(FLAGS_max_concurrent_streams);
  c.connection_idle_timeout_seconds =
      absl::GetFlag(FLAGS_connection_idle_timeout_seconds);
  c.reserved_fds = absl::GetFlag(FLAGS_reserved_fds);
  c.max_open_files = absl::GetFlag(FLAGS_max_open_files);
  c.max_connections_per_address =
      absl::GetFlag(FLAGS_max_connections_per_address);
  c.watch_lease_seconds = absl::GetFlag(FLAGS_watch_lease_seconds);
  c.max_watch_streams_per_caller =
      absl::GetFlag(FLAGS_max_watch_streams_per_caller);
  c.tls_cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  c.tls_key_file = absl::GetFlag(FLAGS_tls_key_file);
  c.tls_ca_file = absl::GetFlag(FLAGS_tls_ca_file);
  c.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca_file);
  c.tls_identities_file = absl::GetFlag(FLAGS_tls_identities_file);
  c.tokens_file = absl::GetFlag(FLAGS_tokens_file);
  c.cluster_token_file = absl::GetFlag(FLAGS_cluster_token_file);
  c.insecure_allow_unauthenticated_remote =
      absl::GetFlag(FLAGS_insecure_allow_unauthenticated_remote);
  c.credentials_reload_seconds =
      absl::GetFlag(FLAGS_credentials_reload_seconds);
  c.port_file = absl::GetFlag(FLAGS_port_file);
  return c;
}

// Writes the ports to a fresh temporary (O_EXCL | O_NOFOLLOW: never through
// a link someone planted, never into someone's file), then renames it over
// `path`, so readers never see a partial file.
absl::Status WritePortFile(const engram::ServerConfig& config,
                           const engram::EngramServer& server) {
  const std::string grpc_address =
      engram::LocalDialAddress(config.listen, server.grpc_port());
  const std::string text =
      absl::StrCat("grpc_port=", server.grpc_port(),
                   "\nmetrics_port=", server.metrics_port(),
                   "\nhealth_port=", server.health_port(),
                   "\ngrpc_address=", grpc_address, "\nhealth_address=",
                   server.health_port() == 0
                       ? grpc_address
                       : engram::LocalDialAddress(config.health_listen,
                                                  server.health_port()),
                   "\n");
  const std::string& path = config.port_file;
  for (int attempt = 0; attempt < 16; ++attempt) {
    const std::string tmp =
        absl::StrCat(path, ".tmp.", getpid(), ".", std::random_device()());
    const int fd =
        open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
             0600);
    if (fd < 0 && errno == EEXIST) continue;
    if (fd < 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "--port_file: cannot create ", tmp, ": ", std::strerror(errno)));
    }
    const bool written = write(fd, text.data(), text.size()) ==
                         static_cast<ssize_t>(text.size());
    close(fd);
    if (!written || std::rename(tmp.c_str(), path.c_str()) != 0) {
      const int err = errno;
      unlink(tmp.c_str());
      return absl::FailedPreconditionError(absl::StrCat(
          "--port_file: cannot write ", path, ": ", std::strerror(err)));
    }
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(
      absl::StrCat("--port_file: no free temporary name next to ", path));
}

}  // namespace

int main(int argc, char** argv) {
  absl::StatusOr<engram::CommandLine> line =
      engram::ParseCommandLine(argc, argv);
  if (line.ok() && line->help) {
    std::cout << engram::FlagsHelp(kUsage);
    return 0;
  }
  if (line.ok() && line->version) {
    std::cout << "engramd " << engram::Version() << "\n";
    return 0;
  }
  if (line.ok() && !line->positional.empty()) {
    line = absl::InvalidArgumentError(
        absl::StrCat("unexpected argument '", line->positional[0],
                     "' (flags are --name=value)"));
  }
  if (!line.ok()) {
    std::cerr << "engramd: " << line.status().message() << "\n";
    return 2;
  }
  engram::ServerConfig config = ConfigFromFlags();
  if (absl::Status s = engram::CheckServerConfig(config); !s.ok()) {
    std::cerr << "engramd: " << s.message() << "\n";
    return 2;
  }
  engram::ResolveServerDefaults(&config);
  engram::TuneMallocForLargeMessages();
  engram::SkipAbseilDeadlockDetection();
  if (auto peers = engram::ClusterPeers(config); !peers.ok()) {
    std::cerr << "engramd: " << peers.status().message() << "\n";
    return 2;
  }

  // Block the stop signals in every thread (threads inherit the mask) and
  // take them synchronously below: no async-signal-safety pitfalls.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGHUP);  // reloads credentials, see below
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  // Everything engramd creates (--data_dir tables, POSIX shared memory of
  // exported tables, the port file) is its user's only (docs/security.md).
  umask(077);

  // Where it listens, what the machine-dependent defaults resolved to, and
  // every flag given a value other than its default.
  engram::LogInfo(absl::StrCat(
      "starting: listen=", config.listen, " metrics_listen=",
      config.metrics_listen, " memory_limit_bytes=", config.memory_limit_bytes,
      " threads=", config.threads, " flags: ", engram::ChangedFlags()));

  if (absl::Status s =
          engram::InstallAcceptGuard(config.max_open_files, config.reserved_fds,
                                     config.max_connections_per_address);
      !s.ok()) {
    engram::LogError(s.ToString());
    return 1;
  }
  engram::EngramServer server(config);
  server.metrics()->AddGaugeSource(
      "engram_connections_refused_fds",
      "Connections refused because file descriptors ran short.",
      [] { return static_cast<double>(engram::ConnectionsRefusedForFds()); });
  server.metrics()->AddGaugeSource(
      "engram_connections_refused_per_address",
      "Connections refused because their address had "
      "--max_connections_per_address open.",
      [] {
        return static_cast<double>(engram::ConnectionsRefusedPerAddress());
      });
  server.metrics()->AddGaugeSource(
      "engram_open_file_limit", "The open-file limit engramd runs with.",
      [] { return static_cast<double>(engram::OpenFileLimit()); });
  if (absl::Status s = server.Start(); !s.ok()) {
    engram::LogError(s.ToString());
    return 1;
  }
  if (!config.port_file.empty()) {
    if (absl::Status s = WritePortFile(config, server); !s.ok()) {
      engram::LogError(s.ToString());
      server.Shutdown();
      return 1;
    }
  }
  engram::LogInfo(absl::StrCat(
      "serving engram.v1.EngramStore on port ", server.grpc_port(),
      "; metrics on port ", server.metrics_port(),
      server.health_port() == 0 ? ""
                                : absl::StrCat("; health (plaintext) on port ",
                                               server.health_port())));

  int signal_number = 0;
  while (sigwait(&stop_signals, &signal_number) == 0 &&
         signal_number == SIGHUP) {
    engram::LogInfo("received SIGHUP: reloading credentials");
    server.ReloadCredentials();
  }
  engram::LogInfo(absl::StrCat("received ", strsignal(signal_number),
                               "; draining for up to ", config.drain_seconds,
                               " s"));
  server.Shutdown();
  engram::LogInfo("stopped");
  return 0;
}
