// gRPC Lookup through a real engramd against peers measured in the same
// run: a naive gRPC echo of the same bytes (same server settings), raw TCP
// loopback of the same bytes, and Redis MGET of the same rows.
//
//   build/bench/lookup_bench [--seconds=2] [--callers=4] [--channels=1]
//                            [--compare_gpu_tier | --cluster | --peer_gather |
//                             --quant | --baseline_engramd=PATH]
//                            [--engramd=PATH]
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/client_unary_call.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <random>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "bench/peers.h"
#include "client/client.h"
#include "cluster/placement.h"
#include "common/malloc_tuning.h"
#include "common/mutex.h"
#include "echo.grpc.pb.h"
#include "engram/internal/v1/peer.grpc.pb.h"
#include "proto/channel_tuning.h"
#include "proto/wire_format.h"

ABSL_FLAG(double, seconds, 2, "seconds per measurement");
ABSL_FLAG(int, callers, 4, "concurrent callers");
ABSL_FLAG(int, channels, 1, "gRPC channels the callers share");
ABSL_FLAG(std::string, engramd, ENGRAM_BENCH_ENGRAMD, "the engramd to run");
ABSL_FLAG(std::string, baseline_engramd, "",
          "also run this engramd build (e.g. the previous commit's) on the "
          "same lookups: both figures and their ratio");
ABSL_FLAG(bool, compare_gpu_tier, false,
          "host memory against the GPU tier (--gpu=0 --gpu_min_rows=1)");
ABSL_FLAG(bool, compare_tls, false, "plaintext against TLS");
ABSL_FLAG(bool, cluster, false,
          "a single node against a 3-shard cluster, by peer read path");
ABSL_FLAG(bool, peer_gather, false,
          "the peer Gather call against raw TCP of the same bytes");
ABSL_FLAG(bool, quant, false,
          "DeepSeek-shaped FP8 rows returned packed against dequantized");
ABSL_FLAG(bool, id_forms, false,
          "per-head ids against fused ids and flat entries of the same rows");
ABSL_FLAG(bool, many, false,
          "two layers per step: one LookupMany against two Lookup calls");
ABSL_FLAG(bool, serve_echo, false,
          "(internal) serve the echo service the comparison runs against");
ABSL_FLAG(std::string, port_file, "", "(internal) with --serve_echo");

namespace engram::bench {
namespace {

constexpr int kHeads = 16;
constexpr int64_t kRowsPerHead = 65536;
constexpr int64_t kDim = 64;  // float32: 256-byte rows
constexpr size_t kRowBytes = kDim * 4;

struct Shape {
  const char* name;
  int64_t batch, length;
  int64_t rows() const { return batch * length * kHeads; }
  uint64_t bytes() const { return rows() * kRowBytes; }
};

// The benchmark layer: H tables of random 256-byte rows.
struct BenchLayer {
  LayerLayout layout{std::vector<int64_t>(kHeads, kRowsPerHead), kDim,
                     DType::kFloat32};
  std::vector<std::vector<uint8_t>> tables;
  std::vector<std::span<const uint8_t>> spans;
};

BenchLayer MakeBenchLayer(std::mt19937_64& rng) {
  BenchLayer l;
  l.tables.resize(kHeads);
  for (auto& t : l.tables) {
    t.resize(l.layout.table_bytes(0));
    for (auto& b : t) b = static_cast<uint8_t>(rng());
  }
  l.spans.assign(l.tables.begin(), l.tables.end());
  return l;
}

// Populates the benchmark layer as layer 1 through each client; false (and
// a message) on the first failure.
bool PopulateBenchLayer(std::initializer_list<Client*> clients,
                        const BenchLayer& layer) {
  for (Client* c : clients) {
    if (auto s = c->Populate(1, layer.layout, layer.spans); !s.ok()) {
      std::fprintf(stderr, "populate: %s\n", s.status().ToString().c_str());
      return false;
    }
  }
  return true;
}

// A client of `server` over `channels` connections.
std::unique_ptr<Client> ConnectTo(const ChildServer& server, int channels,
                                  ClientOptions options = {}) {
  options.num_channels = channels;
  auto client =
      Client::Connect(absl::StrCat("127.0.0.1:", server.port()), options);
  if (!client.ok()) {
    std::fprintf(stderr, "connect: %s\n", client.status().ToString().c_str());
    std::exit(1);
  }
  return *std::move(client);
}

// Each caller's own random ids for one shape, and its output buffer.
struct CallerLookups {
  std::vector<std::vector<int64_t>> ids;
  std::vector<std::vector<uint8_t>> outs;
  int64_t shape[3];
};

CallerLookups MakeCallerLookups(const Shape& s, int callers,
                                std::mt19937_64& rng) {
  CallerLookups l{std::vector<std::vector<int64_t>>(callers),
                  std::vector<std::vector<uint8_t>>(callers),
                  {s.batch, s.length, kHeads}};
  for (int c = 0; c < callers; ++c) {
    for (int64_t i = 0; i < s.rows(); ++i)
      l.ids[c].push_back(rng() % kRowsPerHead);
    l.outs[c].resize(s.bytes());
  }
  return l;
}

// Closed-loop Lookups of layer 1 through `client`, one caller per thread.
RunStats RunLookups(Client& client, CallerLookups& l, int callers,
                    double seconds) {
  std::atomic<bool> reported{false};
  return RunClosedLoop(callers, seconds, [&](int c) {
    absl::Status s = client.Lookup(1, l.ids[c], l.shape, l.outs[c]);
    if (!s.ok() && !reported.exchange(true)) {
      std::fprintf(stderr, "lookup_bench: a lookup failed: %s\n",
                   s.ToString().c_str());
    }
    return s.ok();
  });
}

// Closed-loop fetches of `bytes` over raw loopback TCP (the floor).
RunStats RunRawTcp(uint64_t bytes, int callers, double seconds) {
  TcpBlaster blaster;
  std::vector<std::unique_ptr<TcpFetcher>> fetchers;
  std::vector<std::vector<uint8_t>> bufs(callers);
  for (int c = 0; c < callers; ++c)
    fetchers.push_back(std::make_unique<TcpFetcher>(blaster.port()));
  return RunClosedLoop(callers, seconds, [&](int c) {
    return fetchers[c]->Fetch(bytes, &bufs[c]);
  });
}

void PrintRow(const char* name, const Shape& s, const RunStats& r) {
  std::printf("  %-22s %10.0f %10.2f %9.3f %9.1f %9.1f\n", name,
              r.calls_per_s() * s.rows(), r.calls_per_s() * s.bytes() / 1e9,
              r.calls_per_s(), r.p50_us, r.p99_us);
}

std::string engramd_path;   // --engramd
std::string baseline_path;  // --baseline_engramd

// The same lookups against a plain engramd (the baseline build, when
// given) and one started with `flags` (reached with `options`): both
// figures and their ratio per shape.
int CompareWith(const char* mode, const char* label,
                std::vector<std::string> flags, const ClientOptions& options,
                double seconds, int callers, int channels) {
  auto plain =
      ChildServer::Start({baseline_path.empty() ? engramd_path : baseline_path,
                          "--listen=127.0.0.1:0", "--metrics_listen="});
  flags.insert(flags.begin(),
               {engramd_path, "--listen=127.0.0.1:0", "--metrics_listen="});
  auto other = ChildServer::Start(flags);
  if (!plain || !other) {
    std::fprintf(stderr, "lookup_bench: a server did not start\n");
    return 1;
  }
  auto plain_client = ConnectTo(*plain, channels);
  auto other_client = ConnectTo(*other, channels, options);
  std::mt19937_64 rng(5);
  const BenchLayer bench_layer = MakeBenchLayer(rng);
  if (!PopulateBenchLayer({plain_client.get(), other_client.get()},
                          bench_layer)) {
    return 1;
  }
  std::printf(
      "lookup_bench %s: H = %d, D = %lld float32, %d callers, "
      "%d connection(s)\n",
      mode, kHeads, static_cast<long long>(kDim), callers, channels);
  const std::string ratio = absl::StrCat(label, "/plain");
  std::printf("  %-22s %8s %12s %12s %10s %10s %9s\n", "shape", "rows",
              "plain rows/s", (std::string(label) + " rows/s").c_str(),
              "plain p50", (std::string(label) + " p50").c_str(),
              ratio.c_str());
  const Shape shapes[] = {{"decode B=1", 1, 1},
                          {"decode B=16", 16, 1},
                          {"decode B=64", 64, 1},
                          {"decode B=256", 256, 1},
                          {"prefill B=1 L=1024", 1, 1024},
                          {"prefill B=1 L=4096", 1, 4096},
                          // 4 callers x 33.5 MB stays under the default
                          // per-connection cap on unread responses (512 MiB).
                          {"prefill B=2 L=4096", 2, 4096}};
  for (const Shape& s : shapes) {
    CallerLookups lookups = MakeCallerLookups(s, callers, rng);
    const RunStats r[2] = {
        RunLookups(*plain_client, lookups, callers, seconds),
        RunLookups(*other_client, lookups, callers, seconds)};
    std::printf("  %-22s %8lld %12.0f %12.0f %10.1f %10.1f %8.2fx\n", s.name,
                static_cast<long long>(s.rows()), r[0].calls_per_s() * s.rows(),
                r[1].calls_per_s() * s.rows(), r[0].p50_us, r[1].p50_us,
                r[1].calls_per_s() / r[0].calls_per_s());
  }
  return 0;
}

// --compare_tls: TLS (a certificate made here by openssl) and a bearer
// token vs plaintext without credentials.
int CompareTls(double seconds, int callers, int channels) {
  char pattern[] = "/tmp/engram-tls-bench-XXXXXX";
  const std::string dir = mkdtemp(pattern);
  const std::string make = absl::StrCat(
      "cd ", dir,
      " && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 "
      "-nodes -days 1 -subj /CN=bench-ca -keyout ca.key -out ca.pem "
      "2>/dev/null && openssl req -newkey ec -pkeyopt "
      "ec_paramgen_curve:P-256 -nodes -subj /CN=engramd -keyout server.key "
      "-out server.csr 2>/dev/null && echo subjectAltName=IP:127.0.0.1 > ext "
      "&& openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key "
      "-CAcreateserial -days 1 -extfile ext -out server.pem 2>/dev/null && "
      "echo 'write bench 0123456789abcdef0123' > tokens");
  if (std::system(make.c_str()) != 0) {
    std::fprintf(stderr, "lookup_bench: openssl could not make certificates\n");
    return 1;
  }
  ClientOptions options;
  options.tls_ca_file = dir + "/ca.pem";
  options.token = "0123456789abcdef0123";  // write: the bench populates too
  const int rc = CompareWith("--compare_tls", "tls",
                             {"--tls_cert_file=" + dir + "/server.pem",
                              "--tls_key_file=" + dir + "/server.key",
                              "--tokens_file=" + dir + "/tokens"},
                             options, seconds, callers, channels);
  std::system(("rm -rf " + dir).c_str());
  return rc;
}

// --cluster: the same lookups against one engramd and against two 3-shard
// clusters (R = 1) entered through shard 0, which reads the other shards'
// rows over the gather path (gRPC) in one and the rma path (UCX one-sided
// reads) in the other; and client-routed against the gather cluster.
int CompareCluster(double seconds, int callers, int channels) {
  auto single = ChildServer::Start(
      {engramd_path, "--listen=127.0.0.1:0", "--metrics_listen="});
  auto exported = ChildServer::Start({engramd_path, "--listen=127.0.0.1:0",
                                      "--metrics_listen=", "--direct_reads"});
  if (!single || !exported) return 1;
  std::vector<std::unique_ptr<ChildServer>> shards;
  std::vector<std::string> addresses[2];  // gather cluster, rma cluster
  for (int k = 0; k < 2; ++k) {
    std::vector<int> ports;
    std::string peers;
    for (int i = 0; i < 3; ++i) {
      ports.push_back(FreePort());
      addresses[k].push_back(absl::StrCat("127.0.0.1:", ports.back()));
      peers += (i ? "," : "") + addresses[k].back();
    }
    for (int i = 0; i < 3; ++i) {
      shards.push_back(ChildServer::Start(
          {engramd_path, absl::StrCat("--listen=127.0.0.1:", ports[i]),
           "--metrics_listen=", "--peers=" + peers,
           absl::StrCat("--shard_index=", i), "--replication=1",
           k == 0 ? "--peer_read=gather" : "--peer_read=rma"}));
      if (!shards.back()) return 1;
    }
  }
  ClientOptions options;
  options.num_channels = channels;
  auto single_client =
      Client::Connect(absl::StrCat("127.0.0.1:", single->port()), options);
  auto cluster_client = Client::Connect(addresses[0][0], options);
  auto rma_client = Client::Connect(addresses[1][0], options);
  auto routed_client = Client::ConnectCluster(addresses[0], 1, options);
  ClientOptions direct_options = options;
  direct_options.direct_reads = true;
  auto direct_client = Client::ConnectCluster(addresses[1], 1, direct_options);
  auto node_direct_client = Client::Connect(
      absl::StrCat("127.0.0.1:", exported->port()), direct_options);
  for (int i = 0; i < 200 && !((*cluster_client)->CheckHealth().ok() &&
                               (*rma_client)->CheckHealth().ok());
       ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::mt19937_64 rng(5);
  const BenchLayer bench_layer = MakeBenchLayer(rng);
  if (!PopulateBenchLayer({single_client->get(), cluster_client->get(),
                           rma_client->get(), node_direct_client->get()},
                          bench_layer)) {
    return 1;
  }
  std::printf(
      "lookup_bench --cluster: H = %d, D = %lld float32, %d callers, %d "
      "connection(s); clusters = 3 shards on this host, R = 1, entered "
      "through shard 0 (2/3 of the rows are read from peers), or routed by "
      "the client (over RPCs, or direct: reading the rma cluster's shard "
      "memory); 1n dir = a single node with --direct_reads read directly\n",
      kHeads, static_cast<long long>(kDim), callers, channels);
  std::printf(
      "  %-20s %7s %12s %12s %12s %12s %12s %12s %8s %8s %8s %8s %8s %8s "
      "%8s\n",
      "shape", "rows", "1node rows/s", "gather r/s", "rma r/s", "routed r/s",
      "direct r/s", "1n dir r/s", "1n p50us", "dir p50us", "gath/1n", "rma/1n",
      "rout/1n", "dir/1n", "1ndir/1n");
  const Shape shapes[] = {{"decode B=1", 1, 1},
                          {"decode B=16", 16, 1},
                          {"decode B=256", 256, 1},
                          {"prefill B=1 L=4096", 1, 4096}};
  for (const Shape& sh : shapes) {
    CallerLookups lookups = MakeCallerLookups(sh, callers, rng);
    Client* clients[6] = {single_client->get(), cluster_client->get(),
                          rma_client->get(),    routed_client->get(),
                          direct_client->get(), node_direct_client->get()};
    RunStats r[6];
    for (int t = 0; t < 6; ++t)
      r[t] = RunLookups(*clients[t], lookups, callers, seconds);
    std::printf("  %-20s %7lld", sh.name, static_cast<long long>(sh.rows()));
    for (const RunStats& x : r)
      std::printf(" %12.0f", x.calls_per_s() * sh.rows());
    std::printf(" %8.1f %9.1f", r[0].p50_us, r[4].p50_us);
    for (int t = 1; t < 6; ++t)
      std::printf(" %7.2fx", r[t].calls_per_s() / r[0].calls_per_s());
    std::printf("\n");
  }
  return 0;
}

// --peer_gather: the cluster's TCP data path on its own. A 2-shard cluster
// (R = 1); callers ask shard 1 with the internal Gather call for rows it
// holds (one packed block per call), against raw TCP loopback moving the
// same bytes per call.
int ComparePeerGather(double seconds, int callers) {
  std::vector<int> ports;
  std::string peers;
  for (int i = 0; i < 2; ++i) {
    ports.push_back(FreePort());
    peers += absl::StrCat(i ? "," : "", "127.0.0.1:", ports.back());
  }
  std::vector<std::unique_ptr<ChildServer>> shards;
  for (int i = 0; i < 2; ++i) {
    shards.push_back(ChildServer::Start(
        {engramd_path, absl::StrCat("--listen=127.0.0.1:", ports[i]),
         "--metrics_listen=", "--peers=" + peers,
         absl::StrCat("--shard_index=", i), "--replication=1"}));
    if (!shards.back()) return 1;
  }
  auto client = Client::Connect(absl::StrCat("127.0.0.1:", ports[0]));
  for (int i = 0; i < 200 && !(*client)->CheckHealth().ok(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::mt19937_64 rng(5);
  const BenchLayer bench_layer = MakeBenchLayer(rng);
  if (!PopulateBenchLayer({client->get()}, bench_layer)) return 1;
  auto placement = *Placement::Create(2, 1);
  grpc::ChannelArguments args = TunedChannelArguments();
  args.SetMaxReceiveMessageSize(-1);
  // One connection per caller, as the raw TCP side has.
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int c = 0; c < callers; ++c) {
    grpc::ChannelArguments own = args;
    own.SetInt("engram.connection_index", c);
    channels.push_back(
        grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", ports[1]),
                                  grpc::InsecureChannelCredentials(), own));
  }
  std::printf(
      "lookup_bench --peer_gather: shard 1 of a 2-shard cluster packs rows it "
      "holds (internal Gather, gRPC over TCP loopback), %d callers with a "
      "connection each (raw TCP likewise), 256-byte rows\n",
      callers);
  std::printf("  %-14s %12s %12s %12s %10s\n", "rows per call", "gather GB/s",
              "raw TCP GB/s", "gather p50us", "ratio");
  for (int64_t rows : {int64_t{4096}, int64_t{65536}}) {
    std::vector<internal::v1::GatherRequest> requests(callers);
    for (auto& req : requests) {
      req.set_layer_id(1);
      while (req.row_ids_size() < rows) {
        const int h = static_cast<int>(rng() % kHeads);
        const int64_t id = static_cast<int64_t>(rng() % kRowsPerHead);
        if (!placement.Owns(1, 1, h, kRowsPerHead, id)) continue;
        req.add_heads(h);
        req.add_row_ids(id);
      }
    }
    const uint64_t bytes = rows * kRowBytes;
    // As a coordinating shard does it: a raw call, rows copied once from
    // the received slices into the caller's buffer.
    std::vector<grpc::ByteBuffer> encoded(callers);
    for (int c = 0; c < callers; ++c) {
      bool own = false;
      (void)grpc::SerializationTraits<internal::v1::GatherRequest>::Serialize(
          requests[c], &encoded[c], &own);
    }
    std::vector<std::vector<uint8_t>> outs(callers,
                                           std::vector<uint8_t>(bytes));
    const grpc::internal::RpcMethod method(
        "/engram.internal.v1.EngramPeer/Gather",
        grpc::internal::RpcMethod::NORMAL_RPC);
    RunStats gather = RunClosedLoop(callers, seconds, [&](int c) {
      grpc::ClientContext context;
      grpc::ByteBuffer response;
      grpc::Status status =
          grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
              channels[c].get(), method, &context, encoded[c], &response);
      return status.ok() &&
             wire::ForEachGatheredRow(
                 response, kRowBytes, rows,
                 [&](size_t j, const uint8_t* row) {
                   std::memcpy(outs[c].data() + j * kRowBytes, row, kRowBytes);
                 })
                 .ok();
    });
    RunStats tcp = RunRawTcp(bytes, callers, seconds);
    std::printf(
        "  %-14lld %12.2f %12.2f %12.1f %9.2fx\n", static_cast<long long>(rows),
        gather.calls_per_s() * bytes / 1e9, tcp.calls_per_s() * bytes / 1e9,
        gather.p50_us, gather.calls_per_s() / tcp.calls_per_s());
  }
  std::printf(
      "ratio = peer gather GB/s over raw TCP GB/s of the same bytes "
      "(target >= 0.5x)\n");
  return 0;
}

// --quant: DeepSeek-shaped quantized rows (264 bytes: 256 FP8 E4M3
// weights, 8 UE8M0 scales per row) from one engramd, returned packed
// (uint8, the bytes as stored) and dequantized (bfloat16, float32): rows/s
// of each, and dequantized over packed.
// The one plain engramd a single-server comparison runs against; null
// (after saying so) when it does not start.
std::unique_ptr<ChildServer> StartPlainEngramd() {
  auto server = ChildServer::Start({engramd_path, "--listen=127.0.0.1:0",
                                    "--metrics_listen=", "--nopin_memory"});
  if (!server) std::fprintf(stderr, "lookup_bench: engramd did not start\n");
  return server;
}

int CompareQuant(double seconds, int callers, int channels) {
  std::unique_ptr<ChildServer> server = StartPlainEngramd();
  if (!server) return 1;
  auto client = ConnectTo(*server, channels);
  constexpr int64_t kRowBytesQ = 264;
  LayerLayout layout{std::vector<int64_t>(kHeads, kRowsPerHead), kRowBytesQ,
                     DType::kUInt8};
  layout.quant = {QuantFormat::kFp8E4M3Ue8m0, 32};
  std::mt19937_64 rng(5);
  std::vector<std::vector<uint8_t>> tables(kHeads);
  for (auto& t : tables) {
    t.resize(layout.table_bytes(0));
    for (size_t i = 0; i < t.size(); ++i) {
      // Weights as a trained block's are: either sign, normal magnitudes
      // (exponents 4..15: a block's largest weights near 448 and its
      // smallest far above E4M3's subnormals); scales near 2^0.
      const uint64_t r = rng();
      t[i] = static_cast<uint8_t>(i % kRowBytesQ < 256
                                      ? (r & 0x80) | (0x20 + (r >> 8) % 0x5e)
                                      : 110 + r % 20);
    }
  }
  std::vector<std::span<const uint8_t>> spans(tables.begin(), tables.end());
  if (auto s = client->Populate(2, layout, spans); !s.ok()) {
    std::fprintf(stderr, "populate: %s\n", s.status().ToString().c_str());
    return 1;
  }
  std::printf(
      "lookup_bench --quant: H = %d, 264-byte FP8 E4M3 + UE8M0 rows (256 "
      "values), %lld rows per head, %d callers, %d connection(s)\n",
      kHeads, static_cast<long long>(kRowsPerHead), callers, channels);
  std::printf("  %-22s %8s %13s %13s %13s %10s %10s %9s\n", "shape", "rows",
              "packed rows/s", "bf16 rows/s", "f32 rows/s", "packed p50",
              "bf16 p50", "bf16/pack");
  const Shape shapes[] = {{"decode B=1", 1, 1},
                          {"decode B=16", 16, 1},
                          {"decode B=64", 64, 1},
                          {"decode B=256", 256, 1},
                          {"prefill B=1 L=1024", 1, 1024},
                          {"prefill B=1 L=4096", 1, 4096}};
  for (const Shape& s : shapes) {
    CallerLookups l = MakeCallerLookups(s, callers, rng);
    auto run = [&](DType out_dtype, size_t out_row_bytes) {
      std::atomic<bool> reported{false};
      return RunClosedLoop(callers, seconds, [&](int c) {
        std::span<uint8_t> out(l.outs[c].data(), s.rows() * out_row_bytes);
        absl::Status st = client->Lookup(2, l.ids[c], l.shape, out, out_dtype);
        if (!st.ok() && !reported.exchange(true)) {
          std::fprintf(stderr, "lookup_bench: a lookup failed: %s\n",
                       st.ToString().c_str());
        }
        return st.ok();
      });
    };
    for (auto& out : l.outs) out.resize(s.rows() * 256 * 4);
    const RunStats packed = run(DType::kUInt8, kRowBytesQ);
    const RunStats bf16 = run(DType::kBFloat16, 256 * 2);
    const RunStats f32 = run(DType::kFloat32, 256 * 4);
    std::printf("  %-22s %8lld %13.0f %13.0f %13.0f %10.1f %10.1f %8.2fx\n",
                s.name, static_cast<long long>(s.rows()),
                packed.calls_per_s() * s.rows(), bf16.calls_per_s() * s.rows(),
                f32.calls_per_s() * s.rows(), packed.p50_us, bf16.p50_us,
                bf16.calls_per_s() / packed.calls_per_s());
  }
  return 0;
}

// The same rows asked for with per-head ids, fused ids and flat entries
// (the engines' dialects), in one run against one engramd.
int CompareIdForms(double seconds, int callers, int channels) {
  std::unique_ptr<ChildServer> server = StartPlainEngramd();
  if (!server) return 1;
  auto client = ConnectTo(*server, channels);
  std::mt19937_64 rng(5);
  if (!PopulateBenchLayer({client.get()}, MakeBenchLayer(rng))) return 1;
  std::printf(
      "lookup_bench --id_forms: H = %d, D = %lld float32, %lld rows per "
      "head, %d callers, %d connection(s)\n",
      kHeads, static_cast<long long>(kDim),
      static_cast<long long>(kRowsPerHead), callers, channels);
  std::printf("  %-22s %8s %14s %14s %14s %8s %8s\n", "shape", "rows",
              "per-head rows/s", "fused rows/s", "entries rows/s", "fused/ph",
              "entr/ph");
  const Shape shapes[] = {{"decode B=1", 1, 1},
                          {"decode B=16", 16, 1},
                          {"decode B=256", 256, 1},
                          {"prefill B=1 L=4096", 1, 4096}};
  for (const Shape& s : shapes) {
    CallerLookups l = MakeCallerLookups(s, callers, rng);
    // Fused ids of the same rows: head h's rows start at h * N.
    std::vector<std::vector<int64_t>> fused = l.ids;
    for (auto& ids : fused) {
      for (size_t i = 0; i < ids.size(); ++i)
        ids[i] += static_cast<int64_t>(i % kHeads) * kRowsPerHead;
    }
    auto run = [&, seconds = seconds / 5](
                   const std::vector<std::vector<int64_t>>& ids, IdForm form) {
      LookupOptions options;
      options.id_form = form;
      const int64_t n = s.rows();
      const std::vector<int64_t> shape =
          form == IdForm::kEntries ? std::vector<int64_t>{n}
                                   : std::vector<int64_t>(l.shape, l.shape + 3);
      std::atomic<bool> reported{false};
      return RunClosedLoop(callers, seconds, [&](int c) {
        absl::Status st = client->Lookup(1, ids[c], shape, l.outs[c], options);
        if (!st.ok() && !reported.exchange(true)) {
          std::fprintf(stderr, "lookup_bench: a lookup failed: %s\n",
                       st.ToString().c_str());
        }
        return st.ok();
      });
    };
    // Interleaved rounds, summed: drift of the machine over the run falls
    // on every form alike.
    RunStats per_head, by_column, entries;
    auto add = [](RunStats& total, const RunStats& round) {
      total.calls += round.calls;
      total.seconds += round.seconds;
    };
    for (int round = 0; round < 5; ++round) {
      add(per_head, run(l.ids, IdForm::kPerHead));
      add(by_column, run(fused, IdForm::kFused));
      add(entries, run(fused, IdForm::kEntries));
    }
    std::printf(
        "  %-22s %8lld %15.0f %14.0f %14.0f %7.2fx %7.2fx\n", s.name,
        static_cast<long long>(s.rows()), per_head.calls_per_s() * s.rows(),
        by_column.calls_per_s() * s.rows(), entries.calls_per_s() * s.rows(),
        by_column.calls_per_s() / per_head.calls_per_s(),
        entries.calls_per_s() / per_head.calls_per_s());
  }
  return 0;
}

// Both Engram layers of a decode step: one LookupMany call against two
// Lookup calls one after the other (what a caller without it does), in one
// run against one engramd.
int CompareLookupMany(double seconds, int callers, int channels) {
  std::unique_ptr<ChildServer> server = StartPlainEngramd();
  if (!server) return 1;
  auto client = ConnectTo(*server, channels);
  std::mt19937_64 rng(5);
  const BenchLayer layer = MakeBenchLayer(rng);
  if (!PopulateBenchLayer({client.get()}, layer)) return 1;
  if (auto s = client->Populate(2, layer.layout, layer.spans); !s.ok()) {
    std::fprintf(stderr, "populate: %s\n", s.status().ToString().c_str());
    return 1;
  }
  std::printf(
      "lookup_bench --many: two layers (H = %d, D = %lld float32) per step, "
      "%d callers, %d connection(s)\n",
      kHeads, static_cast<long long>(kDim), callers, channels);
  std::printf("  %-16s %8s %14s %14s %9s %9s %7s\n", "shape", "rows",
              "2x Lookup st/s", "LookupMany st/s", "2x p50", "many p50",
              "ratio");
  const Shape shapes[] = {{"decode B=1", 1, 1},
                          {"decode B=16", 16, 1},
                          {"decode B=64", 64, 1},
                          {"decode B=256", 256, 1}};
  for (const Shape& s : shapes) {
    CallerLookups first = MakeCallerLookups(s, callers, rng);
    CallerLookups second = MakeCallerLookups(s, callers, rng);
    std::atomic<bool> reported{false};
    auto report = [&](const absl::Status& st) {
      if (!st.ok() && !reported.exchange(true)) {
        std::fprintf(stderr, "lookup_bench: a lookup failed: %s\n",
                     st.ToString().c_str());
      }
      return st.ok();
    };
    RunStats separate, many;
    auto add = [](RunStats& total, const RunStats& round) {
      total.calls += round.calls;
      total.seconds += round.seconds;
      total.p50_us = round.p50_us;  // the last round's
    };
    for (int round = 0; round < 5; ++round) {
      add(separate, RunClosedLoop(callers, seconds / 5, [&](int c) {
            return report(client->Lookup(1, first.ids[c], first.shape,
                                         first.outs[c])) &&
                   report(client->Lookup(2, second.ids[c], second.shape,
                                         second.outs[c]));
          }));
      add(many, RunClosedLoop(callers, seconds / 5, [&](int c) {
            const LookupSpec specs[2] = {
                {1, first.ids[c], first.shape, first.outs[c], {}},
                {2, second.ids[c], second.shape, second.outs[c], {}}};
            return report(client->LookupMany(specs));
          }));
    }
    std::printf("  %-16s %8lld %14.0f %15.0f %9.1f %9.1f %6.2fx\n", s.name,
                static_cast<long long>(2 * s.rows()), separate.calls_per_s(),
                many.calls_per_s(), separate.p50_us, many.p50_us,
                many.calls_per_s() / separate.calls_per_s());
  }
  return 0;
}

int Main(int argc, char** argv) {
  ParseBenchFlags(argc, argv,
                  "lookup_bench: Lookup RPCs against a plain gRPC echo of the "
                  "same bytes, in one run");
  // Both servers (engramd and the echo) and the callers run as engramd does.
  SkipAbseilDeadlockDetection();
  if (absl::GetFlag(FLAGS_serve_echo)) {
    return ServeEcho(absl::GetFlag(FLAGS_port_file));
  }
  const double seconds = absl::GetFlag(FLAGS_seconds);
  const int callers = absl::GetFlag(FLAGS_callers);
  const int channels = absl::GetFlag(FLAGS_channels);
  engramd_path = absl::GetFlag(FLAGS_engramd);
  baseline_path = absl::GetFlag(FLAGS_baseline_engramd);
  const std::string self = argv[0];
  TuneMallocForLargeMessages();  // client side, as an application would
  if (!baseline_path.empty()) {
    return CompareWith("--baseline_engramd", "this", {}, {}, seconds, callers,
                       channels);
  }
  if (absl::GetFlag(FLAGS_compare_gpu_tier)) {
    return CompareWith("--compare_gpu_tier", "gpu",
                       {"--gpu=0", "--gpu_min_rows=1"}, {}, seconds, callers,
                       channels);
  }
  if (absl::GetFlag(FLAGS_compare_tls))
    return CompareTls(seconds, callers, channels);
  if (absl::GetFlag(FLAGS_cluster))
    return CompareCluster(seconds, callers, channels);
  if (absl::GetFlag(FLAGS_peer_gather))
    return ComparePeerGather(seconds, callers);
  if (absl::GetFlag(FLAGS_quant))
    return CompareQuant(seconds, callers, channels);
  if (absl::GetFlag(FLAGS_id_forms))
    return CompareIdForms(seconds, callers, channels);
  if (absl::GetFlag(FLAGS_many))
    return CompareLookupMany(seconds, callers, channels);

  auto engramd = ChildServer::Start({engramd_path, "--listen=127.0.0.1:0",
                                     "--metrics_listen=", "--nopin_memory"});
  auto echo = ChildServer::Start({self, "--serve_echo"});
  if (!engramd || !echo) {
    std::fprintf(stderr, "lookup_bench: a server did not start\n");
    return 1;
  }
  auto client = ConnectTo(*engramd, channels);
  std::mt19937_64 rng(5);
  const BenchLayer bench_layer = MakeBenchLayer(rng);
  if (!PopulateBenchLayer({client.get()}, bench_layer)) return 1;
  grpc::ChannelArguments args = TunedChannelArguments();
  args.SetMaxReceiveMessageSize(256 << 20);
  // The echo gets as many connections as the engram client (--channels),
  // callers spread over them the same way.
  std::vector<std::unique_ptr<Echo::Stub>> echo_stubs;
  for (int i = 0; i < channels; ++i) {
    grpc::ChannelArguments a = args;
    a.SetInt("engram.connection_index", i);
    echo_stubs.push_back(Echo::NewStub(
        grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", echo->port()),
                                  grpc::InsecureChannelCredentials(), a)));
  }

  std::printf(
      "lookup_bench: H = %d, D = %lld float32 (256-byte rows), %lld rows "
      "per head, %d concurrent callers over %d connection(s), %.1f s "
      "per figure\n",
      kHeads, static_cast<long long>(kDim),
      static_cast<long long>(kRowsPerHead), callers, channels, seconds);
  std::printf("  %-22s %10s %10s %9s %9s %9s\n", "", "rows/s", "GB/s",
              "calls/s", "p50 us", "p99 us");
  const Shape shapes[] = {{"decode B=1", 1, 1},
                          {"decode B=16", 16, 1},
                          {"decode B=256", 256, 1},
                          {"prefill B=1 L=4096", 1, 4096}};
  RunStats engram_b256;
  for (const Shape& s : shapes) {
    CallerLookups lookups = MakeCallerLookups(s, callers, rng);
    RunStats engram = RunLookups(*client, lookups, callers, seconds);
    RunStats naive = RunClosedLoop(callers, seconds, [&](int c) {
      grpc::ClientContext context;
      EchoRequest request;
      request.set_bytes(static_cast<int64_t>(s.bytes()));
      EchoResponse response;
      return echo_stubs[c % channels]->Echo(&context, request, &response).ok();
    });
    std::printf("%s: %lld rows, %.2f MB per call\n", s.name,
                static_cast<long long>(s.rows()), s.bytes() / 1e6);
    PrintRow("engramd Lookup", s, engram);
    PrintRow("gRPC echo (floor)", s, naive);
    std::printf("  %-22s %9.2fx\n", "ratio vs echo",
                engram.calls_per_s() / naive.calls_per_s());
    if (s.batch == 256) engram_b256 = engram;
    if (s.length == 4096) {
      RunStats tcp = RunRawTcp(s.bytes(), callers, seconds);
      PrintRow("raw TCP loopback", s, tcp);
      std::printf("  %-22s %9.2fx\n", "ratio vs raw TCP",
                  engram.calls_per_s() / tcp.calls_per_s());
    }
  }

  // Redis: the same 4096 rows per call as decode B=256, as MGET of
  // 256-byte values, with the same number of callers.
  auto redis = RedisPeer::Start("/usr/bin/redis-server");
  if (!redis) {
    std::printf("redis: /usr/bin/redis-server not available; skipped\n");
    return 0;
  }
  const int64_t redis_rows = 16 * 8192;  // keys loaded into Redis
  std::vector<std::string> keys(redis_rows), values(redis_rows);
  for (int64_t i = 0; i < redis_rows; ++i) {
    keys[i] = absl::StrCat("engram:l1:h", i % kHeads, ":", i / kHeads);
    values[i].assign(
        reinterpret_cast<const char*>(bench_layer.tables[i % kHeads].data()) +
            (i / kHeads) * kRowBytes,
        kRowBytes);
  }
  RedisClient loader(redis->port());
  if (!loader.SetAll(keys, values)) {
    std::fprintf(stderr, "redis: loading keys failed\n");
    return 1;
  }
  std::vector<std::unique_ptr<RedisClient>> redis_clients;
  std::vector<std::vector<const std::string*>> redis_keys(callers);
  std::vector<std::vector<uint8_t>> redis_out(
      callers, std::vector<uint8_t>(4096 * kRowBytes));
  for (int c = 0; c < callers; ++c) {
    redis_clients.push_back(std::make_unique<RedisClient>(redis->port()));
    for (int i = 0; i < 4096; ++i)
      redis_keys[c].push_back(&keys[rng() % redis_rows]);
  }
  RunStats mget = RunClosedLoop(callers, seconds, [&](int c) {
    return redis_clients[c]->MGet(redis_keys[c], kRowBytes,
                                  redis_out[c].data());
  });
  const Shape b256{"decode B=256", 256, 1};
  std::printf(
      "Redis MGET of 4096 x 256-byte values (same rows per call, same "
      "callers):\n");
  PrintRow("redis MGET", b256, mget);
  PrintRow("engramd Lookup", b256, engram_b256);
  std::printf("  %-22s %9.2fx   (target >= 2x)\n", "ratio vs Redis",
              engram_b256.calls_per_s() / mget.calls_per_s());
  return 0;
}

}  // namespace
}  // namespace engram::bench

int main(int argc, char** argv) { return engram::bench::Main(argc, argv); }
