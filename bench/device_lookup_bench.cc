// Rows into GPU memory (Client::LookupToDevice, docs/gpu.md) against their
// floors and peers, all in one run on one GPU: per shape, microseconds per
// lookup on each path and the ratios the design targets.
//
//   inproc  the same view-gather kernel over tables pinned in this process
//           (what inference servers that keep their own copy do)
//   uva     engramd --direct_reads: its host tables read over PCIe
//   h2d     cudaMemcpyAsync of the output's bytes, contiguous (PCIe limit)
//   ipc     engramd --gpu: its GPU copy opened through CUDA IPC
//   d2d     a device-to-device copy of the output's bytes
//   direct  today's direct reads (CPU copy from the mapping) + async copy
//   rpc     Lookup RPC into pinned memory + async copy
//
// GPU paths are timed with CUDA events over back-to-back launches on one
// stream; the host paths (direct, rpc) one at a time, each copy waited for.
// Every path's rows are checked bit-identical to the RPC's first. Needs a
// GPU; exits 0 with a note otherwise.
//
// Then the token lookups' hash inside the gather against the same gather of
// ids hashed beforehand (tok/ids).
//
//   build/bench/device_lookup_bench [--rows_per_head=262144] [--reps=5]
//       [--engramd=PATH]
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "bench/peers.h"
#include "client/client.h"
#include "common/dtype.h"
#include "hash/engram_hash.h"
#include "kernels/gpu.h"
#include "kernels/gpu_handles.h"

ABSL_FLAG(int64_t, rows_per_head, 262144, "rows of each of the 16 heads");
ABSL_FLAG(int, reps, 5, "repetitions per shape (the best is reported)");
ABSL_FLAG(std::string, engramd, ENGRAM_BENCH_ENGRAMD, "the engramd to run");

namespace engram {
namespace {

using bench::ChildServer;

#define CHECK_OK(expr)                                                \
  do {                                                                \
    absl::Status _s = (expr);                                         \
    if (!_s.ok()) {                                                   \
      std::fprintf(stderr, "%s: %s\n", #expr, _s.ToString().c_str()); \
      std::exit(1);                                                   \
    }                                                                 \
  } while (0)

template <typename T>
T Must(absl::StatusOr<T> v, const char* what) {
  if (!v.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, v.status().ToString().c_str());
    std::exit(1);
  }
  return *std::move(v);
}

absl::Status RunFunction(void* fn) {
  return (*static_cast<std::function<absl::Status()>*>(fn))();
}

// Median over `reps` of event-timed microseconds per call of `fn`.
double GpuMicros(gpu::Stream stream, int iters, int reps,
                 std::function<absl::Status()> fn) {
  std::vector<double> us;
  CHECK_OK(fn());  // warm-up
  for (int r = 0; r < reps; ++r) {
    auto ms = gpu::TimeOnStream(stream, iters, RunFunction, &fn);
    CHECK_OK(ms.status());
    us.push_back(*ms * 1e3 / iters);
  }
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

// Median over `reps` of wall-clock microseconds per call of `fn`.
double HostMicros(int iters, int reps,
                  const std::function<absl::Status()>& fn) {
  std::vector<double> us;
  CHECK_OK(fn());
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) CHECK_OK(fn());
    us.push_back(std::chrono::duration<double, std::micro>(
                     std::chrono::steady_clock::now() - t0)
                     .count() /
                 iters);
  }
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

// Token lookups' hash inside the gather (kernels/token_hash.h) against the
// same launch reading ids hashed beforehand: a V4.1-shaped hash (N = 4,
// H = 8: 24 tables of 264-byte rows, 200003+ rows each) over tables in
// device memory; rows checked equal first. Returns false on a mismatch.
bool TokenHashBench(gpu::Stream stream, int reps) {
  constexpr char kConfig[] = R"({"engram_layer_ids": [1],
    "engram_max_ngram_size": 4, "engram_n_heads": 8,
    "engram_vocab_size": 200000, "engram_pad_token_id": 2,
    "engram_compressed_vocab_size": 100000})";
  constexpr int64_t kRawVocab = 129280;
  constexpr int64_t kDim = 264;
  std::mt19937_64 rng(5);
  std::vector<int64_t> map(kRawVocab);
  for (int64_t i = 0; i < kRawVocab; ++i) map[i] = i % 100000;
  std::shuffle(map.begin(), map.end(), rng);
  const EngramHasher hasher = Must(
      EngramHasher::Create(
          Must(EngramHashConfig::FromJson(kConfig, "config"), "config"), map),
      "hasher");
  const std::span<const int64_t> sizes = hasher.table_sizes(1);
  const int heads = hasher.ids_per_position();
  std::vector<gpu::DeviceMemory<uint8_t>> tables;
  gpu::ViewSpec spec;
  spec.heads = heads;
  spec.dim = kDim;
  spec.dtype = static_cast<int>(DType::kUInt8);
  spec.token_model = hasher.TokenModel(1);
  // Each table a different window of one random buffer.
  std::vector<uint8_t> random(
      *std::max_element(sizes.begin(), sizes.end()) * kDim + heads * 8);
  for (auto& b : random) b = static_cast<uint8_t>(rng());
  for (int h = 0; h < heads; ++h) {
    tables.push_back(
        Must(gpu::NewDeviceMemory<uint8_t>(sizes[h] * kDim), "table"));
    CHECK_OK(gpu::CopyToDevice(tables.back().get(), random.data() + h * 8,
                               sizes[h] * kDim));
    spec.tables.push_back(tables.back().get());
    spec.vocab.push_back(sizes[h]);
  }
  gpu::ViewHandle view = Must(gpu::NewView(spec, stream), "view");
  gpu::ViewSlotHandle slot = Must(gpu::NewViewSlot(), "slot");
  CHECK_OK(gpu::PublishView(slot.get(), view.get(), stream));
  gpu::DeviceMemory<int64_t> device_map =
      Must(gpu::NewDeviceMemory<int64_t>(map.size() * 8), "token map");
  CHECK_OK(gpu::CopyToDevice(device_map.get(), hasher.token_map().data(),
                             map.size() * 8));
  std::printf(
      "\ntoken hash in the gather: %d tables of %lld-byte rows, history 3, "
      "median of %d\n%7s %9s | %8s %8s | %9s\n",
      heads, static_cast<long long>(kDim), reps, "tokens", "bytes", "ids",
      "tokens", "tok/ids");
  bool same = true;
  for (int64_t batch : {1, 16, 256, 4096}) {
    const int64_t hist = 3;
    std::vector<int64_t> tokens(batch), history(batch * hist);
    for (auto& t : tokens) t = static_cast<int64_t>(rng() % kRawVocab);
    for (auto& t : history) t = static_cast<int64_t>(rng() % kRawVocab);
    const int64_t n = batch * heads;
    std::vector<int64_t> ids(n);
    CHECK_OK(hasher.Hash(1, tokens, batch, history, false, ids));
    const size_t out_bytes = n * kDim;
    auto d_ids = Must(gpu::NewDeviceMemory<int64_t>(n * 8), "ids");
    auto d_tokens = Must(gpu::NewDeviceMemory<int64_t>(batch * 8), "tokens");
    auto d_history =
        Must(gpu::NewDeviceMemory<int64_t>(batch * hist * 8), "history");
    auto d_out = Must(gpu::NewDeviceMemory<uint8_t>(out_bytes), "out");
    auto status =
        Must(gpu::NewDeviceMemory<uint64_t>(gpu::kStatusWords * 8), "status");
    CHECK_OK(gpu::CopyToDevice(d_ids.get(), ids.data(), n * 8));
    CHECK_OK(gpu::CopyToDevice(d_tokens.get(), tokens.data(), batch * 8));
    CHECK_OK(
        gpu::CopyToDevice(d_history.get(), history.data(), batch * hist * 8));
    gpu::ViewGather plain;
    plain.slot = slot.get();
    plain.ids = d_ids.get();
    plain.num_ids = n;
    plain.heads = heads;
    plain.dim = kDim;
    plain.in_dtype = plain.out_dtype = static_cast<int>(DType::kUInt8);
    plain.out = d_out.get();
    plain.status = status.get();
    gpu::TokenHashArgs args;
    args.tokens = d_tokens.get();
    args.history = d_history.get();
    args.batch = batch;
    args.length = 1;
    args.history_length = hist;
    args.token_map = device_map.get();
    args.map_size = kRawVocab;
    args.pad = hasher.compressed_pad();
    args.ngram = hasher.config().max_ngram;
    args.heads = hasher.config().heads;
    const std::span<const int64_t> mult = hasher.multipliers(1);
    std::copy(mult.begin(), mult.end(), args.multipliers);
    gpu::ViewGather hashed = plain;
    hashed.ids = nullptr;
    hashed.tokens = &args;
    hashed.token_model = spec.token_model;
    std::vector<uint8_t> want(out_bytes), got(out_bytes);
    uint64_t words[gpu::kStatusWords];
    for (gpu::ViewGather* g : {&plain, &hashed}) {
      CHECK_OK(gpu::LaunchViewGather(*g, stream));
      CHECK_OK(gpu::StreamSynchronize(stream));
      CHECK_OK(gpu::CopyToHost(words, status.get(), sizeof(words)));
      CHECK_OK(gpu::CopyToHost(g == &plain ? want.data() : got.data(),
                               d_out.get(), out_bytes));
      if (words[0] != gpu::kStatusOk) {
        std::fprintf(stderr, "token hash bench: status %llx\n",
                     static_cast<unsigned long long>(words[0]));
        return false;
      }
    }
    if (got != want) {
      std::fprintf(stderr, "token hash bench: hashed rows differ (B = %lld)\n",
                   static_cast<long long>(batch));
      same = false;
    }
    const int iters = batch >= 4096 ? 20 : 200;
    const double by_ids = GpuMicros(stream, iters, reps, [&] {
      return gpu::LaunchViewGather(plain, stream);
    });
    const double by_tokens = GpuMicros(stream, iters, reps, [&] {
      return gpu::LaunchViewGather(hashed, stream);
    });
    std::printf("%7lld %9zu | %8.1f %8.1f | %8.2fx\n",
                static_cast<long long>(batch), out_bytes, by_ids, by_tokens,
                by_tokens / by_ids);
    std::fflush(stdout);
  }
  std::printf(
      "microseconds per launch. tok/ids: hashing the tokens in the launch "
      "over reading hashed ids (target <= 1.1x).\n");
  CHECK_OK(gpu::DeviceSynchronize());
  return same;
}

struct Servers {
  std::unique_ptr<ChildServer> host, gpu;
  std::unique_ptr<Client> rpc, direct, gpu_client;
};

int Main(int argc, char** argv) {
  bench::ParseBenchFlags(
      argc, argv,
      "device_lookup_bench: rows into GPU memory by every path, "
      "one run");
  const int64_t rows_per_head = absl::GetFlag(FLAGS_rows_per_head);
  const int reps = absl::GetFlag(FLAGS_reps);
  const std::string engramd = absl::GetFlag(FLAGS_engramd);
  std::string why;
  if (gpu::DeviceCount(&why) == 0) {
    std::printf("device_lookup_bench: skipped (%s)\n", why.c_str());
    return 0;
  }
  CHECK_OK(gpu::SetDevice(0));
  const gpu::Stream stream = Must(gpu::StreamCreate(), "stream");
  Servers s;
  s.host = ChildServer::Start(
      {engramd, "--listen=127.0.0.1:0", "--metrics_listen=", "--direct_reads"});
  s.gpu = ChildServer::Start(
      {engramd, "--listen=127.0.0.1:0", "--metrics_listen=", "--gpu=0"});
  if (!s.host || !s.gpu) {
    std::fprintf(stderr, "device_lookup_bench: engramd did not start\n");
    return 1;
  }
  const std::string host_addr = absl::StrCat("127.0.0.1:", s.host->port());
  const std::string gpu_addr = absl::StrCat("127.0.0.1:", s.gpu->port());
  s.rpc = Must(Client::Connect(host_addr), "connect");
  ClientOptions direct_options;
  direct_options.direct_reads = true;
  s.direct = Must(Client::Connect(host_addr, direct_options), "connect");
  s.gpu_client = Must(Client::Connect(gpu_addr), "connect");
  constexpr int kHeads = 24;
  std::printf(
      "device_lookup_bench on %s: H = %d, %lld rows per head, "
      "median of %d\n",
      gpu::DeviceName(0).c_str(), kHeads, static_cast<long long>(rows_per_head),
      reps);
  std::printf(
      "%-10s %5s %7s %9s | %8s %8s %8s %8s %8s %8s %8s | %9s %9s %9s "
      "%8s %8s\n",
      "dtype", "D", "tokens", "bytes", "inproc", "uva", "h2d", "ipc", "d2d",
      "direct", "rpc", "uva/inpr", "pcie frac", "ipc/d2d", "ipc/uva",
      "uva/rpc");
  std::mt19937_64 rng(11);
  int64_t layer_id = 1;
  for (const auto& [dtype, dim] : std::vector<std::pair<DType, int64_t>>{
           {DType::kUInt8, 264}, {DType::kFloat32, 64}}) {
    LayerLayout layout{std::vector<int64_t>(kHeads, rows_per_head), dim, dtype};
    const size_t row_bytes = layout.row_bytes();
    std::vector<std::vector<uint8_t>> tables(kHeads);
    std::vector<std::span<const uint8_t>> spans;
    std::uniform_real_distribution<float> uniform(-1, 1);
    for (auto& t : tables) {
      t.resize(layout.table_bytes(0));
      if (dtype == DType::kFloat32) {
        for (size_t i = 0; i < t.size(); i += 4) {
          const float f = uniform(rng);
          std::memcpy(&t[i], &f, 4);
        }
      } else {
        for (auto& b : t) b = static_cast<uint8_t>(rng());
      }
      spans.emplace_back(t);
    }
    Must(s.rpc->Populate(layer_id, layout, spans), "populate (host)");
    Must(s.gpu_client->Populate(layer_id, layout, spans), "populate (gpu)");
    const DevicePath host_path =
        Must(s.rpc->PrepareDeviceLookups(layer_id), "prepare (host)");
    const DevicePath gpu_path =
        Must(s.gpu_client->PrepareDeviceLookups(layer_id), "prepare (gpu)");
    if (host_path != DevicePath::kHostMapped ||
        gpu_path != DevicePath::kGpuShared) {
      std::fprintf(
          stderr, "paths: %s (%s), %s (%s)\n", DevicePathName(host_path),
          s.rpc->DevicePathNote(layer_id).c_str(), DevicePathName(gpu_path),
          s.gpu_client->DevicePathNote(layer_id).c_str());
      return 1;
    }
    // The in-process peer: the same tables pinned here, the same kernel.
    gpu::ViewSpec spec;
    spec.heads = kHeads;
    spec.dim = dim;
    spec.dtype = static_cast<int>(dtype);
    spec.vocab = layout.table_vocab_sizes;
    std::vector<void*> pinned;
    for (const auto& t : tables) {
      void* p = Must(gpu::PinnedAlloc(t.size()), "pinned table");
      std::memcpy(p, t.data(), t.size());
      pinned.push_back(p);
      spec.tables.push_back(static_cast<const uint8_t*>(p));
    }
    void* own_view = Must(gpu::CreateView(spec, stream), "view");
    void* own_slot = Must(gpu::CreateViewSlot(), "slot");
    CHECK_OK(gpu::PublishView(own_slot, own_view, stream));

    for (int64_t tokens : {1, 16, 64, 256, 4096}) {
      const int64_t n = tokens * kHeads;
      const size_t out_bytes = n * row_bytes;
      std::vector<int64_t> ids(n);
      for (int64_t i = 0; i < n; ++i) {
        ids[i] = static_cast<int64_t>(rng() % rows_per_head);
      }
      auto* d_ids = static_cast<int64_t*>(
          Must(gpu::DeviceAlloc(n * sizeof(int64_t)), "ids"));
      CHECK_OK(gpu::CopyToDevice(d_ids, ids.data(), n * sizeof(int64_t)));
      void* d_out = Must(gpu::DeviceAlloc(out_bytes), "out");
      void* d_src = Must(gpu::DeviceAlloc(out_bytes), "copy source");
      auto* status = static_cast<uint64_t*>(
          Must(gpu::DeviceAlloc(gpu::kStatusWords * 8), "status"));
      void* h_out = Must(gpu::PinnedAlloc(out_bytes), "pinned out");

      // Correct first: every path's rows against the RPC's.
      const int64_t shape[] = {tokens, 1, kHeads};
      std::vector<uint8_t> want(out_bytes), got(out_bytes);
      CHECK_OK(s.rpc->Lookup(layer_id, ids, shape, want));
      DeviceLookupRequest r;
      r.layer_id = layer_id;
      r.ids = d_ids;
      r.num_ids = n;
      r.out = d_out;
      r.out_bytes = out_bytes;
      r.stream = stream;
      gpu::ViewGather own;
      own.slot = own_slot;
      own.ids = d_ids;
      own.num_ids = n;
      own.heads = kHeads;
      own.dim = dim;
      own.in_dtype = own.out_dtype = static_cast<int>(dtype);
      own.out = static_cast<uint8_t*>(d_out);
      own.status = status;
      for (int which = 0; which < 3; ++which) {
        CHECK_OK(gpu::DeviceSynchronize());
        if (which == 0) CHECK_OK(gpu::LaunchViewGather(own, stream));
        if (which == 1) CHECK_OK(s.rpc->LookupToDevice(r));
        if (which == 2) CHECK_OK(s.gpu_client->LookupToDevice(r));
        if (which > 0) {
          CHECK_OK((which == 1 ? s.rpc : s.gpu_client)->DeviceLookupResult(r));
        }
        CHECK_OK(gpu::StreamSynchronize(stream));
        CHECK_OK(gpu::CopyToHost(got.data(), d_out, out_bytes));
        if (got != want) {
          std::fprintf(stderr, "path %d returned other rows\n", which);
          return 1;
        }
      }

      const int iters = tokens >= 4096 ? 20 : 200;
      const double inproc = GpuMicros(stream, iters, reps, [&] {
        return gpu::LaunchViewGather(own, stream);
      });
      const double uva = GpuMicros(stream, iters, reps,
                                   [&] { return s.rpc->LookupToDevice(r); });
      const double h2d = GpuMicros(stream, iters, reps, [&] {
        return gpu::CopyToDeviceAsync(d_out, h_out, out_bytes, stream);
      });
      const double ipc = GpuMicros(
          stream, iters, reps, [&] { return s.gpu_client->LookupToDevice(r); });
      const double d2d = GpuMicros(stream, iters, reps, [&] {
        return gpu::LaunchDeviceCopy(d_out, d_src, out_bytes, stream);
      });
      auto via_host = [&](Client* c) {
        return [&, c]() -> absl::Status {
          absl::Status st = c->Lookup(
              layer_id, ids, shape,
              std::span<uint8_t>(static_cast<uint8_t*>(h_out), out_bytes));
          if (st.ok()) {
            st = gpu::CopyToDeviceAsync(d_out, h_out, out_bytes, stream);
          }
          if (st.ok()) st = gpu::StreamSynchronize(stream);
          return st;
        };
      };
      const int host_iters = tokens >= 4096 ? 10 : 100;
      const double direct =
          HostMicros(host_iters, reps, via_host(s.direct.get()));
      const double rpc = HostMicros(host_iters, reps, via_host(s.rpc.get()));
      std::printf(
          "%-10s %5lld %7lld %9zu | %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f "
          "| %8.2fx %8.2f %8.2fx %7.2fx %7.1fx\n",
          DTypeName(dtype), static_cast<long long>(dim),
          static_cast<long long>(tokens), out_bytes, inproc, uva, h2d, ipc, d2d,
          direct, rpc, inproc / uva, h2d / uva, d2d / ipc, uva / ipc,
          rpc / uva);
      std::fflush(stdout);
      gpu::DeviceFree(d_ids);
      gpu::DeviceFree(d_out);
      gpu::DeviceFree(d_src);
      gpu::DeviceFree(status);
      gpu::PinnedFree(h_out);
    }
    gpu::FreeViewSlot(own_slot);
    gpu::FreeView(own_view);
    for (void* p : pinned) gpu::PinnedFree(p);
    ++layer_id;
  }
  std::printf(
      "microseconds per lookup. uva/inpr: the in-process gather's time over "
      "the mapped one's (target >= 0.9x); pcie frac: the contiguous copy's "
      "time over uva's; ipc/d2d: the device copy's time over ipc's (target "
      ">= 0.8x); ipc/uva and uva/rpc: speedups.\n");
  const bool hashed_ok = TokenHashBench(stream, reps);
  gpu::StreamDestroy(stream);
  return hashed_ok ? 0 : 1;
}

}  // namespace
}  // namespace engram

int main(int argc, char** argv) { return engram::Main(argc, argv); }
