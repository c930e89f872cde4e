// engram::Client: the C++ client library of engram-store.
//
//   auto client = engram::Client::Connect("127.0.0.1:50051");
//   (*client)->Populate(7, layout, tables);
//   (*client)->Lookup(7, ids, {B, L, H}, output_bytes);
#ifndef ENGRAM_CLIENT_CLIENT_H_
#define ENGRAM_CLIENT_CLIENT_H_

#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/layout.h"

namespace engram {

class DeviceReads;

struct ClientOptions {
  // Deadline of each unary call (Lookup, Remove, Describe, List, health).
  absl::Duration timeout = absl::Seconds(60);
  // Deadline of a whole Populate stream: multi-GB tables take minutes.
  absl::Duration populate_timeout = absl::Hours(2);
  // Largest response accepted; match the server's --max_message_bytes.
  int64_t max_message_bytes = int64_t{256} << 20;
  // Row bytes per Populate chunk message (whole rows are always sent).
  size_t populate_chunk_bytes = size_t{4} << 20;
  // TCP connections to open; lookups are spread over them round-robin.
  // One HTTP/2 connection moves its streams one frame at a time, so
  // concurrent big lookups gain from several.
  int num_channels = 1;
  // Read rows of servers on this host straight from their table memory
  // (UCX shared memory mapped into this process) instead of asking them:
  // cluster shards (--peer_read not gather) and single nodes started with
  // --direct_reads export it. Falls back to RPCs wherever that is not
  // possible (no UCX, another host or IPC namespace, a layer just
  // repopulated); the first lookups of a layer use RPCs while the mapping
  // is set up. Needs the engram::client_direct library (UCX) linked in;
  // without it Connect answers FAILED_PRECONDITION.
  bool direct_reads = false;

  // Security (docs/security.md). TLS to the server, verified with this CA
  // bundle (PEM file); `tls` without a CA file uses the system's roots.
  bool tls = false;
  std::string tls_ca_file;
  // mTLS: this client's certificate chain and private key (PEM files).
  std::string tls_cert_file;
  std::string tls_key_file;
  // The name the server's certificate must carry, when it is not the
  // address's host.
  std::string tls_server_name;
  // Sent as "authorization: Bearer <token>" with every call. Use TLS
  // whenever the server is not on loopback: plaintext shows the token.
  std::string token;
};

// A layer as the server describes it.
struct LayerDescription {
  int64_t layer_id = 0;
  LayerLayout layout;
  std::vector<std::string> store_keys;  // engram:l{layer}:h{head}
  int64_t bytes = 0;
  uint64_t version = 0;  // 1 at first commit, +1 per replace (0: unknown)
};

// One Status answer. Counters are totals since the server started; a rate
// is the difference of two answers over the time between them. A value
// type, no shared state.
struct ServerStatus {
  std::string version;
  double uptime_seconds = 0;
  int shard_index = 0;
  int shards = 0;  // 0: a single node
  bool ready = false;
  std::string not_ready_reason;  // empty when ready
  int64_t memory_used_bytes = 0;
  int64_t memory_limit_bytes = 0;
  int64_t gpu_memory_used_bytes = 0;
  int64_t gpu_memory_limit_bytes = 0;  // 0: no GPU tier
  struct Layer {
    LayerDescription description;
    bool pinned = false;
    bool gpu_resident = false;
    int64_t stored_bytes = 0;  // in --data_dir files
    int64_t resident_bytes = 0;
    // Token lookups (docs/tokens.md): no model hash, LookupTokens answers,
    // or populated again since without a model.
    enum class TokenModel { kNone, kCurrent, kStale };
    TokenModel token_model = TokenModel::kNone;
  };
  std::vector<Layer> layers;
  struct Calls {
    std::string rpc;
    int64_t calls = 0;
    int64_t errors = 0;
  };
  std::vector<Calls> calls;  // RPCs called at least once
  // counts[i]: calls of at most upper_bounds[i] seconds (and more than the
  // bound before); the one extra count is above every bound.
  struct Latency {
    std::vector<double> upper_bounds;
    std::vector<int64_t> counts;
    double sum_seconds = 0;
    int64_t count = 0;
  };
  Latency lookup_latency;
  int64_t lookup_rows = 0;
  int64_t lookup_bytes = 0;
  int64_t populate_bytes = 0;
  struct Load {
    std::string manifest;
    int layers_total = 0;
    int layers_done = 0;
    int64_t bytes_total = 0;
    int64_t bytes_done = 0;
    double seconds = 0;
  };
  std::vector<Load> loads;  // in progress
  int peers_up = 0;
  int64_t recovery_layers_pending = 0;
  int64_t pending_response_bytes = 0;
  int64_t resident_bytes = 0;  // the process's RSS
  double cpu_seconds = 0;
  int64_t open_fds = 0;
  int64_t max_fds = 0;
  double start_time_seconds = 0;

  // Calls of `rpc` so far (0 when never called).
  const Calls* FindCalls(const std::string& rpc) const;
};

// The lookups between two answers (`before` the earlier one).
ServerStatus::Latency LatencySince(const ServerStatus::Latency& now,
                                   const ServerStatus::Latency& before);
// The q-quantile (0 < q < 1) of a histogram, interpolated linearly inside
// the bucket it falls in, as Prometheus' histogram_quantile does; 0 with
// no calls; the highest bound when it falls above every bound.
double LatencyQuantile(const ServerStatus::Latency& latency, double q);

// Called during Populate with row bytes sent so far and the total.
using PopulateProgress = std::function<void(uint64_t sent, uint64_t total)>;

// Writes rows [row, row + rows) of table `head` to `dst` (rows x row bytes,
// little-endian); an error ends the populate (nothing is kept).
using RowSource = std::function<absl::Status(int head, int64_t row,
                                             int64_t rows, uint8_t* dst)>;

// A lookup whose rows land in GPU memory, on the caller's CUDA stream
// (docs/gpu.md). Plain types: `stream` is a cudaStream_t, pointers are CUDA
// device addresses. Needs the engram::client_gpu library linked in.
// How a Lookup's ids name rows, and which heads it reads (see
// engram.v1.LookupRequest).
struct LookupOptions {
  std::optional<DType> output_dtype;  // unset: the stored dtype
  IdForm id_form = IdForm::kPerHead;
  int64_t head_begin = 0;
  int64_t head_end = 0;  // 0: the last head
};

// One lookup of a LookupMany call: what Lookup takes. Spans are borrowed.
struct LookupSpec {
  int64_t layer_id = 0;
  std::span<const int64_t> ids;
  std::span<const int64_t> shape;
  std::span<uint8_t> output;
  LookupOptions options;
};

// Token ids in place of row ids (DeviceLookupRequest::tokens): the layer's
// Engram hash (the model it was loaded with, docs/tokens.md) runs on the
// GPU in the same launch as the gather. Pointers follow the rules of
// DeviceLookupRequest::ids.
struct DeviceTokens {
  const int64_t* tokens = nullptr;  // [batch, length] raw token ids
  int64_t batch = 0;
  int64_t length = 0;
  // [batch, history_length]: each sequence's previous raw ids, oldest
  // first, history_length <= N - 1 (0: every sequence starts here).
  const int64_t* history = nullptr;
  int64_t history_length = 0;
};

struct DeviceLookupRequest {
  int64_t layer_id = 0;
  // B*L*H ids, token-major with heads fastest (as Lookup's; see id_form
  // below for the other forms). Device memory
  // of the output's device, pinned host memory, or ordinary host memory
  // (copied into a pinned buffer first; not capturable in a CUDA graph).
  const int64_t* ids = nullptr;
  int64_t num_ids = 0;
  // Device memory: exactly num_ids * D elements of the output dtype.
  void* out = nullptr;
  size_t out_bytes = 0;
  // The stored dtype unless converting among float32/bfloat16/float16.
  std::optional<DType> output_dtype;
  // As LookupOptions: fused ids, a head slice [head_begin, head_end) (ids
  // and out [.., head_end - head_begin, ..]), or entries (ids [n], out
  // [n, D]) — what engines' kernels emit, read on the GPU as they are.
  IdForm id_form = IdForm::kPerHead;
  int64_t head_begin = 0;
  int64_t head_end = 0;    // 0: the last head
  void* stream = nullptr;  // nullptr: the legacy default stream
  // kDeviceStatusWords device words (uint64) on the output's device where
  // the launch records its outcome; DeviceLookupResult reads them. They
  // need no initial value. nullptr: the client's own words for this layer
  // and device (one stream at a time).
  uint64_t* status = nullptr;
  // Set (ids null, num_ids 0): rows for these token ids, [batch, length,
  // (N - 1) * H] ids' worth (docs/tokens.md "On the GPU"). Must stay valid
  // until DeviceLookupResult when it reports a bad token.
  const DeviceTokens* tokens = nullptr;
};

// Device words per DeviceLookupRequest::status.
inline constexpr int kDeviceStatusWords = 3;

// How a device lookup reached its rows.
enum class DevicePath {
  kGpuShared,   // the server's GPU copy, opened through CUDA IPC
  kHostMapped,  // the server's host tables, read by the GPU over PCIe
  kRpc,         // a Lookup RPC into pinned memory, then an async copy
};
const char* DevicePathName(DevicePath path);

// One channel to one engramd. Thread-safe: any number of threads may call
// it at once, and calls share the channel. Errors are the server's gRPC
// status carried as absl::Status (same code and message).
class Client {
 public:
  static absl::StatusOr<std::unique_ptr<Client>> Connect(
      const std::string& address, ClientOptions options = {});
  // A client of a sharded cluster that routes lookups itself: `shards` is
  // the servers' --peers list (same order), `replication` their
  // --replication. Lookups go straight to the owners of the rows (with
  // failover across replicas) and are assembled in the caller's buffer;
  // Populate streams each owner its ranges and commits in two phases
  // (all-or-nothing across the cluster). The layouts lookups need come from
  // the first shard that answers; Remove, Describe, List and health go to
  // shards[0] (which coordinates them for the cluster).
  static absl::StatusOr<std::unique_ptr<Client>> ConnectCluster(
      const std::vector<std::string>& shards, int replication,
      ClientOptions options = {});
  ~Client();

  // Creates layer `layer_id`: `tables[h]` holds head h's rows, row-major
  // [N_h, D] little-endian, exactly layout.table_bytes(h) bytes. Streams in
  // chunks; the layer is visible only once the server has every row.
  absl::StatusOr<LayerDescription> Populate(
      int64_t layer_id, const LayerLayout& layout,
      const std::vector<std::span<const uint8_t>>& tables,
      const PopulateProgress& progress = nullptr);
  // Populate that replaces layer `layer_id` if it exists: the new version
  // is built beside the old one, which serves until the swap at commit and
  // stays if this fails. (In a cluster each shard swaps at its own commit.)
  absl::StatusOr<LayerDescription> Replace(
      int64_t layer_id, const LayerLayout& layout,
      const std::vector<std::span<const uint8_t>>& tables,
      const PopulateProgress& progress = nullptr);
  // Populate (`replace`: Replace) reading rows chunk by chunk from `rows`
  // instead of whole tables in memory: tables bigger than the client's
  // memory stream straight from their files (engramctl populate --manifest
  // reads checkpoints this way).
  absl::StatusOr<LayerDescription> PopulateFrom(
      int64_t layer_id, const LayerLayout& layout, const RowSource& rows,
      const PopulateProgress& progress = nullptr, bool replace = false);

  // Gathers rows for `ids` of logical `shape` [B, L, H] into `output`, which
  // must hold exactly B*L*H*D elements of the output dtype (the stored one
  // unless `output_dtype` converts among float types).
  absl::Status Lookup(int64_t layer_id, std::span<const int64_t> ids,
                      std::span<const int64_t> shape, std::span<uint8_t> output,
                      std::optional<DType> output_dtype = std::nullopt);
  // The same with the ids' form and a head slice (LookupOptions): fused ids
  // [B, L, H], entries [n] (rows [n, D]), heads [head_begin, head_end).
  absl::Status Lookup(int64_t layer_id, std::span<const int64_t> ids,
                      std::span<const int64_t> shape, std::span<uint8_t> output,
                      const LookupOptions& options);

  // Several lookups (say both Engram layers of a step) in one round trip;
  // all are checked before any row is read, and either every output is
  // filled or the call fails (the message names the lookup: "lookups[i]").
  // A cluster client runs them side by side instead.
  absl::Status LookupMany(std::span<const LookupSpec> lookups);

  // Token ids in, rows out (docs/tokens.md): `tokens` [B, T] raw ids
  // (`shape` = {B, T}), `history` [B, history_length] each sequence's
  // previous raw ids (oldest first; empty at sequence starts); each layer
  // of `layer_ids` (loaded with its model's hash) fills outputs[i], [B, T,
  // H, D] of its output dtype. A direct-reads or cluster client hashes the
  // tokens itself with each layer's model (fetched once) and reads the
  // rows from their owners; others send one LookupTokens call.
  absl::Status LookupTokens(std::span<const int64_t> layer_ids,
                            std::span<const int64_t> tokens,
                            std::span<const int64_t> shape,
                            std::span<const int64_t> history,
                            std::span<const std::span<uint8_t>> outputs,
                            std::optional<DType> output_dtype = std::nullopt);

  // Asynchronous Lookup for prefetching: returns at once; `done` runs once
  // on a gRPC thread when `output` is filled or the call failed. `ids`,
  // `shape` and `output` must stay valid until then.
  void LookupAsync(int64_t layer_id, std::span<const int64_t> ids,
                   std::span<const int64_t> shape, std::span<uint8_t> output,
                   std::optional<DType> output_dtype,
                   std::function<void(absl::Status)> done);
  void LookupAsync(int64_t layer_id, std::span<const int64_t> ids,
                   std::span<const int64_t> shape, std::span<uint8_t> output,
                   const LookupOptions& options,
                   std::function<void(absl::Status)> done);
  // The same as a future.
  std::future<absl::Status> LookupAsync(
      int64_t layer_id, std::span<const int64_t> ids,
      std::span<const int64_t> shape, std::span<uint8_t> output,
      std::optional<DType> output_dtype = std::nullopt);

  // Enqueues the lookup on request.stream and returns without waiting for
  // the GPU. Rows come straight from a co-located server's memory: its GPU
  // copy of the layer (engramd --gpu, same device) or its host tables
  // (engramd --direct_reads, same host), else through the RPC path (which
  // waits for the server, not for the GPU). Synchronous errors: bad
  // arguments (INVALID_ARGUMENT), an unknown layer (NOT_FOUND), a CUDA
  // graph capture the chosen path cannot join (FAILED_PRECONDITION). What
  // the GPU found (an id out of range, a layer removed meanwhile) is in the
  // status words: DeviceLookupResult. With zero-copy paths, device ids,
  // output and status at fixed addresses, the launch can be captured in a
  // CUDA graph; each replay reads the layer's version current at that time.
  // `path` (may be null) tells which path served.
  absl::Status LookupToDevice(const DeviceLookupRequest& request,
                              DevicePath* path = nullptr);
  // Several lookups on one stream, all writing to one device (a decode
  // step's Engram layers): the zero-copy ones with the same dtypes go out
  // as one kernel launch, so the step pays one launch, not one per layer.
  // Each request keeps its own outcome (DeviceLookupResult per request);
  // two requests of one layer need status words of their own. `paths`, when
  // not empty, gets one entry per request. An error refuses the whole call
  // (nothing is launched) and names the request it is about.
  absl::Status LookupToDevice(std::span<const DeviceLookupRequest> requests,
                              std::span<DevicePath> paths = {});
  // Waits for request.stream and returns the outcome the lookup recorded.
  absl::Status DeviceLookupResult(const DeviceLookupRequest& request);
  // Sets up zero-copy lookups of `layer_id` on `device` (-1: the current
  // one) now rather than at the first LookupToDevice, and says which path
  // they will take (kRpc: why not, in the log line of DevicePathNote).
  absl::StatusOr<DevicePath> PrepareDeviceLookups(int64_t layer_id,
                                                  int device = -1);
  // Why `layer_id` on `device` uses the path it uses ("" before setup).
  std::string DevicePathNote(int64_t layer_id, int device = -1);

  // Returns the number of tables removed (0 when a populate in progress was
  // aborted with `force`).
  absl::StatusOr<int> Remove(int64_t layer_id, bool force = false);
  absl::StatusOr<LayerDescription> DescribeLayer(int64_t layer_id);
  absl::StatusOr<std::vector<LayerDescription>> ListLayers();
  // The server's build and state at a glance (ServerInfo).
  struct ServerInfo {
    std::string version;
    double uptime_seconds = 0;
    int shard_index = 0;
    int shards = 0;  // 0: a single node
    int64_t layers = 0;
  };
  absl::StatusOr<ServerInfo> GetServerInfo();
  // Everything at a glance (the Status RPC; engramctl status / top).
  absl::StatusOr<ServerStatus> GetStatus();
  // Asks the server to load the layers of a load manifest from checkpoint
  // files it can read: `manifest_path` is on the server, relative to its
  // --load_root (docs/tables.md). Waits up to populate_timeout; returns the
  // layers loaded.
  absl::StatusOr<std::vector<LayerDescription>> Load(
      const std::string& manifest_path);
  // grpc.health.v1 status of `service` ("" = the server as a whole; a
  // cluster shard is SERVING there only while every row range has a
  // reachable owner): OK when SERVING, UNAVAILABLE otherwise.
  absl::Status CheckHealth(const std::string& service = "");

 private:
  struct Impl;
  explicit Client(std::unique_ptr<Impl> impl);
  DeviceReads* Device();
  absl::StatusOr<LayerDescription> PopulateOrReplace(
      int64_t layer_id, const LayerLayout& layout,
      const std::vector<std::span<const uint8_t>>& tables,
      const PopulateProgress& progress, bool replace);
  std::unique_ptr<Impl> impl_;
};

}  // namespace engram

#endif  // ENGRAM_CLIENT_CLIENT_H_
