// Client::LookupToDevice (client/device_lookup.*) against a real engramd
// process: rows in GPU memory from the server's GPU copy (CUDA IPC), its
// host tables (UVA) or the RPC path, bit-identical to Lookup for every
// dtype and conversion; ids in device, pinned and pageable memory; a CUDA
// graph replayed across a replace; remove and a killed server while the
// client holds the mappings; several layers in one call. Cases that need a
// GPU skip without one.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>
#include <tuple>

#include "absl/strings/match.h"
#include "client/client.h"
#include "common/dtype.h"
#include "hash/engram_hash.h"
#include "kernels/gpu.h"
#include "tests/testing/checkpoint_files.h"
#include "tests/testing/deepseek_demo.h"
#include "tests/testing/engramd_process.h"
#include "tests/testing/random_layer.h"

namespace engram {
namespace {

using ::testing::HasSubstr;

// Device memory for a test; freed on destruction.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    absl::StatusOr<void*> p = gpu::DeviceAlloc(bytes);
    if (p.ok()) data_ = *p;
  }
  ~DeviceBuffer() { gpu::DeviceFree(data_); }
  void* data() const { return data_; }
  size_t size() const { return bytes_; }
  // Poisoned, so unwritten bytes show.
  // Done when it returns: cudaMemcpy from pageable memory may return before
  // its DMA lands, and the lookups run on non-blocking streams, which the
  // legacy stream does not order against (a late fill once overwrote rows
  // a graph replay had just written: "a replay mixed versions").
  void Fill(uint8_t byte) {
    std::vector<uint8_t> host(bytes_, byte);
    EXPECT_TRUE(gpu::CopyToDevice(data_, host.data(), bytes_).ok());
    EXPECT_TRUE(gpu::DeviceSynchronize().ok());
  }
  std::vector<uint8_t> Read() const {
    std::vector<uint8_t> host(bytes_);
    EXPECT_TRUE(gpu::CopyToHost(host.data(), data_, bytes_).ok());
    return host;
  }

 private:
  void* data_ = nullptr;
  size_t bytes_;
};

class DeviceLookupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    has_device_ = gpu::DeviceCount(&why) > 0;
    why_ = why;
  }
  void Start(std::vector<std::string> flags) {
    flags.push_back("--metrics_listen=127.0.0.1:0");
    auto server = testing::EngramdProcess::Start(flags);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    auto client = Client::Connect(server_->address());
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
  }
  // What Lookup (the RPC path) returns for these ids.
  std::vector<uint8_t> Reference(int64_t layer, const LayerLayout& l,
                                 const std::vector<int64_t>& ids,
                                 DType out_dtype) {
    const int64_t heads = l.num_heads();
    const int64_t shape[] = {static_cast<int64_t>(ids.size()) / heads, 1,
                             heads};
    const int64_t dim =
        out_dtype == DType::kUInt8 ? l.embedding_dim : l.values_per_row();
    std::vector<uint8_t> out(ids.size() * dim * DTypeSize(out_dtype));
    EXPECT_TRUE(client_->Lookup(layer, ids, shape, out, out_dtype).ok());
    return out;
  }

  // A lookup of `ids` (host memory) into `out` on the default stream.
  static DeviceLookupRequest Request(int64_t layer,
                                     const std::vector<int64_t>& ids,
                                     const DeviceBuffer& out) {
    DeviceLookupRequest r;
    r.layer_id = layer;
    r.ids = ids.data();
    r.num_ids = static_cast<int64_t>(ids.size());
    r.out = out.data();
    r.out_bytes = out.size();
    return r;
  }
  // Looks `r` up (and waits for its result) until it fails or `seconds`
  // pass; the last status.
  absl::Status LookUpUntilItFails(const DeviceLookupRequest& r, int seconds) {
    absl::Status s;
    const auto until =
        std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    do {
      s = client_->LookupToDevice(r);
      if (s.ok()) s = client_->DeviceLookupResult(r);
    } while (s.ok() && std::chrono::steady_clock::now() < until);
    return s;
  }

  bool has_device_ = false;
  std::string why_;
  std::unique_ptr<testing::EngramdProcess> server_;
  std::unique_ptr<Client> client_;
};

// Runs everywhere: without a device, each call says why.
TEST_F(DeviceLookupTest, CallsSayWhatIsWrong) {
  Start({"--direct_reads"});
  LayerLayout l{{100, 50}, 8, DType::kFloat32};
  auto tables = testing::RandomTables(l, 1);
  ASSERT_TRUE(client_->Populate(1, l, testing::Spans(tables)).ok());
  std::vector<int64_t> ids = {1, 2, 3, 4};
  std::vector<uint8_t> host_out(4 * 8 * 4);
  DeviceLookupRequest r;
  r.layer_id = 1;
  r.ids = ids.data();
  r.num_ids = 4;
  r.out = host_out.data();  // not device memory
  r.out_bytes = host_out.size();
  absl::Status s = client_->LookupToDevice(r);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("device memory"));
  // Several lookups in one call: each refusal names its request.
  const DeviceLookupRequest good = r;
  std::vector<DeviceLookupRequest> several = {good, good};
  several[1].num_ids = 0;
  s = client_->LookupToDevice(several);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("lookup 1: "));
  std::vector<DevicePath> one_path(1);
  s = client_->LookupToDevice(several, one_path);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("paths has 1 entries for 2 lookups"));
  EXPECT_EQ(
      client_->LookupToDevice(std::span<const DeviceLookupRequest>()).code(),
      absl::StatusCode::kInvalidArgument);
  r.ids = nullptr;
  EXPECT_EQ(client_->LookupToDevice(r).code(),
            absl::StatusCode::kInvalidArgument);
  // Token lookups: tokens in place of ids, never both; a shape.
  const std::vector<int64_t> tokens = {5, 6, 7};
  DeviceTokens t{tokens.data(), 1, 3, nullptr, 0};
  DeviceLookupRequest by_tokens = r;
  by_tokens.tokens = &t;
  by_tokens.ids = ids.data();
  by_tokens.num_ids = 0;
  s = client_->LookupToDevice(by_tokens);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("no ids"));
  by_tokens.ids = nullptr;
  t.history_length = 1;  // and no history
  s = client_->LookupToDevice(by_tokens);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("history"));
  t.history_length = 0;
  t.batch = 0;
  EXPECT_EQ(client_->LookupToDevice(by_tokens).code(),
            absl::StatusCode::kInvalidArgument);
  if (!has_device_) {
    absl::StatusOr<DevicePath> path = client_->PrepareDeviceLookups(1);
    EXPECT_EQ(path.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(path.status().message(), HasSubstr("no CUDA device"));
    return;
  }
  // With a device: sizes and conversions are checked before any launch.
  DeviceBuffer out(4 * 8 * 4);
  r.ids = ids.data();
  r.out = out.data();
  r.out_bytes = out.size() - 4;
  s = client_->LookupToDevice(r);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("need 128"));
  r.out_bytes = out.size();
  r.num_ids = 3;
  EXPECT_EQ(client_->LookupToDevice(r).code(),
            absl::StatusCode::kInvalidArgument);
  r.num_ids = 4;
  r.output_dtype = DType::kUInt8;
  EXPECT_EQ(client_->LookupToDevice(r).code(),
            absl::StatusCode::kInvalidArgument);
  r.output_dtype.reset();
  r.layer_id = 77;
  EXPECT_EQ(client_->LookupToDevice(r).code(), absl::StatusCode::kNotFound);
}

struct PathCase {
  std::vector<std::string> flags;
  DevicePath path;
};

// Every case needs a device: skipped (in SetUp) without one.
class DeviceLookupPathTest : public DeviceLookupTest,
                             public ::testing::WithParamInterface<PathCase> {
 protected:
  void SetUp() override {
    DeviceLookupTest::SetUp();
    if (!has_device_) GTEST_SKIP() << "no CUDA device: " << why_;
  }
};

// Every stored dtype and every conversion (and dequantization), ids in
// device, pinned and pageable memory: bit-identical to Lookup, on the path
// the server allows.
TEST_P(DeviceLookupPathTest, RowsMatchTheRpcLookupForEveryDtype) {
  Start(GetParam().flags);
  constexpr Quant kDeepSeek{QuantFormat::kFp8E4M3Ue8m0, 32};
  const std::vector<std::tuple<DType, int64_t, Quant>> stored = {
      {DType::kFloat32, 64, {}},
      {DType::kBFloat16, 64, {}},
      {DType::kFloat16, 128, {}},
      {DType::kUInt8, 264, {}},         // opaque FP8 weight + scale rows
      {DType::kUInt8, 264, kDeepSeek},  // the same, dequantized
      {DType::kUInt8, 258, {QuantFormat::kFp8E4M3Ue8m0, 128}}};
  auto stream = gpu::StreamCreate();
  ASSERT_TRUE(stream.ok());
  int64_t layer = 10;
  for (const auto& [dtype, dim, quant] : stored) {
    LayerLayout l{{5000, 3000, 7000, 1000}, dim, dtype};
    l.quant = quant;
    auto tables = testing::RandomTables(l, layer);
    ASSERT_TRUE(client_->Populate(layer, l, testing::Spans(tables)).ok());
    absl::StatusOr<DevicePath> prepared = client_->PrepareDeviceLookups(layer);
    ASSERT_TRUE(prepared.ok()) << prepared.status();
    EXPECT_EQ(*prepared, GetParam().path) << client_->DevicePathNote(layer);
    const std::vector<int64_t> ids = testing::RandomIds(l, 32, 2, layer);
    DeviceBuffer device_ids(ids.size() * sizeof(int64_t));
    ASSERT_TRUE(
        gpu::CopyToDevice(device_ids.data(), ids.data(), device_ids.size())
            .ok());
    auto pinned = gpu::PinnedAlloc(device_ids.size());
    ASSERT_TRUE(pinned.ok());
    std::memcpy(*pinned, ids.data(), device_ids.size());
    std::vector<DType> outs = {dtype};
    if (IsFloatDType(dtype)) {
      outs = {DType::kFloat32, DType::kBFloat16, DType::kFloat16};
    } else if (quant.enabled()) {
      outs = {DType::kUInt8, DType::kFloat32, DType::kBFloat16,
              DType::kFloat16};
    }
    for (DType out_dtype : outs) {
      const std::vector<uint8_t> want = Reference(layer, l, ids, out_dtype);
      for (const void* id_source : {static_cast<const void*>(device_ids.data()),
                                    static_cast<const void*>(*pinned),
                                    static_cast<const void*>(ids.data())}) {
        DeviceBuffer out(want.size());
        out.Fill(0xA5);
        DeviceLookupRequest r;
        r.layer_id = layer;
        r.ids = static_cast<const int64_t*>(id_source);
        r.num_ids = static_cast<int64_t>(ids.size());
        r.out = out.data();
        r.out_bytes = out.size();
        r.output_dtype = out_dtype;
        r.stream = *stream;
        DevicePath path;
        ASSERT_TRUE(client_->LookupToDevice(r, &path).ok());
        EXPECT_EQ(path, GetParam().path);
        ASSERT_TRUE(client_->DeviceLookupResult(r).ok());
        EXPECT_TRUE(out.Read() == want)
            << DTypeName(dtype) << " (quant block " << quant.block << ") -> "
            << DTypeName(out_dtype);
      }
    }
    // An id out of range: the status names it, nothing else breaks.
    std::vector<int64_t> bad = ids;
    bad[5] = 3000;  // head 1 has 3000 rows
    DeviceBuffer out(ids.size() * l.row_bytes());
    DeviceLookupRequest r;
    r.layer_id = layer;
    r.ids = bad.data();
    r.num_ids = static_cast<int64_t>(bad.size());
    r.out = out.data();
    r.out_bytes = out.size();
    r.stream = *stream;
    absl::Status launched = client_->LookupToDevice(r);
    if (launched.ok()) {  // zero-copy: the GPU finds it
      absl::Status s = client_->DeviceLookupResult(r);
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
      EXPECT_THAT(s.message(), HasSubstr("ids[5]"));
    } else {  // the RPC path: the server refuses it
      EXPECT_EQ(launched.code(), absl::StatusCode::kInvalidArgument);
    }
    gpu::PinnedFree(*pinned);
    ++layer;
  }
  gpu::StreamDestroy(*stream);
  EXPECT_TRUE(server_->Alive());
}

// A graph captured once reads the version current at each replay: after a
// replace, replays return the old rows until the client has mapped the new
// version, then the new ones; never a mix.
TEST_P(DeviceLookupPathTest, AGraphReplayAfterReplaceReadsTheNewVersion) {
  if (GetParam().path == DevicePath::kRpc) GTEST_SKIP() << "not capturable";
  Start(GetParam().flags);
  LayerLayout l{{4096, 4096, 4096}, 128, DType::kBFloat16};
  auto v1 = testing::RandomTables(l, 1);
  auto v2 = testing::RandomTables(l, 2);
  ASSERT_TRUE(client_->Populate(4, l, testing::Spans(v1)).ok());
  ASSERT_TRUE(client_->PrepareDeviceLookups(4).ok());
  const std::vector<int64_t> ids = testing::RandomIds(l, 64, 1, 9);
  DeviceBuffer device_ids(ids.size() * sizeof(int64_t));
  ASSERT_TRUE(
      gpu::CopyToDevice(device_ids.data(), ids.data(), device_ids.size()).ok());
  DeviceBuffer status(gpu::kStatusWords * sizeof(uint64_t));
  const std::vector<uint8_t> want1 =
      testing::ReferenceGather(l, v1, ids, l.dtype);
  const std::vector<uint8_t> want2 =
      testing::ReferenceGather(l, v2, ids, l.dtype);
  DeviceBuffer out(want1.size());
  auto stream = gpu::StreamCreate();
  ASSERT_TRUE(stream.ok());
  DeviceLookupRequest r;
  r.layer_id = 4;
  r.ids = static_cast<const int64_t*>(device_ids.data());
  r.num_ids = static_cast<int64_t>(ids.size());
  r.out = out.data();
  r.out_bytes = out.size();
  r.stream = *stream;
  r.status = static_cast<uint64_t*>(status.data());
  ASSERT_TRUE(gpu::BeginCapture(*stream).ok());
  ASSERT_TRUE(client_->LookupToDevice(r).ok());
  auto graph = gpu::EndCapture(*stream);
  ASSERT_TRUE(graph.ok()) << graph.status();
  ASSERT_TRUE(gpu::GraphLaunch(*graph, *stream).ok());
  ASSERT_TRUE(client_->DeviceLookupResult(r).ok());
  EXPECT_TRUE(out.Read() == want1);

  ASSERT_TRUE(client_->Replace(4, l, testing::Spans(v2)).ok());
  bool saw_new = false;
  const auto until =
      std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!saw_new && std::chrono::steady_clock::now() < until) {
    out.Fill(0x5A);
    ASSERT_TRUE(gpu::GraphLaunch(*graph, *stream).ok());
    absl::Status s = client_->DeviceLookupResult(r);
    ASSERT_TRUE(s.ok()) << s;
    const std::vector<uint8_t> got = out.Read();
    saw_new = got == want2;
    if (!saw_new && got != want1) {
      // Which rows came from where: v1 and v2 rows together would be the
      // product mixing versions; fill-pattern rows, a race in the test.
      int from1 = 0, from2 = 0, filled = 0, other = 0;
      const size_t row = l.row_bytes();
      for (size_t at = 0; at < got.size(); at += row) {
        const bool is1 = std::equal(got.begin() + at, got.begin() + at + row,
                                    want1.begin() + at);
        const bool is2 = std::equal(got.begin() + at, got.begin() + at + row,
                                    want2.begin() + at);
        const bool is_fill =
            std::all_of(got.begin() + at, got.begin() + at + row,
                        [](uint8_t b) { return b == 0x5A; });
        from1 += is1 && !is2;
        from2 += is2 && !is1;
        filled += is_fill;
        other += !is1 && !is2 && !is_fill;
      }
      FAIL() << "a replay mixed versions: " << from1 << " rows of v1, " << from2
             << " of v2, " << filled << " still the fill pattern, " << other
             << " other";
    }
  }
  EXPECT_TRUE(saw_new) << "replays never reached the new version";
  gpu::GraphDestroy(*graph);
  gpu::StreamDestroy(*stream);
}

// A decode step's layers in one call (one launch on the zero-copy paths):
// each request gets exactly its own rows and outcome, captured in a graph
// too; a bad id in one request is reported by that request only.
TEST_P(DeviceLookupPathTest, SeveralLayersInOneCallGetTheirOwnRows) {
  Start(GetParam().flags);
  const LayerLayout fp8{{3000, 5000, 4000, 2000}, 264, DType::kUInt8};
  const LayerLayout f32{{1000, 1000}, 64, DType::kFloat32};
  const std::vector<std::pair<int64_t, LayerLayout>> layers = {
      {21, fp8}, {22, fp8}, {23, f32}};
  std::vector<std::vector<std::vector<uint8_t>>> tables;
  std::vector<std::vector<int64_t>> ids;
  std::vector<std::unique_ptr<DeviceBuffer>> device_ids, outs, statuses;
  std::vector<DeviceLookupRequest> requests;
  std::vector<std::vector<uint8_t>> want;
  auto stream = gpu::StreamCreate();
  ASSERT_TRUE(stream.ok());
  for (const auto& [layer, l] : layers) {
    tables.push_back(testing::RandomTables(l, layer));
    ASSERT_TRUE(
        client_->Populate(layer, l, testing::Spans(tables.back())).ok());
    ids.push_back(testing::RandomIds(l, 16, 1, layer));
    const DType out_dtype =
        l.dtype == DType::kFloat32 ? DType::kBFloat16 : l.dtype;
    want.push_back(
        testing::ReferenceGather(l, tables.back(), ids.back(), out_dtype));
    device_ids.push_back(std::make_unique<DeviceBuffer>(ids.back().size() * 8));
    ASSERT_TRUE(gpu::CopyToDevice(device_ids.back()->data(), ids.back().data(),
                                  device_ids.back()->size())
                    .ok());
    outs.push_back(std::make_unique<DeviceBuffer>(want.back().size()));
    statuses.push_back(
        std::make_unique<DeviceBuffer>(kDeviceStatusWords * sizeof(uint64_t)));
    DeviceLookupRequest r;
    r.layer_id = layer;
    r.ids = static_cast<const int64_t*>(device_ids.back()->data());
    r.num_ids = static_cast<int64_t>(ids.back().size());
    r.out = outs.back()->data();
    r.out_bytes = outs.back()->size();
    if (out_dtype != l.dtype) r.output_dtype = out_dtype;
    r.stream = *stream;
    r.status = static_cast<uint64_t*>(statuses.back()->data());
    requests.push_back(r);
  }
  auto check_rows = [&](const char* how) {
    for (size_t i = 0; i < requests.size(); ++i) {
      absl::Status s = client_->DeviceLookupResult(requests[i]);
      EXPECT_TRUE(s.ok()) << how << " lookup " << i << ": " << s;
      EXPECT_TRUE(outs[i]->Read() == want[i]) << how << " lookup " << i;
      outs[i]->Fill(0xA5);
    }
  };
  for (auto& out : outs) out->Fill(0xA5);
  std::vector<DevicePath> paths(requests.size());
  ASSERT_TRUE(client_->LookupToDevice(requests, paths).ok());
  for (DevicePath path : paths) EXPECT_EQ(path, GetParam().path);
  check_rows("eager");
  if (GetParam().path != DevicePath::kRpc) {
    ASSERT_TRUE(gpu::BeginCapture(*stream).ok());
    ASSERT_TRUE(client_->LookupToDevice(requests).ok());
    auto graph = gpu::EndCapture(*stream);
    ASSERT_TRUE(graph.ok()) << graph.status();
    for (int replay = 0; replay < 3; ++replay) {
      ASSERT_TRUE(gpu::GraphLaunch(*graph, *stream).ok());
      check_rows("replayed");
    }
    gpu::GraphDestroy(*graph);
  }
  // A bad id in request 1 only.
  std::vector<int64_t> bad = ids[1];
  bad[6] = 4000;  // head 2 has 4000 rows
  ASSERT_TRUE(
      gpu::CopyToDevice(device_ids[1]->data(), bad.data(), bad.size() * 8)
          .ok());
  absl::Status launched = client_->LookupToDevice(requests);
  if (GetParam().path == DevicePath::kRpc) {
    EXPECT_EQ(launched.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(launched.message(), HasSubstr("lookup 1: "));
  } else {
    ASSERT_TRUE(launched.ok()) << launched;
    EXPECT_TRUE(client_->DeviceLookupResult(requests[0]).ok());
    absl::Status s = client_->DeviceLookupResult(requests[1]);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(s.message(), HasSubstr("ids[6]"));
    EXPECT_TRUE(client_->DeviceLookupResult(requests[2]).ok());
    EXPECT_TRUE(outs[2]->Read() == want[2]);
  }
  // Two lookups of one layer need status words of their own.
  std::vector<DeviceLookupRequest> twice = {requests[0], requests[0]};
  twice[0].status = twice[1].status = nullptr;
  absl::Status s = client_->LookupToDevice(twice);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("status words of their own"));
  gpu::StreamDestroy(*stream);
  EXPECT_TRUE(server_->Alive());
}

// The forms engines send, read on the GPU as they are: fused ids, head
// slices (a tensor-parallel rank's heads) and entries, bit-identical to
// Lookup with the same options; a bad fused id named as Lookup names it.
TEST_P(DeviceLookupPathTest, IdFormsAndHeadSlicesReadAsLookupDoes) {
  Start(GetParam().flags);
  const LayerLayout l{{3000, 5000, 4000, 2000}, 264, DType::kUInt8};
  auto tables = testing::RandomTables(l, 31);
  ASSERT_TRUE(client_->Populate(31, l, testing::Spans(tables)).ok());
  const std::vector<int64_t> offsets = FusedOffsets(l);
  auto stream = gpu::StreamCreate();
  ASSERT_TRUE(stream.ok());
  std::mt19937_64 rng(8);
  struct Form {
    IdForm form;
    int64_t begin, end;
  };
  for (const Form& f :
       {Form{IdForm::kFused, 0, 0}, Form{IdForm::kPerHead, 1, 3},
        Form{IdForm::kFused, 2, 4}, Form{IdForm::kEntries, 0, 0},
        Form{IdForm::kEntries, 1, 3}}) {
    const int64_t end = f.end == 0 ? l.num_heads() : f.end;
    const int64_t columns = end - f.begin;
    const bool entries = f.form == IdForm::kEntries;
    std::vector<int64_t> ids(entries ? 40 : 8 * columns);
    for (size_t i = 0; i < ids.size(); ++i) {
      if (entries) {
        ids[i] =
            offsets[f.begin] +
            static_cast<int64_t>(rng() % (offsets[end] - offsets[f.begin]));
      } else {
        const int64_t h = f.begin + static_cast<int64_t>(i) % columns;
        const int64_t row =
            static_cast<int64_t>(rng() % l.table_vocab_sizes[h]);
        ids[i] = f.form == IdForm::kFused ? offsets[h] + row : row;
      }
    }
    LookupOptions options;
    options.id_form = f.form;
    options.head_begin = f.begin;
    options.head_end = f.end;
    const int64_t n = static_cast<int64_t>(ids.size());
    const int64_t by_position[] = {n / columns, 1, columns};
    const int64_t by_entry[] = {n};
    const std::span<const int64_t> shape =
        entries ? std::span<const int64_t>(by_entry) : by_position;
    std::vector<uint8_t> want(ids.size() * l.row_bytes());
    ASSERT_TRUE(client_->Lookup(31, ids, shape, want, options).ok());
    DeviceBuffer out(want.size());
    out.Fill(0xA5);
    DeviceLookupRequest r = Request(31, ids, out);
    r.id_form = f.form;
    r.head_begin = f.begin;
    r.head_end = f.end;
    r.stream = *stream;
    DevicePath path;
    absl::Status s = client_->LookupToDevice(r, &path);
    ASSERT_TRUE(s.ok()) << s;
    EXPECT_EQ(path, GetParam().path);
    ASSERT_TRUE(client_->DeviceLookupResult(r).ok());
    EXPECT_TRUE(out.Read() == want)
        << "form " << static_cast<int>(f.form) << " heads [" << f.begin << ", "
        << end << ")";
    // An id of another head's range: refused with Lookup's words.
    std::vector<int64_t> bad = ids;
    bad[0] = entries ? offsets.back() : offsets[f.begin] + 5000000;
    const absl::Status rpc = client_->Lookup(31, bad, shape, want, options);
    ASSERT_EQ(rpc.code(), absl::StatusCode::kInvalidArgument);
    r.ids = bad.data();
    s = client_->LookupToDevice(r);
    if (s.ok()) s = client_->DeviceLookupResult(r);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_EQ(s.message(), rpc.message());
  }
  gpu::StreamDestroy(*stream);
  EXPECT_TRUE(server_->Alive());
}

// Token ids in, rows out, hashed on the GPU in the gather's launch: both
// Engram layers of the DeepSeek demo in one call, bit-identical to the
// LookupTokens RPC (FP8 rows and dequantized bf16), tokens in device and
// pageable memory, histories, the image token; captured in a graph; a bad
// token named; a layer populated again without its model refused, and its
// captured graph told so instead of reading rows its ids do not address.
TEST_P(DeviceLookupPathTest, TokenLookupsHashOnTheGpuAsLookupTokensDoes) {
  testing::TempDir dir;
  absl::StatusOr<std::string> manifest = testing::WriteDeepSeekDemo(dir.path());
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  auto hasher = EngramHasher::Load(dir.path() + "/config.json",
                                   dir.path() + "/token_map.npy");
  ASSERT_TRUE(hasher.ok()) << hasher.status();
  std::vector<std::string> flags = GetParam().flags;
  flags.push_back("--load=" + *manifest);
  Start(flags);
  const int64_t batch = 3, length = 5, hist = 2;
  const int per = hasher->ids_per_position();
  const int64_t vocab = static_cast<int64_t>(hasher->token_map().size());
  std::vector<int64_t> tokens(batch * length), history(batch * hist);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = (i * 7919) % vocab;
  for (size_t i = 0; i < history.size(); ++i) history[i] = (i * 104729) % vocab;
  tokens[4] = hasher->config().image_token_id.value_or(tokens[4]);
  DeviceBuffer device_tokens(tokens.size() * 8),
      device_history(history.size() * 8);
  ASSERT_TRUE(gpu::CopyToDevice(device_tokens.data(), tokens.data(),
                                device_tokens.size())
                  .ok());
  ASSERT_TRUE(gpu::CopyToDevice(device_history.data(), history.data(),
                                device_history.size())
                  .ok());
  auto stream = gpu::StreamCreate();
  ASSERT_TRUE(stream.ok());
  const int64_t layers[] = {1, 14};
  const int64_t shape[] = {batch, length};
  for (DType out_dtype : {DType::kUInt8, DType::kBFloat16}) {
    const size_t row = out_dtype == DType::kUInt8 ? 264 : 256 * 2;
    const size_t bytes = batch * length * per * row;
    std::vector<std::vector<uint8_t>> want(2, std::vector<uint8_t>(bytes));
    const std::span<uint8_t> spans[] = {want[0], want[1]};
    ASSERT_TRUE(
        client_->LookupTokens(layers, tokens, shape, history, spans, out_dtype)
            .ok());
    for (bool on_device : {true, false}) {
      DeviceTokens t;
      t.tokens = on_device ? static_cast<const int64_t*>(device_tokens.data())
                           : tokens.data();
      t.batch = batch;
      t.length = length;
      t.history = on_device ? static_cast<const int64_t*>(device_history.data())
                            : history.data();
      t.history_length = hist;
      std::vector<std::unique_ptr<DeviceBuffer>> outs, statuses;
      std::vector<DeviceLookupRequest> requests;
      for (int64_t layer : layers) {
        outs.push_back(std::make_unique<DeviceBuffer>(bytes));
        outs.back()->Fill(0xA5);
        statuses.push_back(std::make_unique<DeviceBuffer>(kDeviceStatusWords *
                                                          sizeof(uint64_t)));
        DeviceLookupRequest r;
        r.layer_id = layer;
        r.tokens = &t;
        r.out = outs.back()->data();
        r.out_bytes = bytes;
        r.output_dtype = out_dtype;
        r.stream = *stream;
        r.status = static_cast<uint64_t*>(statuses.back()->data());
        requests.push_back(r);
      }
      std::vector<DevicePath> paths(2);
      absl::Status s = client_->LookupToDevice(requests, paths);
      ASSERT_TRUE(s.ok()) << s;
      for (int i = 0; i < 2; ++i) {
        EXPECT_EQ(paths[i], GetParam().path);
        ASSERT_TRUE(client_->DeviceLookupResult(requests[i]).ok());
        EXPECT_TRUE(outs[i]->Read() == want[i])
            << "layer " << layers[i] << " as " << DTypeName(out_dtype)
            << (on_device ? ", device tokens" : ", pageable tokens");
      }
    }
  }
  // A token outside the map.
  std::vector<int64_t> bad = tokens;
  bad[7] = vocab + 5;
  DeviceBuffer out(batch * length * per * 264);
  DeviceTokens t{bad.data(), batch, length, history.data(), hist};
  DeviceLookupRequest r;
  r.layer_id = 1;
  r.tokens = &t;
  r.out = out.data();
  r.out_bytes = out.size();
  r.stream = *stream;
  absl::Status launched = client_->LookupToDevice(r);
  if (launched.ok()) {
    absl::Status s = client_->DeviceLookupResult(r);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(s.message(), HasSubstr("tokens[1, 2]"));
  } else {
    EXPECT_EQ(launched.code(), absl::StatusCode::kInvalidArgument) << launched;
  }
  if (GetParam().path == DevicePath::kRpc) return;
  // Captured once; then layer 1 is populated again without its model.
  t = DeviceTokens{static_cast<const int64_t*>(device_tokens.data()), batch,
                   length, static_cast<const int64_t*>(device_history.data()),
                   hist};
  DeviceBuffer status(kDeviceStatusWords * sizeof(uint64_t));
  r.status = static_cast<uint64_t*>(status.data());
  ASSERT_TRUE(gpu::BeginCapture(*stream).ok());
  ASSERT_TRUE(client_->LookupToDevice(r).ok());
  auto graph = gpu::EndCapture(*stream);
  ASSERT_TRUE(graph.ok()) << graph.status();
  ASSERT_TRUE(gpu::GraphLaunch(*graph, *stream).ok());
  ASSERT_TRUE(client_->DeviceLookupResult(r).ok());
  auto layer1 = client_->DescribeLayer(1);
  ASSERT_TRUE(layer1.ok());
  auto tables = testing::RandomTables(layer1->layout, 99);
  ASSERT_TRUE(client_->Replace(1, layer1->layout, testing::Spans(tables)).ok());
  absl::Status s;
  const auto until =
      std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (s.ok() && std::chrono::steady_clock::now() < until) {
    ASSERT_TRUE(gpu::GraphLaunch(*graph, *stream).ok());
    s = client_->DeviceLookupResult(r);
  }
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("model hash"));
  s = client_->LookupToDevice(r);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  gpu::GraphDestroy(*graph);
  gpu::StreamDestroy(*stream);
  EXPECT_TRUE(server_->Alive());
}

// Remove while the client holds the mapping (for the GPU copy: an open
// CUDA IPC handle): launches report NOT_FOUND, the server lives, and the
// leased version is released once the client let go of it.
TEST_P(DeviceLookupPathTest, RemoveWhileMappedIsReportedAndReleased) {
  Start(GetParam().flags);
  LayerLayout l{{2048, 2048}, 64, DType::kFloat32};
  auto tables = testing::RandomTables(l, 5);
  ASSERT_TRUE(client_->Populate(6, l, testing::Spans(tables)).ok());
  const std::vector<int64_t> ids = testing::RandomIds(l, 8, 1, 3);
  DeviceBuffer out(ids.size() * l.row_bytes());
  const DeviceLookupRequest r = Request(6, ids, out);
  ASSERT_TRUE(client_->LookupToDevice(r).ok());
  ASSERT_TRUE(client_->DeviceLookupResult(r).ok());
  ASSERT_TRUE(client_->Remove(6).ok());
  absl::Status s = LookUpUntilItFails(r, 5);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_TRUE(server_->Alive()) << server_->Log();
  // The lease on the removed version ends after the client's grace.
  bool released = false;
  for (int i = 0; i < 100 && !released; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    auto metrics = testing::HttpGet(server_->metrics_port(), "/metrics");
    released = metrics.ok() &&
               absl::StrContains(*metrics, "engram_watch_leased_versions 0");
  }
  EXPECT_TRUE(released);
}

// A killed server: calls fail (no hang, no crash) once the client heard.
TEST_P(DeviceLookupPathTest, AKilledServerGivesErrorsNotHangs) {
  Start(GetParam().flags);
  LayerLayout l{{2048}, 64, DType::kFloat32};
  auto tables = testing::RandomTables(l, 6);
  ASSERT_TRUE(client_->Populate(7, l, testing::Spans(tables)).ok());
  const std::vector<int64_t> ids = testing::RandomIds(l, 8, 1, 4);
  DeviceBuffer out(ids.size() * l.row_bytes());
  const DeviceLookupRequest r = Request(7, ids, out);
  ASSERT_TRUE(client_->LookupToDevice(r).ok());
  ASSERT_TRUE(client_->DeviceLookupResult(r).ok());
  server_->Kill();
  EXPECT_FALSE(LookUpUntilItFails(r, 5).ok());
  client_.reset();  // unmaps everything without hanging
}

// CUDA IPC maps the GPU copy writable: only a caller with the write right
// gets it; a read-only caller reads the host tables instead.
TEST_F(DeviceLookupTest, OnlyWritersAreSharedTheGpuCopy) {
  if (!has_device_) GTEST_SKIP() << "no CUDA device: " << why_;
  const std::string tokens = ::testing::TempDir() + "/device_tokens";
  {
    std::FILE* f = std::fopen(tokens.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs(
        "read reader read-token-0123456789abcdef\n"
        "write loader write-token-0123456789abcdef\n",
        f);
    std::fclose(f);
  }
  auto server = testing::EngramdProcess::Start(
      {"--direct_reads", "--gpu=0", "--tokens_file=" + tokens});
  ASSERT_TRUE(server.ok()) << server.status();
  ClientOptions writer_options, reader_options;
  writer_options.token = "write-token-0123456789abcdef";
  reader_options.token = "read-token-0123456789abcdef";
  auto writer = Client::Connect((*server)->address(), writer_options);
  auto reader = Client::Connect((*server)->address(), reader_options);
  ASSERT_TRUE(writer.ok() && reader.ok());
  LayerLayout l{{1000, 1000}, 64, DType::kFloat32};
  auto tables = testing::RandomTables(l, 8);
  ASSERT_TRUE((*writer)->Populate(2, l, testing::Spans(tables)).ok());
  absl::StatusOr<DevicePath> w = (*writer)->PrepareDeviceLookups(2);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(*w, DevicePath::kGpuShared) << (*writer)->DevicePathNote(2);
  absl::StatusOr<DevicePath> r = (*reader)->PrepareDeviceLookups(2);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, DevicePath::kHostMapped);
  EXPECT_THAT((*reader)->DevicePathNote(2), HasSubstr("write right"));
}

INSTANTIATE_TEST_SUITE_P(
    Paths, DeviceLookupPathTest,
    ::testing::Values(PathCase{{"--direct_reads", "--gpu=0"},
                               DevicePath::kGpuShared},
                      PathCase{{"--direct_reads"}, DevicePath::kHostMapped},
                      PathCase{{}, DevicePath::kRpc}),
    [](const auto& info) {
      return std::string(info.param.path == DevicePath::kGpuShared ? "GpuShared"
                         : info.param.path == DevicePath::kHostMapped
                             ? "HostMapped"
                             : "Rpc");
    });

}  // namespace
}  // namespace engram
