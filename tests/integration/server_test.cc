// End-to-end tests against a real engramd process on a loopback port.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "engram/v1/engram.grpc.pb.h"
#include "tests/testing/engramd_process.h"
#include "tests/testing/random_layer.h"
#include "transport/ucx_engine.h"

namespace engram {
namespace {

using testing::EngramdProcess;
using ::testing::HasSubstr;

constexpr int64_t kMaxMessageBytes = 8 << 20;
constexpr int64_t kMaxLookupRows = 100000;
constexpr int64_t kMemoryLimit = 64 << 20;

class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::vector<std::string> flags = {
        "--metrics_listen=127.0.0.1:0", "--threads=3",
        absl::StrCat("--max_message_bytes=", kMaxMessageBytes),
        absl::StrCat("--max_lookup_rows=", kMaxLookupRows),
        absl::StrCat("--memory_limit_bytes=", kMemoryLimit)};
    // E.g. ENGRAM_TEST_SERVER_FLAGS="--gpu=0 --gpu_min_rows=1" runs the
    // suite against the GPU tier on a machine with a device.
    if (const char* extra = std::getenv("ENGRAM_TEST_SERVER_FLAGS")) {
      for (absl::string_view f :
           absl::StrSplit(extra, ' ', absl::SkipEmpty())) {
        flags.emplace_back(f);
      }
    }
    // ENGRAM_TEST_SHARDS=3 runs the same tests against a cluster, talking
    // to shard 0 (ENGRAM_TEST_REPLICATION sets R).
    if (const char* shards = std::getenv("ENGRAM_TEST_SHARDS")) {
      const char* r = std::getenv("ENGRAM_TEST_REPLICATION");
      auto cluster =
          testing::StartCluster(std::atoi(shards), r ? std::atoi(r) : 1, flags);
      ASSERT_TRUE(cluster.ok()) << cluster.status();
      server_ = (*cluster)[0].release();
      for (size_t i = 1; i < cluster->size(); ++i) {
        other_shards_.push_back((*cluster)[i].release());
      }
      return;
    }
    auto p = EngramdProcess::Start(flags);
    ASSERT_TRUE(p.ok()) << p.status();
    server_ = p->release();
  }
  static void TearDownTestSuite() {
    EXPECT_EQ(server_->Stop(), 0) << "graceful drain exits 0";
    delete server_;
    for (EngramdProcess* p : other_shards_) {
      EXPECT_EQ(p->Stop(), 0);
      delete p;
    }
    other_shards_.clear();
  }
  static bool clustered() { return !other_shards_.empty(); }

  void SetUp() override {
    ASSERT_TRUE(server_->Alive()) << server_->Log();
    ClientOptions options;
    options.max_message_bytes = 64 << 20;
    options.populate_chunk_bytes = 1000;  // many small chunks
    auto c = Client::Connect(server_->address(), options);
    ASSERT_TRUE(c.ok());
    client_ = *std::move(c);
    stub_ = v1::EngramStore::NewStub(grpc::CreateChannel(
        server_->address(), grpc::InsecureChannelCredentials()));
  }

  // Populates `layout` with random tables and keeps them for checking.
  void Populate(int64_t id, const LayerLayout& layout) {
    tables_[id] = testing::RandomTables(layout, static_cast<uint32_t>(id));
    layouts_[id] = layout;
    auto info = client_->Populate(id, layout, testing::Spans(tables_[id]));
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->layer_id, id);
    EXPECT_EQ(info->bytes, static_cast<int64_t>(layout.total_bytes()));
  }

  // Random lookups of layer `id` must be bit-identical to the tables.
  void ExpectLookupsExact(int64_t id, int64_t batch, int64_t length,
                          std::optional<DType> out = std::nullopt) {
    const LayerLayout& layout = layouts_[id];
    const DType out_dtype = out.value_or(layout.dtype);
    auto ids = testing::RandomIds(layout, batch, length, 17 * batch + length);
    auto expected =
        testing::ReferenceGather(layout, tables_[id], ids, out_dtype);
    std::vector<uint8_t> got(expected.size(), 0xCD);
    const int64_t shape[] = {batch, length, layout.num_heads()};
    absl::Status looked_up = client_->Lookup(id, ids, shape, got, out);
    ASSERT_TRUE(looked_up.ok()) << looked_up;
    EXPECT_EQ(got, expected) << "layer " << id;
  }

  // grpc status of a raw LookupRequest.
  grpc::Status RawLookup(const v1::LookupRequest& request) {
    grpc::ClientContext context;
    v1::LookupResponse response;
    return stub_->Lookup(&context, request, &response);
  }

  // Sends header + chunks as given; returns the stream's status.
  grpc::Status RawPopulate(const std::vector<v1::PopulateRequest>& messages) {
    grpc::ClientContext context;
    v1::PopulateResponse response;
    auto writer = stub_->Populate(&context, &response);
    for (const auto& m : messages) {
      if (!writer->Write(m)) break;
    }
    writer->WritesDone();
    return writer->Finish();
  }

  static v1::PopulateRequest Header(int64_t id, std::vector<int64_t> sizes,
                                    int64_t dim) {
    v1::PopulateRequest m;
    m.mutable_header()->set_layer_id(id);
    for (int64_t n : sizes)
      m.mutable_header()->mutable_config()->add_table_vocab_sizes(n);
    m.mutable_header()->mutable_config()->set_embedding_dim(dim);
    return m;
  }
  static v1::PopulateRequest Chunk(int head, int64_t offset, size_t bytes) {
    v1::PopulateRequest m;
    m.mutable_chunk()->set_head(head);
    m.mutable_chunk()->set_row_offset(offset);
    m.mutable_chunk()->set_data(std::string(bytes, '\x01'));
    return m;
  }

  void ExpectStatus(const grpc::Status& s, grpc::StatusCode code,
                    const std::string& fragment) {
    EXPECT_EQ(s.error_code(), code) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr(fragment));
  }
  void ExpectStatus(const absl::Status& s, absl::StatusCode code,
                    const std::string& fragment) {
    EXPECT_EQ(s.code(), code) << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(fragment));
  }

  // A layer that every bad-input test re-checks: the server keeps serving
  // what it had.
  void EnsureCanary() {
    if (layouts_.count(kCanary) == 0) Populate(kCanary, {{50, 70, 30}, 16});
  }
  void ExpectCanaryIntact() {
    ASSERT_TRUE(server_->Alive());
    ExpectLookupsExact(kCanary, 5, 2);
  }

  static constexpr int64_t kCanary = 1000;
  static EngramdProcess* server_;
  static std::vector<EngramdProcess*> other_shards_;
  static std::map<int64_t, std::vector<std::vector<uint8_t>>> tables_;
  static std::map<int64_t, LayerLayout> layouts_;
  std::unique_ptr<Client> client_;
  std::unique_ptr<v1::EngramStore::Stub> stub_;
};

EngramdProcess* ServerTest::server_ = nullptr;
std::vector<EngramdProcess*> ServerTest::other_shards_;
std::map<int64_t, std::vector<std::vector<uint8_t>>> ServerTest::tables_;
std::map<int64_t, LayerLayout> ServerTest::layouts_;

TEST_F(ServerTest, RandomMultiHeadLayersAreBitIdentical) {
  Populate(1, {{1000, 17, 333, 1, 4096}, 64, DType::kFloat32});
  Populate(2, {{77, 1234}, 40, DType::kBFloat16});
  Populate(3, {{500, 501, 502}, 7, DType::kFloat16});
  Populate(4, {{300, 10}, 132, DType::kUInt8});
  for (int64_t id : {1, 2, 3, 4}) {
    ExpectLookupsExact(id, 1, 1);
    ExpectLookupsExact(id, 16, 1);
    ExpectLookupsExact(id, 3, 700);  // spans the parallel gather split
  }
  ExpectLookupsExact(1, 4, 5, DType::kBFloat16);
  ExpectLookupsExact(1, 4, 5, DType::kFloat16);
  ExpectLookupsExact(2, 4, 5, DType::kFloat32);
  ExpectLookupsExact(3, 4, 5, DType::kBFloat16);

  auto list = client_->ListLayers();
  ASSERT_TRUE(list.ok());
  std::vector<int64_t> ids;
  for (const auto& d : *list) ids.push_back(d.layer_id);
  EXPECT_THAT(ids, ::testing::IsSupersetOf({1, 2, 3, 4}));
  auto d = client_->DescribeLayer(2);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->layout.table_vocab_sizes, (std::vector<int64_t>{77, 1234}));
  EXPECT_EQ(d->layout.dtype, DType::kBFloat16);
  EXPECT_THAT(d->store_keys,
              ::testing::ElementsAre("engram:l2:h0", "engram:l2:h1"));
}

TEST_F(ServerTest, AsyncLookupsPrefetchConcurrently) {
  Populate(5, {{4000, 3000}, 32});
  std::vector<std::vector<int64_t>> ids;
  std::vector<std::vector<uint8_t>> outs;
  std::vector<std::future<absl::Status>> futures;
  const int64_t shape[] = {8, 1, 2};
  for (int i = 0; i < 16; ++i) {
    ids.push_back(testing::RandomIds(layouts_[5], 8, 1, i));
    outs.emplace_back(8 * 2 * 32 * 4);
  }
  for (int i = 0; i < 16; ++i) {
    futures.push_back(client_->LookupAsync(5, ids[i], shape, outs[i]));
  }
  for (int i = 0; i < 16; ++i) {
    ASSERT_TRUE(futures[i].get().ok());
    EXPECT_EQ(outs[i], testing::ReferenceGather(layouts_[5], tables_[5], ids[i],
                                                DType::kFloat32));
  }
}

TEST_F(ServerTest, SeveralConnectionsServeSyncAndAsyncLookups) {
  Populate(8, {{600, 900}, 24, DType::kBFloat16});
  ClientOptions options;
  options.num_channels = 3;
  auto pooled = Client::Connect(server_->address(), options);
  ASSERT_TRUE(pooled.ok());
  const int64_t shape[] = {5, 2, 2};
  for (int i = 0; i < 7; ++i) {  // wraps around the three connections
    auto ids = testing::RandomIds(layouts_[8], 5, 2, 300 + i);
    auto expected = testing::ReferenceGather(layouts_[8], tables_[8], ids,
                                             DType::kBFloat16);
    std::vector<uint8_t> sync_out(expected.size()), async_out(expected.size());
    ASSERT_TRUE((*pooled)->Lookup(8, ids, shape, sync_out).ok());
    ASSERT_TRUE((*pooled)->LookupAsync(8, ids, shape, async_out).get().ok());
    EXPECT_EQ(sync_out, expected);
    EXPECT_EQ(async_out, expected);
  }
}

TEST_F(ServerTest, BadLookupsGetPreciseStatusesAndServerKeepsServing) {
  EnsureCanary();
  const int64_t id = kCanary;
  std::vector<int64_t> ids(6, 1);
  std::vector<uint8_t> out(6 * 16 * 4);
  const int64_t good[] = {2, 1, 3};
  const int64_t rank2[] = {2, 3};
  const int64_t wrong_h[] = {1, 3, 2};
  ExpectStatus(client_->Lookup(id, {}, good, out),
               absl::StatusCode::kInvalidArgument, "no row ids");
  ExpectStatus(client_->Lookup(id, ids, rank2, out),
               absl::StatusCode::kInvalidArgument, "rank 2");
  ExpectStatus(client_->Lookup(id, ids, wrong_h, out),
               absl::StatusCode::kInvalidArgument, "H = 2 must equal");
  ids[4] = -3;
  ExpectStatus(client_->Lookup(id, ids, good, out),
               absl::StatusCode::kInvalidArgument, "row_ids[1, 0, 1] = -3");
  ids[4] = 70;  // head 1 has 70 rows
  ExpectStatus(client_->Lookup(id, ids, good, out),
               absl::StatusCode::kInvalidArgument,
               "row_ids[1, 0, 1] = 70 is out of range: head 1 has 70 rows");
  ids[4] = 1;
  ExpectStatus(client_->Lookup(404, ids, good, out),
               absl::StatusCode::kNotFound, "layer 404 not found");
  std::vector<uint8_t> small(10);
  ExpectStatus(client_->Lookup(id, ids, good, small),
               absl::StatusCode::kInvalidArgument, "output buffer holds 10");
  ExpectStatus(client_->Lookup(id, ids, good, out, DType::kUInt8),
               absl::StatusCode::kInvalidArgument, "cannot be produced");

  v1::LookupRequest both;
  both.set_layer_id(id);
  for (int64_t d : good) both.add_shape(d);
  for (int64_t v : ids) both.add_row_ids_list(v);
  both.set_row_ids(std::string(reinterpret_cast<const char*>(ids.data()), 48));
  ExpectStatus(RawLookup(both), grpc::StatusCode::INVALID_ARGUMENT,
               "exactly one of row_ids");
  v1::LookupRequest ragged = both;
  ragged.clear_row_ids_list();
  ragged.set_row_ids(std::string(13, '\0'));
  ExpectStatus(RawLookup(ragged), grpc::StatusCode::INVALID_ARGUMENT,
               "not a multiple of 8");
  v1::LookupRequest bad_dtype = both;
  bad_dtype.clear_row_ids();
  bad_dtype.set_output_dtype(static_cast<v1::DType>(42));
  ExpectStatus(RawLookup(bad_dtype), grpc::StatusCode::INVALID_ARGUMENT,
               "output_dtype 42");
  ExpectCanaryIntact();
}

TEST_F(ServerTest, OversizeRequestsAreResourceExhausted) {
  EnsureCanary();
  // More rows than --max_lookup_rows.
  const int64_t rows = (kMaxLookupRows / 3 + 1) * 3;
  std::vector<int64_t> ids(rows, 0);
  std::vector<uint8_t> out(rows * 64);
  const int64_t shape[] = {rows / 3, 1, 3};
  ExpectStatus(client_->Lookup(kCanary, ids, shape, out),
               absl::StatusCode::kResourceExhausted, "--max_lookup_rows");
  // Within the row limit but the response would pass --max_message_bytes.
  LayerLayout wide{{10, 10, 10}, 4096};
  Populate(6, wide);
  std::vector<int64_t> wide_ids(3 * 200, 0);
  std::vector<uint8_t> wide_out(wide_ids.size() * 4096 * 4);
  const int64_t wide_shape[] = {200, 1, 3};
  ExpectStatus(client_->Lookup(6, wide_ids, wide_shape, wide_out),
               absl::StatusCode::kResourceExhausted, "--max_message_bytes");
  // A request message larger than the server accepts.
  std::vector<int64_t> huge(kMaxMessageBytes / 8 + 1000, 0);
  const int64_t huge_shape[] = {static_cast<int64_t>(huge.size()), 1, 1};
  EXPECT_EQ(client_->Lookup(kCanary, huge, huge_shape, out).code(),
            absl::StatusCode::kResourceExhausted);
  // A layer past the memory budget.
  // Past the budget even when split over up to 3 shards.
  LayerLayout big{{(clustered() ? 4 : 1) * kMemoryLimit / 64 + 1}, 16};
  std::vector<std::vector<uint8_t>> big_tables(
      1, std::vector<uint8_t>(big.total_bytes()));
  ExpectStatus(client_->Populate(7, big, testing::Spans(big_tables)).status(),
               absl::StatusCode::kResourceExhausted, "memory budget");
  EXPECT_EQ(client_->DescribeLayer(7).status().code(),
            absl::StatusCode::kNotFound);
  ExpectCanaryIntact();
}

TEST_F(ServerTest, BadPopulateStreamsLeaveNothingBehind) {
  EnsureCanary();
  const int64_t id = 20;
  const size_t row = 4 * 4;  // D = 4 float32
  ExpectStatus(RawPopulate({Chunk(0, 0, row)}),
               grpc::StatusCode::INVALID_ARGUMENT,
               "first Populate message must be a PopulateHeader");
  ExpectStatus(RawPopulate({Header(id, {3, 2}, 4), Chunk(0, 0, row + 3)}),
               grpc::StatusCode::INVALID_ARGUMENT, "not a whole number");
  ExpectStatus(RawPopulate({Header(id, {3, 2}, 4), Chunk(0, 0, 2 * row),
                            Chunk(0, 1, 2 * row)}),
               grpc::StatusCode::INVALID_ARGUMENT, "row 1 already arrived");
  ExpectStatus(RawPopulate({Header(id, {3, 2}, 4), Chunk(0, 0, 3 * row),
                            Chunk(1, 0, row)}),
               grpc::StatusCode::INVALID_ARGUMENT,
               // A shard counts only the rows it holds.
               clustered()
                   ? "first missing row 1"
                   : "head 1 missing 1 of 2 rows (first missing row 1)");
  ExpectStatus(RawPopulate({Header(id, {3, 2}, 4), Chunk(2, 0, row)}),
               grpc::StatusCode::INVALID_ARGUMENT,
               "chunk head 2 is out of range");
  ExpectStatus(RawPopulate({Header(id, {3, 0}, 4)}),
               grpc::StatusCode::INVALID_ARGUMENT, "table_vocab_sizes[1] = 0");
  ExpectStatus(RawPopulate({Header(id, {}, 4)}),
               grpc::StatusCode::INVALID_ARGUMENT, "at least one head");
  ExpectStatus(RawPopulate({Header(id, {3}, 0)}),
               grpc::StatusCode::INVALID_ARGUMENT, "embedding_dim = 0");
  ExpectStatus(RawPopulate({Header(id, {3}, 4), Header(id, {3}, 4)}),
               grpc::StatusCode::INVALID_ARGUMENT, "second PopulateHeader");
  ExpectStatus(RawPopulate({}), grpc::StatusCode::INVALID_ARGUMENT,
               "without a PopulateHeader");
  ExpectStatus(RawPopulate({v1::PopulateRequest()}),
               grpc::StatusCode::INVALID_ARGUMENT, "sets neither");
  EXPECT_EQ(client_->DescribeLayer(id).status().code(),
            absl::StatusCode::kNotFound);
  // A complete stream for the same id now succeeds: nothing was left behind.
  ASSERT_TRUE(RawPopulate({Header(id, {3, 2}, 4), Chunk(1, 0, 2 * row),
                           Chunk(0, 0, 3 * row)})
                  .ok());
  ExpectStatus(RawPopulate({Header(id, {3, 2}, 4), Chunk(1, 0, 2 * row),
                            Chunk(0, 0, 3 * row)}),
               grpc::StatusCode::ALREADY_EXISTS, "create-only");
  ExpectCanaryIntact();
}

// Both layers of a step in one call (on a cluster: shard 0 coordinates
// every lookup), fused ids included; a bad lookup fails the whole call and
// names itself.
TEST_F(ServerTest, LookupManyAnswersEveryLayerInOneCall) {
  EnsureCanary();
  Populate(70, {{40, 70, 10}, 8, DType::kFloat32});
  Populate(71, {{33, 5}, 16, DType::kBFloat16});
  auto ids60 = testing::RandomIds(layouts_[70], 3, 2, 1);
  auto ids61 = testing::RandomIds(layouts_[71], 1, 4, 2);
  auto want60 = testing::ReferenceGather(layouts_[70], tables_[70], ids60,
                                         DType::kBFloat16);
  auto want61 = testing::ReferenceGather(layouts_[71], tables_[71], ids61,
                                         DType::kBFloat16);
  // Layer 71 asked with fused ids (head 1 starts at 33).
  std::vector<int64_t> fused61 = ids61;
  for (size_t i = 1; i < fused61.size(); i += 2) fused61[i] += 33;
  std::vector<uint8_t> got60(want60.size()), got61(want61.size());
  const int64_t shape60[] = {3, 2, 3}, shape61[] = {1, 4, 2};
  LookupSpec specs[2];
  specs[0] = {70, ids60, shape60, got60, {DType::kBFloat16}};
  specs[1] = {71, fused61, shape61, got61, {}};
  specs[1].options.id_form = IdForm::kFused;
  ASSERT_TRUE(client_->LookupMany(specs).ok());
  EXPECT_EQ(got60, want60);
  EXPECT_EQ(got61, want61);

  fused61[0] = 33;  // column 0 is head 0: [0, 33)
  ExpectStatus(client_->LookupMany(specs), absl::StatusCode::kInvalidArgument,
               "lookups[1]: row_ids[0, 0, 0] = 33 is out of range");
  specs[1].layer_id = 999;
  ExpectStatus(client_->LookupMany(specs), absl::StatusCode::kNotFound,
               "lookups[1]: layer 999 not found");

  grpc::ClientContext empty_context;
  v1::LookupManyRequest many;
  v1::LookupManyResponse response;
  ExpectStatus(stub_->LookupMany(&empty_context, many, &response),
               grpc::StatusCode::INVALID_ARGUMENT, "takes 1 to 256 lookups");
  v1::LookupRequest* values = many.add_lookups();
  values->set_layer_id(70);
  values->add_row_ids_list(0);
  values->add_row_ids_list(0);
  values->add_row_ids_list(0);
  values->set_as_values(true);
  grpc::ClientContext values_context;
  ExpectStatus(stub_->LookupMany(&values_context, many, &response),
               grpc::StatusCode::INVALID_ARGUMENT,
               "lookups[0]: as_values is for Lookup");
  // A well-formed protobuf request decodes with the generated classes too.
  values->set_as_values(false);
  grpc::ClientContext rows_context;
  ASSERT_TRUE(stub_->LookupMany(&rows_context, many, &response).ok());
  ASSERT_EQ(response.results_size(), 1);
  EXPECT_THAT(response.results(0).shape(), ::testing::ElementsAre(1, 1, 3, 8));
  EXPECT_EQ(response.results(0).data().size(), 3u * 8 * 4);
  ExpectCanaryIntact();
}

TEST_F(ServerTest, RemoveHidesLayerAndFreesTheId) {
  Populate(30, {{100, 200}, 8});
  ExpectLookupsExact(30, 2, 2);
  auto removed = client_->Remove(30);
  ASSERT_TRUE(removed.ok());
  EXPECT_EQ(*removed, 2);
  std::vector<int64_t> ids = {0, 0};
  std::vector<uint8_t> out(2 * 8 * 4);
  const int64_t shape[] = {1, 1, 2};
  ExpectStatus(client_->Lookup(30, ids, shape, out),
               absl::StatusCode::kNotFound, "layer 30 not found");
  ExpectStatus(client_->Remove(30).status(), absl::StatusCode::kNotFound, "30");
  Populate(30, {{5}, 3});  // the id can be reused with another layout
  ExpectLookupsExact(30, 3, 1);
}

TEST_F(ServerTest, CancelledAndForceRemovedPopulatesCommitNothing) {
  // Client cancels mid-stream.
  {
    grpc::ClientContext context;
    v1::PopulateResponse response;
    auto writer = stub_->Populate(&context, &response);
    ASSERT_TRUE(writer->Write(Header(40, {100}, 4)));
    ASSERT_TRUE(writer->Write(Chunk(0, 0, 16 * 10)));
    context.TryCancel();
    EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  // A populate in progress: plain Remove refuses, forced Remove aborts it.
  grpc::ClientContext context;
  v1::PopulateResponse response;
  auto writer = stub_->Populate(&context, &response);
  ASSERT_TRUE(writer->Write(Header(41, {100}, 4)));
  ASSERT_TRUE(writer->Write(Chunk(0, 0, 16 * 10)));
  absl::Status remove;
  for (int i = 0; i < 100; ++i) {  // the header may still be in flight
    remove = client_->Remove(41).status();
    if (remove.code() != absl::StatusCode::kNotFound) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ExpectStatus(remove, absl::StatusCode::kFailedPrecondition, "force");
  auto forced = client_->Remove(41, /*force=*/true);
  ASSERT_TRUE(forced.ok()) << forced.status();
  EXPECT_EQ(*forced, 0);
  writer->Write(Chunk(0, 10, 16 * 90));
  writer->WritesDone();
  grpc::Status s = writer->Finish();
  EXPECT_TRUE(s.error_code() == grpc::StatusCode::ABORTED ||
              s.error_code() == grpc::StatusCode::CANCELLED)
      << s.error_message();
  // Neither layer exists, and both ids can be populated again.
  for (int64_t id : {40, 41}) {
    EXPECT_EQ(client_->DescribeLayer(id).status().code(),
              absl::StatusCode::kNotFound);
    Populate(id, {{100}, 4});
  }
}

TEST_F(ServerTest, ConcurrentLookupsDuringRemoveAndRepopulate) {
  Populate(50, {{2000, 3000}, 16});
  const auto tables = tables_[50];
  const auto layout = layouts_[50];
  std::atomic<bool> stop{false};
  std::atomic<int> wrong{0}, ok{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t) {
    readers.emplace_back([&, t] {
      int i = 0;
      while (!stop) {
        auto ids = testing::RandomIds(layout, 4, 8, t * 100000 + ++i);
        std::vector<uint8_t> out(ids.size() * 64);
        const int64_t shape[] = {4, 8, 2};
        absl::Status s = client_->Lookup(50, ids, shape, out);
        if (s.ok()) {
          // Every repopulate uses the same tables, so any answer must match.
          if (out !=
              testing::ReferenceGather(layout, tables, ids, DType::kFloat32))
            ++wrong;
          ++ok;
        } else if (s.code() != absl::StatusCode::kNotFound) {
          ++wrong;
        }
      }
    });
  }
  for (int round = 0; round < 10; ++round) {
    ASSERT_TRUE(client_->Remove(50).ok());
    ASSERT_TRUE(client_->Populate(50, layout, testing::Spans(tables)).ok());
  }
  stop = true;
  for (auto& r : readers) r.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(ok.load(), 0);
}

TEST_F(ServerTest, PopulateHasItsOwnDeadline) {
  ClientOptions options;
  options.timeout = absl::Seconds(-1);  // every unary call is already late
  options.populate_timeout = absl::Seconds(60);
  auto client = Client::Connect(server_->address(), options);
  ASSERT_TRUE(client.ok());
  LayerLayout layout{{500, 300}, 64};
  auto tables = testing::RandomTables(layout, 60);
  EXPECT_TRUE((*client)->Populate(60, layout, testing::Spans(tables)).ok())
      << "a populate is not bound by the unary timeout";
  std::vector<int64_t> ids = {1, 2};
  std::vector<uint8_t> out(2 * 256);
  const int64_t shape[] = {1, 1, 2};
  EXPECT_EQ((*client)->Lookup(60, ids, shape, out).code(),
            absl::StatusCode::kDeadlineExceeded);
  options.populate_timeout = absl::Seconds(-1);
  auto strict = Client::Connect(server_->address(), options);
  EXPECT_EQ(
      (*strict)->Populate(61, layout, testing::Spans(tables)).status().code(),
      absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(client_->DescribeLayer(61).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(ServerTest, HealthIsServing) {
  EXPECT_TRUE(client_->CheckHealth().ok());
}

TEST_F(ServerTest, MetricsScrapeShowsCountersMoving) {
  EnsureCanary();
  auto before = testing::HttpGet(server_->metrics_port(), "/metrics");
  ASSERT_TRUE(before.ok()) << before.status();
  ExpectLookupsExact(kCanary, 3, 1);
  std::vector<uint8_t> out(16 * 4 * 3);
  const int64_t shape[] = {1, 1, 3};
  std::vector<int64_t> bad = {0, 0, 9999};
  EXPECT_FALSE(client_->Lookup(kCanary, bad, shape, out).ok());
  auto after = testing::HttpGet(server_->metrics_port(), "/metrics");
  ASSERT_TRUE(after.ok());
  // A series appears with its first event: absent counts as 0.
  auto value = [](const std::string& text, const std::string& series) {
    size_t p = text.find("\n" + series + " ");
    if (p == std::string::npos) return 0.0;
    return std::stod(text.substr(p + series.size() + 2));
  };
  const std::string ok_series =
      "engram_requests_total{code=\"OK\",rpc=\"Lookup\"}";
  const std::string bad_series =
      "engram_errors_total{code=\"INVALID_ARGUMENT\",rpc=\"Lookup\"}";
  EXPECT_EQ(value(*after, ok_series), value(*before, ok_series) + 1);
  EXPECT_EQ(value(*after, bad_series), value(*before, bad_series) + 1);
  EXPECT_GE(value(*after, "engram_lookup_rows_total"),
            value(*before, "engram_lookup_rows_total") + 9);
  EXPECT_GT(value(*after, "engram_lookup_latency_seconds_count"), 0);
  EXPECT_GT(value(*after, "engram_layers"), 0);
  EXPECT_GT(value(*after, "engram_memory_used_bytes"), 0);
  EXPECT_EQ(value(*after, "engram_memory_limit_bytes"), kMemoryLimit);
  if (clustered()) {  // a shard holds its share of the layer
    EXPECT_GT(value(*after, "engram_peers_up"), 0);
    EXPECT_LT(value(*after, "engram_layer_bytes{layer=\"1000\"}"), 9600);
  } else {
    EXPECT_THAT(*after, HasSubstr("engram_layer_bytes{layer=\"1000\"} 9600"));
  }
}

TEST(ServerProcessTest, DemoLayerServesAndSigtermDrainsWithExitZero) {
  auto p = EngramdProcess::Start({"--demo"});
  ASSERT_TRUE(p.ok()) << p.status();
  auto client = Client::Connect((*p)->address());
  ASSERT_TRUE(client.ok());
  std::vector<int64_t> ids = {5, 6, 7, 8};
  std::vector<float> out(4 * 8);
  const int64_t shape[] = {1, 1, 4};
  ASSERT_TRUE(
      (*client)
          ->Lookup(0, ids, shape,
                   {reinterpret_cast<uint8_t*>(out.data()), out.size() * 4})
          .ok());
  EXPECT_EQ(out[0], 5.0f);
  EXPECT_EQ(out[8 + 3], 100006.375f);  // head 1, row 6, d = 3
  EXPECT_EQ(out[24 + 7], 300008.875f);
  EXPECT_EQ((*p)->Stop(), 0);
  EXPECT_THAT((*p)->Log(), HasSubstr("draining"));
}

// With a device the GPU tier serves the lookup; without one engramd says so
// and the CPU serves it. Either way the rows are exact.
TEST(ServerProcessTest, GpuFlagServesFromTheGpuOrFallsBackToTheCpu) {
  auto p = EngramdProcess::Start(
      {"--gpu=0", "--gpu_min_rows=1", "--metrics_listen=127.0.0.1:0"});
  ASSERT_TRUE(p.ok()) << p.status();
  auto client = Client::Connect((*p)->address());
  ASSERT_TRUE(client.ok());
  LayerLayout layout{{300, 200}, 32, DType::kBFloat16};
  auto tables = testing::RandomTables(layout, 8);
  ASSERT_TRUE((*client)->Populate(2, layout, testing::Spans(tables)).ok());
  auto ids = testing::RandomIds(layout, 40, 3, 9);
  const int64_t shape[] = {40, 3, 2};
  for (DType out : {DType::kBFloat16, DType::kFloat32}) {
    auto expected = testing::ReferenceGather(layout, tables, ids, out);
    std::vector<uint8_t> got(expected.size(), 0xEE);
    ASSERT_TRUE((*client)->Lookup(2, ids, shape, got, out).ok());
    EXPECT_EQ(got, expected);
  }
  auto metrics = testing::HttpGet((*p)->metrics_port(), "/metrics");
  ASSERT_TRUE(metrics.ok());
  const bool gpu =
      metrics->find("\nengram_gpu_available 1") != std::string::npos;
  if (gpu) {
    EXPECT_THAT(*metrics,
                HasSubstr("engram_lookups_by_tier_total{tier=\"gpu\"} 2"));
    EXPECT_THAT(*metrics, HasSubstr("engram_gpu_fallbacks_total 0"));
    EXPECT_THAT(*metrics,
                HasSubstr("engram_layer_gpu_resident{layer=\"2\"} 1"));
  } else {
    EXPECT_THAT(*metrics, HasSubstr("engram_gpu_available 0"));
    EXPECT_THAT(*metrics,
                HasSubstr("engram_lookups_by_tier_total{tier=\"cpu\"} 2"));
    EXPECT_THAT((*p)->Log(), HasSubstr("GPU tier not available"));
  }
}

// A single node with --direct_reads: a client on this host populates through
// the node and then reads rows straight from its memory — with the server
// frozen (SIGSTOP) lookups still return exact rows — and sees new rows after
// Remove + Populate of the same id. A node without the flag serves the same
// client over RPCs.
TEST(ServerProcessTest, DirectReadsFromASingleNode) {
  for (bool exported : {true, false}) {
    SCOPED_TRACE(exported ? "--direct_reads" : "no exports");
    std::vector<std::string> flags;
    if (exported) flags.push_back("--direct_reads");
    auto p = EngramdProcess::Start(flags);
    if (!p.ok() && exported && !transport::UcxCompiledIn()) {
      GTEST_SKIP() << "built without UCX";
    }
    ASSERT_TRUE(p.ok()) << p.status();
    ClientOptions options;
    options.direct_reads = true;
    options.timeout = absl::Seconds(3);
    auto direct = Client::Connect((*p)->address(), options);
    ASSERT_TRUE(direct.ok()) << direct.status();
    LayerLayout layout{{2000, 7, 3000}, 24, DType::kBFloat16};
    auto tables = testing::RandomTables(layout, 21);
    ASSERT_TRUE((*direct)->Populate(6, layout, testing::Spans(tables)).ok());
    const int64_t shape[] = {5, 4, 3};
    auto check = [&](uint32_t seed) {
      auto ids = testing::RandomIds(layout, 5, 4, seed);
      auto want =
          testing::ReferenceGather(layout, tables, ids, DType::kFloat32);
      std::vector<uint8_t> got(want.size(), 0xEE);
      absl::Status s = (*direct)->Lookup(6, ids, shape, got, DType::kFloat32);
      if (s.ok() && got != want) return absl::DataLossError("rows differ");
      return s;
    };
    for (uint32_t i = 0; i < 10; ++i) {
      ASSERT_TRUE(check(i).ok()) << i;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    // Direct reads need UCX's shared-memory transports (a mapping).
    const char* tls = std::getenv("UCX_TLS");
    const bool mappable = tls == nullptr || absl::StrContains(tls, "sm") ||
                          absl::StrContains(tls, "sysv") ||
                          absl::StrContains(tls, "posix") ||
                          absl::StrContains(tls, "all");
    if (exported && mappable) {
      ASSERT_EQ(kill((*p)->pid(), SIGSTOP), 0);
      for (uint32_t i = 100; i < 110; ++i) EXPECT_TRUE(check(i).ok()) << i;
      ASSERT_EQ(kill((*p)->pid(), SIGCONT), 0);
    }
    auto plain = Client::Connect((*p)->address());
    ASSERT_TRUE((*plain)->Remove(6).ok());
    tables = testing::RandomTables(layout, 22);
    ASSERT_TRUE((*plain)->Populate(6, layout, testing::Spans(tables)).ok());
    for (uint32_t i = 200; i < 210; ++i) {
      absl::Status s = check(i);
      EXPECT_TRUE(s.ok()) << i << ": " << s;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    plain->reset();
    if (exported && mappable) {
      // A dead server's memory stays mapped here, but its heartbeat stops:
      // within ~2 s direct reads are refused and the lookup fails over RPC
      // instead of returning rows a restarted server may have replaced.
      (*p)->Kill();
      const auto deadline =
          std::chrono::steady_clock::now() + std::chrono::seconds(10);
      uint32_t seed = 300;
      while (check(seed).ok() && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        ++seed;
      }
      EXPECT_FALSE(check(seed).ok()) << "read a dead server's memory";
    } else {
      EXPECT_EQ((*p)->Stop(), 0) << (*p)->Log();
    }
    direct->reset();
  }
}

TEST(ServerProcessTest, BadFlagsExitNonZeroWithOneLine) {
  const std::string engramd = testing::EngramdPath();
  std::string out;
  EXPECT_EQ(testing::RunCommand(engramd + " --threads=abc", &out), 2);
  EXPECT_THAT(out, HasSubstr("bad value 'abc' for --threads"));
  EXPECT_EQ(testing::RunCommand(engramd + " --threads=-2", &out), 2);
  EXPECT_THAT(out, HasSubstr("bad value -2 for --threads: must be at least 0"));
  EXPECT_EQ(testing::RunCommand(engramd + " --nope", &out), 2);
  EXPECT_THAT(out, HasSubstr("unknown flag --nope"));
  EXPECT_EQ(testing::RunCommand(engramd + " --listen", &out), 2);
  EXPECT_THAT(out, HasSubstr("flag --listen needs a value"));
  EXPECT_EQ(testing::RunCommand(engramd + " positional", &out), 2);
  EXPECT_THAT(out, HasSubstr("unexpected argument 'positional'"));
  EXPECT_EQ(testing::RunCommand(engramd + " --nodemo=true", &out), 2);
  EXPECT_THAT(out, HasSubstr("--nodemo takes no value"));
  EXPECT_EQ(testing::RunCommand(engramd + " --help", &out), 0);
  for (const char* flag :
       {"--listen (default: \"0.0.0.0:50051\")", "--metrics_listen",
        "--memory_limit_bytes", "--threads", "--max_message_bytes", "--demo",
        "--verify_data_dir (default: \"true\")", "--port_file"}) {
    EXPECT_THAT(out, HasSubstr(flag));
  }
}

// Every form a flag can take reaches the server: the start log echoes the
// flags given values other than their defaults.
TEST(ServerProcessTest, EveryFlagFormReachesTheConfigAndTheStartLog) {
  auto p = testing::EngramdProcess::Start({"--threads", "3", "--nopin_memory",
                                           "--demo", "--max_lookup_rows=1000",
                                           "--verify_data_dir=false"});
  ASSERT_TRUE(p.ok()) << p.status();
  const std::string log = (*p)->Log();
  EXPECT_THAT(log, HasSubstr(" threads=3 "));
  for (const char* echoed : {"demo=true", "max_lookup_rows=1000",
                             "pin_memory=false", "verify_data_dir=false"}) {
    EXPECT_THAT(log, HasSubstr(echoed));
  }
  EXPECT_EQ((*p)->Stop(), 0);
}

}  // namespace
}  // namespace engram
