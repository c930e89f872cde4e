#include "server/server.h"

#include <grp.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <sys/stat.h>

#include <exception>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status_context.h"
#include "proto/channel_tuning.h"
#include "server/engram_service.h"
#include "server/graceful_stop.h"
#include "server/log.h"
#include "server/process_stats.h"
#include "server/tls_files.h"
#include "store/layer_builder.h"
#include "transport/ucx_policy.h"

namespace engram {
namespace {

// Opens the GPU tier for --gpu, or returns nullptr (after saying why) so
// engramd serves from host memory: a missing GPU never stops the server.
std::unique_ptr<GpuTier> OpenGpuTier(const ServerConfig& config) {
  if (config.gpu < 0) return nullptr;
  GpuTier::Options options;
  options.device = config.gpu;
  options.memory_limit_bytes = config.gpu_memory_limit_bytes;
  options.streams = config.gpu_streams;
  absl::StatusOr<std::unique_ptr<GpuTier>> tier = GpuTier::Open(options);
  if (!tier.ok()) {
    LogWarning(absl::StrCat("--gpu=", config.gpu,
                            ": GPU tier not available, serving from host "
                            "memory only: ",
                            tier.status().ToString()));
    return nullptr;
  }
  HostBuffer::EnableCudaPinning(true);
  LogInfo(absl::StrCat(
      "GPU tier on device ", config.gpu, ": ", (*tier)->device_name(),
      ", budget ", (*tier)->budget().limit(), " bytes, ", options.streams,
      " streams, lookups from ", config.gpu_min_rows, " rows"));
  return *std::move(tier);
}

absl::StatusOr<gid_t> GroupId(const std::string& name) {
  std::vector<char> buffer(16384);
  group entry{};
  group* found = nullptr;
  if (getgrnam_r(name.c_str(), &entry, buffer.data(), buffer.size(), &found) !=
          0 ||
      found == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("--shm_group=", name, ": no such group"));
  }
  return found->gr_gid;
}

// Per-connection bounds: streams, keepalive pings that close connections
// whose peer stopped reading or vanished, and idle connections closed.
void ApplyConnectionLimits(const ServerConfig& config,
                           grpc::ServerBuilder* builder) {
  builder->AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                              config.max_concurrent_streams);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  builder->AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // Clients may ping this often without being told off (GOAWAY).
  builder->AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  builder->AddChannelArgument(GRPC_ARG_MAX_METADATA_SIZE, 16 << 10);
  // gRPC sets SO_REUSEPORT by default: a second engramd on a port in use
  // would start and take a share of new connections (serving from an empty
  // store). Off: the bind fails and the second one says so.
  builder->AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // A connection must finish its (TLS) handshake within this, not gRPC's
  // 120 s: half-open connections cannot pile up for minutes.
  builder->AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS, 10000);
  if (config.connection_idle_timeout_seconds > 0) {
    builder->AddChannelArgument(
        GRPC_ARG_MAX_CONNECTION_IDLE_MS,
        static_cast<int>(config.connection_idle_timeout_seconds * 1000));
  }
}

// Credentials readable by every user on the host are as good as published.
void WarnIfEveryoneCanRead(const std::string& path, const char* flag) {
  struct stat st;
  if (path.empty() || ::stat(path.c_str(), &st) != 0) return;
  if ((st.st_mode & (S_IROTH | S_IWOTH)) != 0) {
    LogWarning(absl::StrCat(
        "--", flag, "=", path, " is readable by every user on this host (mode ",
        absl::StrFormat("%04o", st.st_mode & 07777),
        "): chmod 600 it (or 640 for a group that needs it)"));
  }
}

LayerWatchHub::Options WatchOptions(const ServerConfig& config) {
  LayerWatchHub::Options options;
  options.superseded_lease = std::chrono::milliseconds(
      static_cast<int64_t>(config.watch_lease_seconds * 1000));
  options.max_streams_per_caller = config.max_watch_streams_per_caller;
  return options;
}

}  // namespace

EngramServer::EngramServer(ServerConfig config)
    : config_(std::move(config)),
      budget_(config_.memory_limit_bytes),
      gpu_(OpenGpuTier(config_)),
      pool_(config_.threads),
      metrics_(&layers_, &budget_, config_.pin_memory, gpu_.get()),
      watchdog_(std::chrono::milliseconds(static_cast<int64_t>(
                    config_.stream_idle_timeout_seconds * 1000)),
                config_.max_populate_streams),
      pending_(config_.max_pending_response_bytes,
               config_.max_pending_response_bytes_per_connection) {
  metrics_.AddGaugeSource(
      "engram_pending_response_bytes",
      "Response bytes allocated and not yet read by their clients.",
      [p = &pending_] { return static_cast<double>(p->total()); });
}

EngramServer::~EngramServer() { Stop(/*drain_seconds=*/0); }

absl::Status EngramServer::StartTransport() {
  const bool single = config_.peers.empty();
  if (!single && config_.peer_read == "gather") return absl::OkStatus();
  transport::EngineOptions options;
  // A single node's exports are read by same-host readers only: no network
  // transport at all.
  options.same_host_only = single;
  if (!config_.ucx_tcp_interface.empty()) {
    if (single) {
      return absl::InvalidArgumentError(
          "--ucx_tcp_interface is for cluster shards (--peers); same-host "
          "direct readers never use UCX's network transports");
    }
    options.tcp_interface = config_.ucx_tcp_interface;
    if (options.tcp_interface == "auto") {
      const std::string& self = cluster_->address(cluster_->self());
      absl::StatusOr<std::string> iface =
          transport::InterfaceOf(self.substr(0, self.rfind(':')));
      if (!iface.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("--ucx_tcp_interface=auto: this shard's --peers "
                         "address ",
                         self, ": ", iface.status().message()));
      }
      options.tcp_interface = *iface;
    }
    LogWarning(absl::StrCat(
        "UCX's TCP transport is on, on interface ", options.tcp_interface,
        ": it cannot enforce read-only access to exported tables; anyone who "
        "reaches that interface can write into this process (trusted "
        "networks only, docs/security.md)"));
  }
  if (!config_.shm_group.empty()) {
    absl::StatusOr<gid_t> group = GroupId(config_.shm_group);
    if (!group.ok()) return group.status();
    options.shm_group = *group;
    options.shm_mode = 0640;
  }
  absl::StatusOr<std::unique_ptr<transport::UcxEngine>> engine =
      transport::UcxEngine::Create(options);
  if (!engine.ok()) {
    if (single || config_.peer_read == "rma") {
      return WithContext(engine.status(),
                         single ? "--direct_reads" : "--peer_read=rma");
    }
    LogWarning(absl::StrCat("no UCX transport (", engine.status().message(),
                            "); peer reads use the gather path"));
    return absl::OkStatus();
  }
  ucx_ = *std::move(engine);
  LogInfo(absl::StrCat(
      "UCX transport up (",
      single ? "--direct_reads" : "--peer_read=" + config_.peer_read,
      "); table ranges are exported for remote reads"));
  return absl::OkStatus();
}

absl::Status EngramServer::StartLoader() {
  PopulateEnv env;
  env.layers = &layers_;
  env.budget = &budget_;
  env.metrics = &metrics_;
  env.pool = &pool_;
  env.gpu = gpu_.get();
  env.exporter = exporter();
  env.pin_memory = config_.pin_memory;
  env.data_dir = config_.data_dir;
  loader_ = std::make_unique<TableLoader>(env, cluster_.get(),
                                          config_.load_root, &token_hashes_,
                                          config_.load_max_mib_per_second *
                                              (1 << 20));
  metrics_.AddGaugeSource(
      "engram_load_bytes",
      "Row bytes loaded from checkpoint files since start.",
      [l = loader_.get()] { return static_cast<double>(l->bytes_loaded()); });
  metrics_.AddGaugeSource("engram_uptime_seconds",
                          "Seconds since this engramd started.",
                          [start = std::chrono::steady_clock::now()] {
                            return std::chrono::duration<double>(
                                       std::chrono::steady_clock::now() - start)
                                .count();
                          });
  metrics_.AddGaugeSource("engram_loads_pending",
                          "Load manifests queued or loading.",
                          [l = loader_.get()] { return l->pending(); });
  if (!config_.data_dir.empty()) {
    // Claimed before listening: no populate can take a stored layer's id.
    absl::StatusOr<std::set<int64_t>> ids =
        loader_->PrepareRestore(config_.data_dir, config_.verify_data_dir);
    if (!ids.ok()) return ids.status();
    start_load_ids_ = *std::move(ids);
    start_load_ = 1;
  }
  if (config_.load.empty()) return absl::OkStatus();
  // Checked before listening: a bad manifest stops engramd at once.
  absl::StatusOr<std::set<int64_t>> ids =
      loader_->PrepareStartLoad(config_.load);
  if (!ids.ok()) {
    return WithContext(ids.status(), "--load");
  }
  start_load_ids_.insert(ids->begin(), ids->end());
  start_load_ = 1;
  return absl::OkStatus();
}

absl::Status EngramServer::StartSecurity(
    const std::vector<std::string>& peers) {
  if (absl::Status s = CheckSecurityFlags(config_, peers); !s.ok()) return s;
  WarnIfEveryoneCanRead(config_.tokens_file, "tokens_file");
  WarnIfEveryoneCanRead(config_.cluster_token_file, "cluster_token_file");
  WarnIfEveryoneCanRead(config_.tls_key_file, "tls_key_file");
  AuthConfig auth;
  auth.tokens_file = config_.tokens_file;
  auth.cluster_token_file = config_.cluster_token_file;
  auth.identities_file = config_.tls_identities_file;
  auth.mtls = !config_.tls_client_ca_file.empty();
  auth.allow_remote_unauthenticated =
      config_.insecure_allow_unauthenticated_remote;
  absl::StatusOr<std::unique_ptr<Authorizer>> authorizer =
      Authorizer::Create(auth, metrics_.registry());
  if (!authorizer.ok()) return authorizer.status();
  auth_ = *std::move(authorizer);

  const unsigned int reload_seconds = static_cast<unsigned int>(
      std::max(1.0, config_.credentials_reload_seconds > 0
                        ? config_.credentials_reload_seconds
                        : 60.0));
  server_credentials_ = grpc::InsecureServerCredentials();
  const bool tls = !config_.tls_cert_file.empty();
  if (tls) {
    // Validates the files now (the watcher would only log later).
    ChannelSecurity probe;
    probe.tls_ca_file = config_.tls_client_ca_file;
    probe.tls_cert_file = config_.tls_cert_file;
    probe.tls_key_file = config_.tls_key_file;
    probe.tls = true;
    if (absl::Status s = ChannelCredentials(probe).status(); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("TLS: ", s.message()));
    }
    // gRPC watches a private copy that only ever holds a pair that checked
    // out (a key that matches, a certificate valid now): engramd refuses
    // to start with a bad pair, and keeps the last good one when the files
    // are replaced by a bad one.
    absl::StatusOr<std::unique_ptr<TlsKeyPair>> pair =
        TlsKeyPair::Create(config_.tls_cert_file, config_.tls_key_file,
                           std::chrono::milliseconds(reload_seconds * 1000));
    if (!pair.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("TLS: ", pair.status().message()));
    }
    tls_pair_ = *std::move(pair);
    auto provider =
        std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
            tls_pair_->key_copy(), tls_pair_->cert_copy(),
            config_.tls_client_ca_file, reload_seconds);
    grpc::experimental::TlsServerCredentialsOptions options(provider);
    options.watch_identity_key_cert_pairs();
    if (auth.mtls) {
      options.watch_root_certs();
      // A client may come with a token instead; a certificate it does
      // present must verify.
      options.set_cert_request_type(
          GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY);
    } else {
      options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    }
    server_credentials_ = grpc::experimental::TlsServerCredentials(options);
  }
  peer_security_.tls = tls;
  peer_security_.tls_ca_file = config_.tls_ca_file;
  if (tls) {
    peer_security_.tls_cert_file = tls_pair_->cert_copy();
    peer_security_.tls_key_file = tls_pair_->key_copy();
  }
  peer_security_.reload_seconds = reload_seconds;
  if (!config_.cluster_token_file.empty()) {
    absl::StatusOr<std::string> token =
        ReadSecretFile(config_.cluster_token_file);
    if (!token.ok()) return token.status();
    peer_security_.token = std::make_shared<BearerToken>(*std::move(token));
  }
  if (!peers.empty()) {
    if (absl::Status s = ChannelCredentials(peer_security_).status(); !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("channels to the other shards: ", s.message()));
    }
  }
  if (!auth_->credentials_configured()) {
    LogWarning(config_.insecure_allow_unauthenticated_remote
                   ? "no credentials configured and "
                     "--insecure_allow_unauthenticated_remote: anyone who "
                     "can reach the port may read, write and remove tables"
                   : "no credentials configured: serving loopback clients "
                     "only (protected mode; docs/security.md)");
  }
  return absl::OkStatus();
}

void EngramServer::ReloadCredentials() {
  if (auth_ != nullptr) auth_->Reload();
  if (tls_pair_ != nullptr) tls_pair_->Refresh();
  if (peer_security_.token != nullptr) {
    absl::StatusOr<std::string> token =
        ReadSecretFile(config_.cluster_token_file);
    if (token.ok()) {
      peer_security_.token->Set(*std::move(token));
    } else {
      LogError(absl::StrCat("cluster token not reloaded: ",
                            token.status().message()));
    }
  }
}

// Builds the parts bottom-up, each given everything it needs once: the
// security, the cluster (or the single node's one-shard view of itself),
// the transport, the loader, the peer service, the cluster's coordinator
// and recovery, and last the public service. Then listens, and only then
// starts the background work that reports through the health service.
absl::Status EngramServer::Start() {
  absl::StatusOr<std::vector<std::string>> peers = ClusterPeers(config_);
  if (!peers.ok()) return peers.status();
  if (absl::Status s = StartSecurity(*peers); !s.ok()) return s;
  if (!config_.data_dir.empty() &&
      (config_.direct_reads ||
       (!peers->empty() && config_.peer_read != "gather"))) {
    return absl::InvalidArgumentError(
        "--data_dir tables are files, not exported shared memory: use it "
        "without --direct_reads, and in a cluster with --peer_read=gather");
  }
  ClusterContext* cluster = nullptr;
  if (!peers->empty()) {
    if (config_.demo) {
      return absl::InvalidArgumentError(
          "--demo serves a single-node layer; populate a cluster instead");
    }
    absl::StatusOr<Placement> placement =
        Placement::Create(static_cast<int>(peers->size()), config_.replication);
    if (!placement.ok()) return placement.status();
    cluster_ = std::make_unique<ClusterContext>(
        config_.shard_index, *peers, *placement, config_.staged_timeout_seconds,
        peer_security_);
    cluster = cluster_.get();
  } else {
    // A single node serves the internal peer API as a one-shard cluster:
    // cluster clients (ConnectCluster, direct reads) read and populate
    // through it; with --direct_reads its tables are exported.
    local_cluster_ = std::make_unique<ClusterContext>(
        0, std::vector<std::string>{config_.listen}, *Placement::Create(1, 1),
        config_.staged_timeout_seconds);
    cluster = local_cluster_.get();
  }
  if (cluster_ != nullptr || config_.direct_reads) {
    if (absl::Status s = StartTransport(); !s.ok()) return s;
  }
  if (ucx_ != nullptr) exporter_ = ucx_->Mapper();
  // Before listening: a bad --load manifest stops engramd at once, and
  // stored layers' ids are claimed before any populate can take them.
  if (absl::Status s = StartLoader(); !s.ok()) return s;
  PeerService::Parts peer;
  peer.layers = &layers_;
  peer.budget = &budget_;
  peer.cluster = cluster;
  peer.pin_memory = config_.pin_memory;
  peer.transport = ucx_.get();
  peer.watch = WatchOptions(config_);
  peer.auth = auth_.get();
  peer.watchdog = &watchdog_;
  peer.loader = loader_.get();
  peer.hashes = &token_hashes_;
  peer.data_dir = config_.data_dir;
  peer.limits = {config_.max_lookup_rows, config_.max_message_bytes, &pending_,
                 &pool_};
  peer_service_ = std::make_unique<PeerService>(std::move(peer));
  if (cluster_ != nullptr) StartClusterParts();
  EngramService::Parts parts;
  parts.layers = &layers_;
  parts.budget = &budget_;
  parts.pool = &pool_;
  parts.metrics = &metrics_;
  parts.gpu = gpu_.get();
  parts.limits =
      ServiceLimits{config_.max_lookup_rows, config_.max_message_bytes,
                    config_.pin_memory, config_.gpu_min_rows, config_.data_dir};
  parts.cluster = coordinator_.get();
  // A single node exports what it is populated with; a shard's coordinator
  // stages through the peer service, which exports.
  parts.exporter = cluster_ == nullptr ? exporter() : nullptr;
  parts.watchdog = &watchdog_;
  parts.pending = &pending_;
  parts.loader = loader_.get();
  parts.auth = auth_.get();
  parts.hashes = &token_hashes_;
  parts.server_status = [this](v1::StatusResponse* status) {
    FillServerStatus(status);
  };
  service_ = std::make_unique<EngramService>(parts);
  AddServiceGauges();
  if (config_.demo && start_load_ids_.count(kDemoLayerId)) {
    LogInfo("--demo: layer 0 comes from --data_dir or --load instead");
  } else if (config_.demo) {
    if (absl::Status s = AddDemoLayer(&layers_, &budget_, config_.pin_memory,
                                      gpu_.get(), exporter());
        !s.ok()) {
      return WithContext(s, "demo layer");
    }
    LogInfo(
        "demo layer 0 committed: heads of 1000, 1003, 1009, 1013 rows, "
        "D = 8 float32 (row r of head h = h*100000 + r + d/8)");
  }
  if (absl::Status s = StartMetricsEndpoint(); !s.ok()) return s;
  if (absl::Status s = Listen(); !s.ok()) return s;
  if (absl::Status s = ListenForProbes(); !s.ok()) return s;
  StartBackgroundWork();
  return absl::OkStatus();
}

void EngramServer::StartClusterParts() {
  if (ucx_ != nullptr) {
    rma_ = std::make_unique<PeerRmaReader>(ucx_.get(), cluster_.get(),
                                           config_.peer_read == "auto");
  }
  coordinator_ = std::make_unique<ClusterCoordinator>(
      cluster_.get(), &layers_, &metrics_, rma_.get(), &watchdog_);
  // From the first call on, this shard must not answer for rows of
  // committed layers that it lost in a restart.
  recovery_ = std::make_unique<ReplicaRecovery>(
      cluster_.get(), &layers_, &budget_, config_.pin_memory, exporter());
  recovery_->Plan(start_load_ids_);
}

void EngramServer::AddServiceGauges() {
  if (cluster_ != nullptr) {
    metrics_.SetPeersUpSource([c = cluster_.get()] { return c->peers_up(); });
  }
  if (recovery_ != nullptr) {
    metrics_.AddGaugeSource(
        "engram_recovery_layers_pending",
        "Layers this shard is still copying from replicas after a restart.",
        [r = recovery_.get()] { return r->pending(); });
    metrics_.AddGaugeSource(
        "engram_recovery_layers_unrecoverable",
        "Layers whose rows here no replica could provide (R = 1).",
        [r = recovery_.get()] { return r->unrecoverable(); });
    metrics_.AddGaugeSource(
        "engram_recovery_copied_bytes",
        "Row bytes copied from replicas since this shard started.",
        [r = recovery_.get()] {
          return static_cast<double>(r->bytes_copied());
        });
  }
  LayerWatchHub* hub = peer_service_->watch_hub();
  metrics_.AddGaugeSource(
      "engram_watch_streams",
      "Open WatchLayer streams of same-host zero-copy readers.",
      [hub] { return hub->open_streams(); });
  metrics_.AddGaugeSource(
      "engram_watch_leased_versions",
      "Layer versions kept alive for zero-copy readers (docs/gpu.md).",
      [hub] { return static_cast<double>(hub->leased_versions()); });
}

absl::Status EngramServer::StartMetricsEndpoint() {
  if (config_.metrics_listen.empty()) return absl::OkStatus();
  std::string address = config_.metrics_listen;
  const std::string host = address.substr(0, address.rfind(':'));
  if (!auth_->credentials_configured() &&
      !config_.insecure_allow_unauthenticated_remote && !IsLoopbackHost(host)) {
    // Protected mode serves loopback clients only; /metrics has no
    // credentials of its own, so it follows.
    address = "127.0.0.1" + address.substr(address.rfind(':'));
    LogWarning(
        absl::StrCat("protected mode: /metrics listens on ", address, ", not ",
                     config_.metrics_listen,
                     " (configure credentials, or pass "
                     "--insecure_allow_unauthenticated_remote, to expose it)"));
  }
  try {
    // Several workers and a short request timeout: a connection that
    // sends nothing holds one worker for seconds, never every scrape.
    exposer_ = std::make_unique<prometheus::Exposer>(
        std::vector<std::string>{"listening_ports", address, "num_threads", "8",
                                 "request_timeout_ms", "5000"});
  } catch (const std::exception& e) {
    // CivetServer's own words ("null context ...") name neither the cause
    // nor the flag; a failed bind is nearly always a port in use.
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on --metrics_listen=", address,
        " (address in use - another engramd? - or not local; pick another "
        "port, or --metrics_listen= to serve no /metrics). CivetServer: ",
        e.what()));
  }
  exposer_->RegisterCollectable(metrics_.collectable());
  std::vector<int> ports = exposer_->GetListeningPorts();
  metrics_port_ = ports.empty() ? 0 : ports[0];
  return absl::OkStatus();
}

absl::Status EngramServer::Listen() {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(config_.listen, server_credentials_, &grpc_port_);
  std::vector<
      std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      interceptors;
  interceptors.push_back(
      std::make_unique<AuditInterceptorFactory>(auth_.get()));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  builder.RegisterService(service_.get());
  if (peer_service_ != nullptr) builder.RegisterService(peer_service_.get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(config_.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(config_.max_message_bytes));
  ApplyTransportTuning(&builder);
  ApplyConnectionLimits(config_, &builder);
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || grpc_port_ == 0) {
    server_.reset();
    return absl::UnavailableError(
        absl::StrCat("cannot listen on --listen=", config_.listen,
                     " (address in use - another engramd? - or not local)"));
  }
  return absl::OkStatus();
}

absl::Status EngramServer::ListenForProbes() {
  if (config_.health_listen.empty()) return absl::OkStatus();
  // Health only (what the service says is no secret, and it changes
  // nothing): no credentials, so probes that cannot do TLS reach it.
  grpc::ServerBuilder builder;
  builder.AddListeningPort(config_.health_listen,
                           grpc::InsecureServerCredentials(), &health_port_);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, 16);
  builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, 60000);
  health_server_ = builder.BuildAndStart();
  if (health_server_ == nullptr || health_port_ == 0 ||
      health_server_->GetHealthCheckService() == nullptr) {
    health_server_.reset();
    health_port_ = 0;
    return absl::UnavailableError(
        absl::StrCat("cannot listen on --health_listen=", config_.health_listen,
                     " (address in use - another engramd? - or not local)"));
  }
  return absl::OkStatus();
}

void EngramServer::StartBackgroundWork() {
  std::vector<grpc::HealthCheckServiceInterface*> health = {
      server_->GetHealthCheckService()};
  if (health_server_ != nullptr) {
    health.push_back(health_server_->GetHealthCheckService());
  }
  for (grpc::HealthCheckServiceInterface* h : health) {
    h->SetServingStatus(kLivenessService, true);
  }
  // Ready once every row range has a reachable owner and this shard holds
  // its own ranges again.
  health_.Attach(std::move(health), [this](const auto& set) {
    const bool recovered = recovery_ == nullptr || recovery_->pending() == 0;
    set("", NotReadyReason().empty());
    set(kRecoveryService,
        recovered && (recovery_ == nullptr || recovery_->unrecoverable() == 0));
  });
  // Called from the loader, recovery and prober threads: through the
  // reporter, which Stop() turns into a no-op before the service goes.
  auto update_health = [h = &health_] { h->Update(); };
  if (start_load_ == 1) {
    loader_->StartPreparedLoad([this, update_health](
                                   absl::StatusOr<TableLoader::Layers> layers) {
      if (layers.ok()) {
        std::vector<int64_t> ids;
        for (const auto& layer : *layers) ids.push_back(layer->id());
        LogInfo(absl::StrCat(
            "start: ", ids.size(), ids.size() == 1 ? " layer" : " layers",
            " in (--data_dir, --load)", ids.empty() ? "" : ": ",
            absl::StrJoin(ids, ", "), "; ready"));
      } else {
        LogError(absl::StrCat("--load ", config_.load, " failed; not ready: ",
                              layers.status().ToString()));
      }
      start_load_ = layers.ok() ? 0 : 2;
      update_health();
    });
  }
  update_health();
  auth_->WatchFiles(config_.credentials_reload_seconds, [this] {
    if (peer_security_.token == nullptr) return;
    absl::StatusOr<std::string> token =
        ReadSecretFile(config_.cluster_token_file);
    if (token.ok()) peer_security_.token->Set(*std::move(token));
  });
  if (recovery_ != nullptr) recovery_->Start(update_health);
  if (cluster_ != nullptr) {
    cluster_->StartProber(update_health);
    LogInfo(absl::StrCat("shard ", config_.shard_index, " of ",
                         cluster_->size(), ", replication ",
                         config_.replication));
  }
}

std::string EngramServer::NotReadyReason() const {
  if (stopping_) return "shutting down: calls in flight are draining";
  if (start_load_ == 1) {
    return "loading the start tables (--load / --data_dir); not ready until "
           "they are in";
  }
  if (start_load_ == 2) {
    return absl::StrCat("--load ", config_.load,
                        " failed (the log says why): restart with a manifest "
                        "that loads");
  }
  if (recovery_ != nullptr && recovery_->pending() > 0) {
    return absl::StrCat("copying the row ranges of ", recovery_->pending(),
                        " layer(s) back from replicas (a restarted shard)");
  }
  if (cluster_ != nullptr && cluster_->SomeRangeUnreachable()) {
    return absl::StrCat(
        "some row ranges have no reachable owner: ", cluster_->peers_up(),
        " of ", cluster_->size(), " shards answer");
  }
  return "";
}

void EngramServer::FillServerStatus(v1::StatusResponse* status) const {
  const std::string reason = NotReadyReason();
  status->set_ready(reason.empty());
  status->set_not_ready_reason(reason);
  if (loader_ != nullptr) {
    if (std::optional<TableLoader::Progress> p = loader_->progress()) {
      v1::LoadProgress* load = status->add_loads();
      load->set_manifest(p->manifest);
      load->set_layers_total(p->layers_total);
      load->set_layers_done(p->layers_done);
      load->set_bytes_total(static_cast<int64_t>(p->bytes_total));
      load->set_bytes_done(static_cast<int64_t>(p->bytes_done));
      load->set_seconds(p->seconds);
    }
  }
  if (cluster_ != nullptr) status->set_peers_up(cluster_->peers_up());
  if (recovery_ != nullptr) {
    status->set_recovery_layers_pending(recovery_->pending());
  }
  const ProcessStats process = ReadProcessStats();
  v1::ProcessFigures* p = status->mutable_process();
  p->set_resident_bytes(static_cast<int64_t>(process.resident_bytes));
  p->set_cpu_seconds(process.cpu_seconds);
  p->set_open_fds(process.open_fds);
  p->set_max_fds(process.max_fds);
  p->set_start_time_seconds(process.start_time_seconds);
}

void EngramServer::Shutdown() { Stop(config_.drain_seconds); }

// The one stop order (the destructor runs it too, without a drain):
// nothing that runs on its own thread may call into what is freed after it.
void EngramServer::Stop(double drain_seconds) {
  stopping_ = true;
  // The credential watcher reads peer_security_, destroyed before auth_.
  if (auth_ != nullptr) auth_->StopWatching();
  if (loader_ != nullptr) loader_->Cancel();  // it would hold a Load open
  // NOT_SERVING for the drain, and no thread (prober, recovery, a load
  // ending) may flip it back or reach the health service afterwards.
  health_.Stop();
  // The peer stubs must stay alive until the server has drained the calls
  // that use them; the prober only stops.
  if (cluster_ != nullptr) cluster_->StopProber();
  if (server_ == nullptr) return;
  // Watch streams never end by themselves: end them (readers reconnect
  // elsewhere or report the server gone) instead of waiting the drain out.
  if (peer_service_ != nullptr) peer_service_->watch_hub()->Close();
  const auto deadline =
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(static_cast<int64_t>(drain_seconds * 1000));
  StopGracefully(server_.get(), deadline);
  server_->Wait();
  server_.reset();
  // Probes saw NOT_SERVING through the drain; they see the port close now.
  if (health_server_ != nullptr) {
    health_server_->Shutdown(std::chrono::system_clock::now());
    health_server_.reset();
  }
  exposer_.reset();
}

}  // namespace engram
