// What engramd exposes on the network, against real engramd processes.
// /metrics: bound to loopback in protected mode, and not blocked by one
// idle connection. UCX (docs/security.md, "UCX and RDMA"): no UCX listener
// on any interface unless
// an interface is named for TCP (and then on that one only); callers without
// the peer right are given nothing a UCX put could use; and the attack that
// once rewrote rows and crashed engramd (a ucp_put over UCX's TCP transport
// with the worker address and rkeys a read token could obtain) is replayed
// with this process's own UCX, leaving rows unchanged and engramd serving.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "engram/internal/v1/peer.grpc.pb.h"
#include "tests/testing/checkpoint_files.h"
#include "tests/testing/engramd_process.h"
#include "tests/testing/random_layer.h"
#include "tests/testing/raw_http2.h"
#include "transport/descriptor.h"

namespace engram {
namespace {

using testing::EngramdProcess;

constexpr char kReadToken[] = "read-token-0123456789abcdef";
constexpr char kClusterToken[] = "cluster-secret-0123456789abcdef";

struct Listener {
  std::string local;  // "ADDR:PORT" as /proc/net prints it (hex)
  int port = 0;
  bool loopback = false;
};

// The TCP sockets `pid` listens on (its fds matched against /proc/net).
std::vector<Listener> ListeningSockets(pid_t pid) {
  std::set<std::string> inodes;
  const std::string fd_dir = absl::StrCat("/proc/", pid, "/fd");
  for (const auto& entry : std::filesystem::directory_iterator(fd_dir)) {
    std::error_code ec;
    const std::string target =
        std::filesystem::read_symlink(entry.path(), ec).string();
    if (!ec && target.rfind("socket:[", 0) == 0) {
      inodes.insert(target.substr(8, target.size() - 9));
    }
  }
  std::vector<Listener> out;
  for (const char* table : {"tcp", "tcp6"}) {
    std::ifstream in(absl::StrCat("/proc/", pid, "/net/", table));
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state, queues, timer, retr, uid, timeout,
          inode;
      fields >> slot >> local >> remote >> state >> queues >> timer >> retr >>
          uid >> timeout >> inode;
      if (state != "0A" || !inodes.contains(inode)) continue;  // LISTEN
      Listener l;
      l.local = local;
      const std::string address = local.substr(0, local.find(':'));
      l.port = std::stoi(local.substr(local.find(':') + 1), nullptr, 16);
      l.loopback = address == "0100007F" ||                          // v4
                   address == "00000000000000000000000001000000" ||  // ::1
                   address == "0000000000000000FFFF00000100007F";    // mapped
      out.push_back(l);
    }
  }
  return out;
}

// Every listener of `p` is its gRPC or metrics port.
void ExpectOnlyItsOwnPorts(const EngramdProcess& p) {
  for (const Listener& l : ListeningSockets(p.pid())) {
    EXPECT_TRUE(l.port == p.grpc_port() || l.port == p.metrics_port())
        << "pid " << p.pid() << " listens on " << l.local << " (port " << l.port
        << "), which is neither --listen nor --metrics_listen";
  }
}

grpc::ClientContext* WithToken(grpc::ClientContext* context,
                               const std::string& token) {
  context->AddMetadata("authorization", "Bearer " + token);
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::seconds(10));
  return context;
}

internal::v1::TransportResponse Transport(const std::string& address,
                                          const std::string& token,
                                          int64_t layer) {
  auto stub = internal::v1::EngramPeer::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  internal::v1::TransportRequest request;
  request.set_layer_id(layer);
  internal::v1::TransportResponse response;
  grpc::Status s =
      stub->Transport(WithToken(&context, token), request, &response);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return response;
}

// The first LayerMapping a WatchLayer stream sends for `layer`.
internal::v1::LayerMapping Watch(const std::string& address,
                                 const std::string& token, int64_t layer) {
  auto stub = internal::v1::EngramPeer::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  auto stream = stub->WatchLayer(WithToken(&context, token));
  internal::v1::WatchLayerRequest request;
  request.set_layer_id(layer);
  request.set_gpu(true);
  EXPECT_TRUE(stream->Write(request));
  internal::v1::LayerMapping mapping;
  EXPECT_TRUE(stream->Read(&mapping));
  context.TryCancel();
  return mapping;
}

// What a reply gives its holder: nothing to post UCX operations with.
void ExpectAttachOnly(const internal::v1::TransportResponse& reply) {
  EXPECT_TRUE(reply.worker_address().empty());
  std::vector<std::string> descriptors = {reply.control_descriptor()};
  for (const auto& head : reply.heads())
    for (const auto& range : head.ranges())
      descriptors.push_back(range.access());
  EXPECT_GT(descriptors.size(), 1u);
  for (const std::string& bytes : descriptors) {
    auto d = transport::RegionDescriptor::Parse(bytes);
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_TRUE(d->rkey.empty());
    EXPECT_EQ(d->base, 0u);
    EXPECT_GE(d->shm_id, 0);  // still attachable read-only on this host
  }
}

// This process's own UCX, over TCP only: the attacker's side.
class UcxAttacker {
 public:
  UcxAttacker() {
    ucp_config_t* config = nullptr;
    if (ucp_config_read(nullptr, nullptr, &config) != UCS_OK) return;
    ucp_config_modify(config, "TLS", "tcp");
    ucp_params_t params{};
    params.field_mask = UCP_PARAM_FIELD_FEATURES;
    params.features = UCP_FEATURE_RMA;
    const bool ok = ucp_init(&params, config, &context_) == UCS_OK;
    ucp_config_release(config);
    if (!ok) return;
    ucp_worker_params_t wp{};
    if (ucp_worker_create(context_, &wp, &worker_) != UCS_OK) worker_ = nullptr;
  }
  ~UcxAttacker() {
    if (worker_ != nullptr) ucp_worker_destroy(worker_);
    if (context_ != nullptr) ucp_cleanup(context_);
  }
  bool ready() const { return worker_ != nullptr; }

  // Puts `bytes` at `address` of the process behind `worker_address` with
  // `rkey`, and flushes: true only if UCX reports the put done.
  bool Put(const std::string& worker_address, const std::string& rkey,
           uint64_t address, const std::string& bytes) {
    if (worker_address.empty()) return false;
    ucp_ep_params_t ep_params{};
    ep_params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS |
                           UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    ep_params.address =
        reinterpret_cast<const ucp_address_t*>(worker_address.data());
    ep_params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    ucp_ep_h ep = nullptr;
    if (ucp_ep_create(worker_, &ep_params, &ep) != UCS_OK) return false;
    bool done = false;
    ucp_rkey_h key = nullptr;
    if (ucp_ep_rkey_unpack(ep, rkey.data(), &key) == UCS_OK) {
      ucp_request_param_t param{};
      done = Wait(ucp_put_nbx(ep, bytes.data(), bytes.size(), address, key,
                              &param)) &&
             Wait(ucp_ep_flush_nbx(ep, &param));
      ucp_rkey_destroy(key);
    }
    ucp_request_param_t close{};
    close.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    close.flags = UCP_EP_CLOSE_FLAG_FORCE;
    Wait(ucp_ep_close_nbx(ep, &close));
    return done;
  }

 private:
  bool Wait(ucs_status_ptr_t request) {
    if (request == nullptr) return true;
    if (UCS_PTR_IS_ERR(request)) return false;
    const auto give_up =
        std::chrono::steady_clock::now() + std::chrono::seconds(3);
    ucs_status_t s;
    while ((s = ucp_request_check_status(request)) == UCS_INPROGRESS &&
           std::chrono::steady_clock::now() < give_up) {
      ucp_worker_progress(worker_);
    }
    if (s == UCS_INPROGRESS) ucp_request_cancel(worker_, request);
    ucp_request_free(request);
    return s == UCS_OK;
  }

  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
};

// Issue: /metrics listened on 0.0.0.0 even in protected mode.
TEST(MetricsExposureTest, ProtectedModeBindsMetricsToLoopback) {
  auto server = EngramdProcess::Start({"--metrics_listen=0.0.0.0:0"});
  ASSERT_TRUE(server.ok()) << server.status();
  bool found = false;
  for (const Listener& l : ListeningSockets((*server)->pid())) {
    EXPECT_TRUE(l.port == (*server)->grpc_port() || l.loopback) << l.local;
    found |= l.port == (*server)->metrics_port();
  }
  EXPECT_TRUE(found);
  EXPECT_TRUE(testing::HttpGet((*server)->metrics_port(), "/metrics").ok());
  EXPECT_THAT((*server)->Log(),
              ::testing::HasSubstr("protected mode: /metrics listens on "
                                   "127.0.0.1:0"));
}

// Issue: one connection that sent nothing blocked every scrape (a single
// worker thread).
TEST(MetricsExposureTest, AnIdleConnectionDoesNotBlockScrapes) {
  auto server = EngramdProcess::Start({"--metrics_listen=127.0.0.1:0"});
  ASSERT_TRUE(server.ok()) << server.status();
  std::vector<int> idle;
  for (int i = 0; i < 3; ++i) {
    idle.push_back(testing::ConnectTcp((*server)->metrics_port()));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const auto start = std::chrono::steady_clock::now();
  auto metrics = testing::HttpGet((*server)->metrics_port(), "/metrics");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  for (int fd : idle) close(fd);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_THAT(*metrics, ::testing::HasSubstr("engram_"));
  EXPECT_LT(seconds, 2.0);
}

// Issue 25: gRPC's default SO_REUSEPORT let a second engramd on a port in
// use start and take a share of new connections (3 of 10 listings saw an
// empty store).
TEST(PortTest, ASecondEngramdOnAPortInUseRefusesToStart) {
  auto first = EngramdProcess::Start({"--demo"});
  ASSERT_TRUE(first.ok()) << first.status();
  std::string out;
  const int rc = testing::RunCommand(
      absl::StrCat("timeout -s KILL 20 ", testing::EngramdPath(), " --listen=",
                   (*first)->address(), " --metrics_listen= 2>&1"),
      &out);
  EXPECT_EQ(rc, 1) << out;
  EXPECT_THAT(out, ::testing::HasSubstr("address in use"));
  // Every new client still reaches the first one (the demo layer).
  for (int i = 0; i < 10; ++i) {
    auto c = Client::Connect((*first)->address());
    ASSERT_TRUE(c.ok());
    EXPECT_TRUE((*c)->DescribeLayer(0).ok()) << i;
  }
}

// Issue 25: the metrics and health ports in use gave CivetServer's "null
// context" (no flag, no cause) and nothing (a second health listener).
TEST(PortTest, AMetricsOrHealthPortInUseStopsTheStartNamingTheFlag) {
  auto first = EngramdProcess::Start(
      {"--metrics_listen=127.0.0.1:0", "--health_listen=127.0.0.1:0"});
  ASSERT_TRUE(first.ok()) << first.status();
  std::string out;
  EXPECT_EQ(
      testing::RunCommand(
          absl::StrCat("timeout -s KILL 20 ", testing::EngramdPath(),
                       " --listen=127.0.0.1:0 --metrics_listen=127.0.0.1:",
                       (*first)->metrics_port(), " 2>&1"),
          &out),
      1)
      << out;
  EXPECT_THAT(out, ::testing::HasSubstr(absl::StrCat(
                       "cannot listen on --metrics_listen=127.0.0.1:",
                       (*first)->metrics_port(), " (address in use")));
  EXPECT_EQ(testing::RunCommand(
                absl::StrCat("timeout -s KILL 20 ", testing::EngramdPath(),
                             " --listen=127.0.0.1:0 --metrics_listen= "
                             "--health_listen=127.0.0.1:",
                             (*first)->health_port(), " 2>&1"),
                &out),
            1)
      << out;
  EXPECT_THAT(out, ::testing::HasSubstr(absl::StrCat(
                       "cannot listen on --health_listen=127.0.0.1:",
                       (*first)->health_port(), " (address in use")));
  EXPECT_TRUE((*first)->Alive());
}

// Issue: connections that never finished the handshake were kept 120 s.
TEST(PortTest, AConnectionThatNeverHandshakesIsClosedWithinSeconds) {
  auto server = EngramdProcess::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  const int fd = testing::ConnectTcp((*server)->grpc_port());
  ASSERT_GE(fd, 0);
  timeval timeout{20, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  const auto start = std::chrono::steady_clock::now();
  // The server speaks first (its HTTP/2 settings); read until it closes.
  char buffer[256];
  ssize_t n;
  while ((n = read(fd, buffer, sizeof buffer)) > 0) {
  }
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  close(fd);
  EXPECT_EQ(n, 0) << "the server did not close the connection";
  EXPECT_LT(waited, 15.0);
}

// A raw TCP connection to 127.0.0.1:`port` from `source` (a loopback
// address); -1 if it cannot connect.
int ConnectFrom(const char* source, int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in local{};
  local.sin_family = AF_INET;
  inet_pton(AF_INET, source, &local.sin_addr);
  sockaddr_in remote{};
  remote.sin_family = AF_INET;
  remote.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &remote.sin_addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof local) != 0 ||
      connect(fd, reinterpret_cast<sockaddr*>(&remote), sizeof remote) != 0) {
    close(fd);
    return -1;
  }
  timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  return fd;
}

// Served: the server speaks first (HTTP/2 settings); refused: closed at once.
bool Served(int fd) {
  char buffer[64];
  return fd >= 0 && read(fd, buffer, sizeof buffer) > 0;
}

// Issue: connections were capped by nothing but descriptors; 1100 from one
// address made a legitimate client UNAVAILABLE.
TEST(PortTest, OneAddressCannotHoldMoreThanItsShareOfConnections) {
  auto server = EngramdProcess::Start(
      {"--max_connections_per_address=20", "--metrics_listen=127.0.0.1:0"});
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->grpc_port();
  std::vector<int> flood;
  int served = 0;
  for (int i = 0; i < 40; ++i) {
    flood.push_back(ConnectFrom("127.0.0.2", port));
    served += Served(flood.back());
  }
  EXPECT_EQ(served, 20);
  // Another address is served meanwhile; so is the flooder once its
  // connections close.
  const int other = ConnectFrom("127.0.0.3", port);
  EXPECT_TRUE(Served(other));
  close(other);
  for (int fd : flood) close(fd);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const int again = ConnectFrom("127.0.0.2", port);
  EXPECT_TRUE(Served(again));
  close(again);
  auto metrics = testing::HttpGet((*server)->metrics_port(), "/metrics");
  ASSERT_TRUE(metrics.ok());
  EXPECT_THAT(*metrics, ::testing::HasSubstr(
                            "engram_connections_refused_per_address 20"));
}

class UcxExposureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tokens_ = dir_.path() + "/tokens";
    testing::WriteText(tokens_, absl::StrCat("read reader ", kReadToken, "\n"));
    cluster_token_ = dir_.path() + "/cluster";
    testing::WriteText(cluster_token_, kClusterToken);
  }
  // A single node with --direct_reads, the demo layer and credentials,
  // serving once it returns (nullptr after a test failure).
  std::unique_ptr<EngramdProcess> StartDemo() {
    auto server = EngramdProcess::Start(
        {"--tokens_file=" + tokens_, "--cluster_token_file=" + cluster_token_,
         "--direct_reads", "--demo"});
    EXPECT_TRUE(server.ok()) << server.status();
    if (!server.ok()) return nullptr;
    EXPECT_TRUE(
        testing::WaitServing((*server)->address(), 30, {.token = kReadToken})
            .ok());
    return *std::move(server);
  }

  testing::TempDir dir_;
  std::string tokens_, cluster_token_;
};

TEST_F(UcxExposureTest, DirectReadsOpenNoListenerBeyondGrpcAndMetrics) {
  auto server = EngramdProcess::Start(
      {"--demo", "--direct_reads", "--metrics_listen=127.0.0.1:0"});
  ASSERT_TRUE(server.ok()) << server.status();
  ExpectOnlyItsOwnPorts(**server);
}

TEST_F(UcxExposureTest, ClusterShardsOpenNoUcxListenerUnlessTcpIsNamed) {
  for (const char* peer_read : {"--peer_read=auto", "--peer_read=rma"}) {
    SCOPED_TRACE(peer_read);
    auto cluster = testing::StartCluster(
        2, 1, {peer_read, "--metrics_listen=127.0.0.1:0"});
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    for (const auto& shard : *cluster) ExpectOnlyItsOwnPorts(*shard);
  }
  // Asked for (a trusted network): TCP on the --peers interface only
  // (loopback here), and rows still cross shards over it.
  ASSERT_EQ(setenv("UCX_TLS", "tcp", 1), 0);
  auto cluster = testing::StartCluster(
      2, 1, {"--peer_read=rma", "--ucx_tcp_interface=auto"});
  unsetenv("UCX_TLS");
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  for (const auto& shard : *cluster) {
    int extra = 0;
    for (const Listener& l : ListeningSockets(shard->pid())) {
      EXPECT_TRUE(l.loopback) << l.local;
      extra += l.port != shard->grpc_port();
    }
    EXPECT_GT(extra, 0) << "UCX's TCP listener was asked for";
  }
  auto client = Client::Connect((*cluster)[0]->address());
  ASSERT_TRUE(client.ok());
  const LayerLayout layout{{4000, 3000}, 8, DType::kFloat32};
  const auto tables = testing::RandomTables(layout, 3);
  ASSERT_TRUE((*client)->Populate(1, layout, testing::Spans(tables)).ok());
  const auto ids = testing::RandomIds(layout, 16, 1, 5);
  const auto want =
      testing::ReferenceGather(layout, tables, ids, DType::kFloat32);
  std::vector<uint8_t> got(want.size());
  ASSERT_TRUE(
      (*client)->Lookup(1, ids, std::vector<int64_t>{16, 1, 2}, got).ok());
  EXPECT_EQ(got, want);
}

TEST_F(UcxExposureTest, ReadCallersGetSegmentsToAttachAndNothingToWriteWith) {
  std::unique_ptr<EngramdProcess> server = StartDemo();
  ASSERT_NE(server, nullptr);
  const std::string address = server->address();
  ExpectAttachOnly(Transport(address, kReadToken, 0));
  const internal::v1::LayerMapping mapping = Watch(address, kReadToken, 0);
  EXPECT_EQ(mapping.state(), internal::v1::LayerMapping::PRESENT);
  ExpectAttachOnly(mapping.host());
  // Shards keep what one-sided reads need.
  EXPECT_FALSE(Transport(address, kClusterToken, 0).worker_address().empty());
  // And a reader still reads rows straight from the tables: with the
  // server stopped (SIGSTOP), lookups need no RPC.
  ClientOptions options;
  options.token = kReadToken;
  options.direct_reads = true;
  options.timeout = absl::Seconds(2);
  auto direct = Client::Connect(address, options);
  ASSERT_TRUE(direct.ok());
  std::vector<int64_t> ids = {1, 2, 3, 4};
  std::vector<uint8_t> rows(4 * 8 * sizeof(float));
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(
        (*direct)->Lookup(0, ids, std::vector<int64_t>{1, 1, 4}, rows).ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(kill(server->pid(), SIGSTOP), 0);
  absl::Status frozen =
      (*direct)->Lookup(0, ids, std::vector<int64_t>{1, 1, 4}, rows);
  ASSERT_EQ(kill(server->pid(), SIGCONT), 0);
  EXPECT_TRUE(frozen.ok()) << frozen;
  float first;
  std::memcpy(&first, rows.data(), sizeof(first));
  EXPECT_EQ(first, 1.0f);  // demo: head 0, row 1, element 0
}

// The attack, replayed: everything a read token could obtain (and, harder,
// what a peer gets) fed to ucp_put over TCP, at a row and at address 0x10.
TEST_F(UcxExposureTest, AUcxPutWithWhatCallersGetChangesNoRowAndKillsNothing) {
  std::unique_ptr<EngramdProcess> server = StartDemo();
  ASSERT_NE(server, nullptr);
  const std::string address = server->address();
  auto reader = Client::Connect(address, {.token = kReadToken});
  ASSERT_TRUE(reader.ok());
  std::vector<int64_t> ids = {0, 1, 2, 3};
  std::vector<uint8_t> before(4 * 8 * sizeof(float));
  ASSERT_TRUE(
      (*reader)->Lookup(0, ids, std::vector<int64_t>{1, 1, 4}, before).ok());

  UcxAttacker attacker;
  ASSERT_TRUE(attacker.ready());
  const std::string forged(8 * sizeof(float), '\x7f');
  for (const std::string& token :
       {std::string(kReadToken), std::string(kClusterToken)}) {
    const internal::v1::TransportResponse reply = Transport(address, token, 0);
    ASSERT_GT(reply.heads_size(), 0);
    ASSERT_GT(reply.heads(0).ranges_size(), 0);
    auto row0 =
        transport::RegionDescriptor::Parse(reply.heads(0).ranges(0).access());
    ASSERT_TRUE(row0.ok());
    EXPECT_FALSE(
        attacker.Put(reply.worker_address(), row0->rkey, row0->base, forged))
        << "a put of a row was accepted";
    EXPECT_FALSE(
        attacker.Put(reply.worker_address(), row0->rkey, 0x10, forged));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ASSERT_TRUE(server->Alive());
  std::vector<uint8_t> after(before.size());
  ASSERT_TRUE(
      (*reader)->Lookup(0, ids, std::vector<int64_t>{1, 1, 4}, after).ok());
  EXPECT_EQ(after, before);
}

}  // namespace
}  // namespace engram
