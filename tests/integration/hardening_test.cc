// Inputs and faults that once crashed, wedged or bloated a real engramd
// process (issue 9): each case failed on the code before its fix.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "client/client.h"
#include "engram/internal/v1/peer.grpc.pb.h"
#include "engram/v1/engram.grpc.pb.h"
#include "tests/testing/engramd_process.h"
#include "tests/testing/random_layer.h"
#include "tests/testing/raw_http2.h"

namespace engram {
namespace {

using testing::ConnectTcp;
using testing::EngramdProcess;
using ::testing::HasSubstr;
using testing::NonReadingHttp2Client;

std::chrono::system_clock::time_point In(double seconds) {
  return std::chrono::system_clock::now() +
         std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

internal::v1::StageRequest StageHeader(const std::string& txn, int64_t layer,
                                       std::vector<int64_t> sizes, int dim) {
  internal::v1::StageRequest m;
  m.mutable_header()->set_txn_id(txn);
  m.mutable_header()->set_layer_id(layer);
  for (int64_t n : sizes)
    m.mutable_header()->mutable_config()->add_table_vocab_sizes(n);
  m.mutable_header()->mutable_config()->set_embedding_dim(dim);
  return m;
}

// A Populate header for a float32 layer of one head of `rows` rows.
v1::PopulateRequest PopulateHeader(int64_t layer, int64_t rows, int dim) {
  v1::PopulateRequest m;
  m.mutable_header()->set_layer_id(layer);
  m.mutable_header()->mutable_config()->add_table_vocab_sizes(rows);
  m.mutable_header()->mutable_config()->set_embedding_dim(dim);
  return m;
}

internal::v1::StageRequest StageChunk(int head, int64_t offset, size_t bytes) {
  internal::v1::StageRequest m;
  m.mutable_chunk()->set_head(head);
  m.mutable_chunk()->set_row_offset(offset);
  m.mutable_chunk()->set_data(std::string(bytes, '\x02'));
  return m;
}

// A /proc/PID/status field in bytes (VmRSS, VmLck, Threads is a count).
int64_t ProcStatus(pid_t pid, const std::string& field) {
  std::string out;
  testing::RunCommand("awk '/^" + field + ":/{print $2}' /proc/" +
                          std::to_string(pid) + "/status",
                      &out);
  return std::atoll(out.c_str()) * (field == "Threads" ? 1 : 1024);
}
int64_t RssBytes(pid_t pid) { return ProcStatus(pid, "VmRSS"); }

class HardeningTest : public ::testing::Test {
 protected:
  void Start(std::vector<std::string> flags = {}) {
    auto p = EngramdProcess::Start(flags);
    ASSERT_TRUE(p.ok()) << p.status();
    server_ = *std::move(p);
    channel_ = grpc::CreateChannel(server_->address(),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::EngramStore::NewStub(channel_);
    peer_ = internal::v1::EngramPeer::NewStub(channel_);
    auto c = Client::Connect(server_->address());
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = *std::move(c);
  }
  void TearDown() override {
    // Idle connections would hold the server's drain (--drain_seconds).
    client_.reset();
    stub_.reset();
    peer_.reset();
    channel_.reset();
    if (server_ != nullptr && server_->Alive()) {
      EXPECT_EQ(server_->Stop(), 0) << server_->Log();
    }
  }

  // The peer Abort of `txn` (the coordinator's phase-two abort).
  grpc::Status AbortTxn(const std::string& txn) {
    grpc::ClientContext ctx;
    internal::v1::TxnRequest request;
    request.set_txn_id(txn);
    internal::v1::TxnResponse ignored;
    return peer_->Abort(&ctx, request, &ignored);
  }

  // A complete Stage stream (every row of a 2-head layer), not committed.
  grpc::Status StageWholeLayer(const std::string& txn, int64_t layer) {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(10));
    internal::v1::StageResponse response;
    auto writer = peer_->Stage(&ctx, &response);
    writer->Write(StageHeader(txn, layer, {10, 20}, 4));
    writer->Write(StageChunk(0, 0, 10 * 16));
    writer->Write(StageChunk(1, 0, 20 * 16));
    writer->WritesDone();
    return writer->Finish();
  }

  // Polls (up to 10 s) until an unforced Remove of `layer` is refused because
  // a populate holds it; such a Remove never changes anything.
  bool WaitUntilBeingPopulated(int64_t layer) {
    const auto give_up =
        std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < give_up) {
      if (RemoveRpc(layer, /*force=*/false).error_code() ==
          grpc::StatusCode::FAILED_PRECONDITION) {
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }

  grpc::Status RemoveRpc(int64_t layer, bool force) {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(10));
    v1::RemoveRequest request;
    request.set_layer_id(layer);
    request.set_force(force);
    v1::RemoveResponse response;
    return stub_->Remove(&ctx, request, &response);
  }

  // A layer the server must keep serving through every bad input.
  void PopulateCanary() {
    canary_layout_ = {{300, 200}, 16, DType::kFloat32};
    canary_ = testing::RandomTables(canary_layout_, 7);
    auto info =
        client_->Populate(kCanary, canary_layout_, testing::Spans(canary_));
    ASSERT_TRUE(info.ok()) << info.status();
  }
  void ExpectCanaryIntact() {
    ASSERT_TRUE(server_->Alive()) << server_->Log();
    auto ids = testing::RandomIds(canary_layout_, 8, 2, 11);
    auto want =
        testing::ReferenceGather(canary_layout_, canary_, ids, DType::kFloat32);
    std::vector<uint8_t> got(want.size());
    const int64_t shape[] = {8, 2, 2};
    ASSERT_TRUE(client_->Lookup(kCanary, ids, shape, got).ok());
    EXPECT_EQ(got, want);
  }

  static constexpr int64_t kCanary = 900;
  std::unique_ptr<EngramdProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::EngramStore::Stub> stub_;
  std::unique_ptr<internal::v1::EngramPeer::Stub> peer_;
  std::unique_ptr<Client> client_;
  LayerLayout canary_layout_;
  std::vector<std::vector<uint8_t>> canary_;
};

// Finding 1: a staged, uncommitted layer force-removed through the public
// API ran an abort hook on the finished Stage call (SIGABRT/SIGSEGV).
TEST_F(HardeningTest, ForcedRemoveOfAStagedLayerDoesNotCrash) {
  Start();
  PopulateCanary();
  for (int round = 0; round < 4; ++round) {
    ASSERT_TRUE(StageWholeLayer("txn-crash-" + std::to_string(round), 5).ok());
    grpc::Status removed = RemoveRpc(5, /*force=*/true);
    EXPECT_TRUE(removed.ok()) << removed.error_message();
    // Give a delayed crash its chance.
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ASSERT_TRUE(server_->Alive()) << server_->Log();
  }
  // The id is free again: a normal populate commits.
  LayerLayout l{{10, 20}, 4, DType::kFloat32};
  auto tables = testing::RandomTables(l, 3);
  EXPECT_TRUE(client_->Populate(5, l, testing::Spans(tables)).ok());
  ExpectCanaryIntact();
}

// Finding 1: a forced Remove while the Stage stream is still open ends that
// stream with ABORTED and the server lives.
TEST_F(HardeningTest, ForcedRemoveEndsAnOpenStageStreamWithAborted) {
  Start();
  grpc::ClientContext ctx;
  ctx.set_deadline(In(10));
  internal::v1::StageResponse response;
  auto writer = peer_->Stage(&ctx, &response);
  ASSERT_TRUE(writer->Write(StageHeader("txn-open", 6, {10, 20}, 4)));
  ASSERT_TRUE(WaitUntilBeingPopulated(6));
  EXPECT_TRUE(RemoveRpc(6, true).ok());
  grpc::Status st = writer->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ABORTED) << st.error_message();
  EXPECT_THAT(st.error_message(), HasSubstr("forced Remove"));
  ASSERT_TRUE(server_->Alive()) << server_->Log();
}

// A coordinator that gives up cancels its Stage streams and sends Abort, and
// the Abort can arrive before the shard has seen the cancellation. The Abort
// must free the layer id at once: a populate right after it was refused with
// ALREADY_EXISTS "being populated by another stream" (a flaky cluster test).
TEST_F(HardeningTest, AbortEndsAStillOpenStageStreamAndFreesTheLayer) {
  Start();
  grpc::ClientContext ctx;
  ctx.set_deadline(In(10));
  internal::v1::StageResponse response;
  auto writer = peer_->Stage(&ctx, &response);
  ASSERT_TRUE(writer->Write(StageHeader("txn-open-abort", 20, {10, 20}, 4)));
  // Write only queues the header: wait until the server has claimed layer 20
  // (a plain Remove, which changes nothing, says "still being populated") so
  // that the second stream below cannot overtake it.
  ASSERT_TRUE(WaitUntilBeingPopulated(20));
  grpc::Status busy = StageWholeLayer("txn-other", 20);
  ASSERT_EQ(busy.error_code(), grpc::StatusCode::ALREADY_EXISTS)
      << busy.error_message();
  ASSERT_TRUE(AbortTxn("txn-open-abort").ok());
  // Nothing of the aborted stage holds layer 20 any more.
  LayerLayout l{{10, 20}, 4, DType::kFloat32};
  auto tables = testing::RandomTables(l, 4);
  EXPECT_TRUE(client_->Populate(20, l, testing::Spans(tables)).ok());
  grpc::Status st = writer->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ABORTED) << st.error_message();
  // An aborted transaction id cannot be staged again (a late header of the
  // cancelled stream must not claim the layer after its Abort).
  grpc::Status late = StageWholeLayer("txn-open-abort", 21);
  EXPECT_EQ(late.error_code(), grpc::StatusCode::ABORTED)
      << late.error_message();
  ASSERT_TRUE(server_->Alive()) << server_->Log();
}

// The Abort can also arrive while the shard is still setting up the stage
// its header asked for (between claiming the transaction and recording its
// layer claim). The Abort must not answer until the layer id is free again:
// it answered at once, and the coordinator's next populate of the id was
// refused as "being populated by another stream" (a flaky cluster test over
// UCX/TCP, where setting up a stage is slow). A big sparse layer (8 GiB,
// never touched) makes the set-up take long enough to land in.
TEST_F(HardeningTest, AbortDuringAStageSetUpAnswersOnlyOnceTheLayerIsFree) {
  Start({"--memory_limit_bytes=" + std::to_string(int64_t{64} << 30)});
  int refused = 0;
  for (int round = 0; round < 20; ++round) {
    const std::string txn = "txn-setup-" + std::to_string(round);
    grpc::ClientContext ctx;
    ctx.set_deadline(In(10));
    internal::v1::StageResponse response;
    auto writer = peer_->Stage(&ctx, &response);
    ASSERT_TRUE(writer->Write(
        StageHeader(txn, 40, {int64_t{1} << 32, int64_t{1} << 32}, 1)));
    std::this_thread::sleep_for(std::chrono::milliseconds(round % 5));
    ASSERT_TRUE(AbortTxn(txn).ok());
    grpc::Status next = StageWholeLayer(txn + "-next", 40);
    if (next.error_code() == grpc::StatusCode::ALREADY_EXISTS) ++refused;
    EXPECT_TRUE(next.ok()) << "round " << round << ": " << next.error_message();
    ASSERT_TRUE(AbortTxn(txn + "-next").ok());
    ctx.TryCancel();
    (void)writer->Finish();
  }
  EXPECT_EQ(refused, 0);
  ASSERT_TRUE(server_->Alive()) << server_->Log();
}

// Finding 1: a second Stage with a txn id in use is refused and does not
// leave the first layer id stuck "being populated".
TEST_F(HardeningTest, ReusedTxnIdIsRefusedAndLeavesNothingStuck) {
  Start();
  ASSERT_TRUE(StageWholeLayer("txn-dup", 7).ok());
  grpc::Status second = StageWholeLayer("txn-dup", 8);
  EXPECT_EQ(second.error_code(), grpc::StatusCode::ALREADY_EXISTS)
      << second.error_message();
  EXPECT_THAT(second.error_message(), HasSubstr("txn-dup"));
  // Abort the first transaction: both ids are free, nothing stuck.
  ASSERT_TRUE(AbortTxn("txn-dup").ok());
  LayerLayout l{{10, 20}, 4, DType::kFloat32};
  auto tables = testing::RandomTables(l, 3);
  EXPECT_TRUE(client_->Populate(7, l, testing::Spans(tables)).ok());
  EXPECT_TRUE(client_->Populate(8, l, testing::Spans(tables)).ok());
  // An empty or oversized txn id is refused outright.
  grpc::Status empty = StageWholeLayer("", 9);
  EXPECT_EQ(empty.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  grpc::Status huge = StageWholeLayer(std::string(4096, 'x'), 9);
  EXPECT_EQ(huge.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_LT(huge.error_message().size(), 512u);
}

// Finding 7: the populating client of a force-removed layer gets ABORTED,
// as documented, not CANCELLED.
TEST_F(HardeningTest, ForcedRemoveGivesThePopulatingClientAborted) {
  Start();
  grpc::ClientContext ctx;
  ctx.set_deadline(In(10));
  v1::PopulateResponse response;
  auto writer = stub_->Populate(&ctx, &response);
  const v1::PopulateRequest header = PopulateHeader(11, 100, 4);
  ASSERT_TRUE(writer->Write(header));
  ASSERT_TRUE(WaitUntilBeingPopulated(11));
  EXPECT_TRUE(RemoveRpc(11, true).ok());
  grpc::Status st = writer->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ABORTED) << st.error_message();
  EXPECT_THAT(st.error_message(), HasSubstr("forced Remove"));
}

// Finding 7: requests that do not parse are INVALID_ARGUMENT with a message,
// on every public and peer method, and the server keeps serving.
TEST_F(HardeningTest, UnparsableRequestsAreInvalidArgument) {
  Start();
  PopulateCanary();
  grpc::GenericStub generic(channel_);
  // Field 1 with wire type 7 (invalid): no protobuf parser accepts it.
  const std::string garbage = "\x0f\xff\xff\xff";
  for (const char* method : {
           "/engram.v1.EngramStore/Lookup",
           "/engram.v1.EngramStore/Remove",
           "/engram.v1.EngramStore/DescribeLayer",
           "/engram.v1.EngramStore/ListLayers",
           "/engram.v1.EngramStore/LookupMany",
           "/engram.v1.EngramStore/LookupTokens",
           "/engram.v1.EngramStore/ServerInfo",
           "/engram.v1.EngramStore/Status",
           "/engram.internal.v1.EngramPeer/Gather",
           "/engram.internal.v1.EngramPeer/Commit",
           "/engram.internal.v1.EngramPeer/Abort",
           "/engram.internal.v1.EngramPeer/Transport",
           "/engram.internal.v1.EngramPeer/RemoveLocal",
       }) {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(5));
    grpc::Slice slice(garbage);
    grpc::ByteBuffer request(&slice, 1), response;
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    grpc::Status status;
    generic.UnaryCall(&ctx, method, grpc::StubOptions(), &request, &response,
                      [&](grpc::Status s) {
                        std::lock_guard<std::mutex> lock(mu);
                        status = s;
                        done = true;
                        cv.notify_one();
                      });
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done; });
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << method << ": " << status.error_message();
    EXPECT_THAT(status.error_message(), HasSubstr("parse")) << method;
  }
  ExpectCanaryIntact();
}

// Finding 2: the peer Gather checked no row or byte limit before allocating
// its response (an 8 KB request grew RSS by ~770 MB).
TEST_F(HardeningTest, GatherChecksRowAndByteLimitsBeforeAllocating) {
  Start({"--max_lookup_rows=100000", "--max_message_bytes=4194304"});
  LayerLayout l{{64}, 4096, DType::kUInt8};  // 4 KiB rows
  auto tables = testing::RandomTables(l, 5);
  ASSERT_TRUE(client_->Populate(3, l, testing::Spans(tables)).ok());
  const int64_t rss_before = RssBytes(server_->pid());
  auto gather = [&](int rows) {
    internal::v1::GatherRequest request;
    request.set_layer_id(3);
    for (int i = 0; i < rows; ++i) {
      request.add_heads(0);
      request.add_row_ids(i % 64);
    }
    grpc::ClientContext ctx;
    ctx.set_deadline(In(10));
    internal::v1::GatherResponse response;
    return peer_->Gather(&ctx, request, &response);
  };
  // 200,000 rows of 4 KiB = 800 MB asked with a ~1 MB request.
  grpc::Status rows = gather(200000);
  EXPECT_EQ(rows.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(rows.error_message(), HasSubstr("--max_lookup_rows"));
  // 2,000 rows = 8 MB: over the 4 MiB message limit.
  grpc::Status bytes = gather(2000);
  EXPECT_EQ(bytes.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(bytes.error_message(), HasSubstr("--max_message_bytes"));
  EXPECT_TRUE(gather(500).ok());
  const int64_t grown = RssBytes(server_->pid()) - rss_before;
  EXPECT_LT(grown, int64_t{64} << 20);
  std::cout << "oversized gathers: RSS +" << grown / 1048576 << " MiB\n";
  ASSERT_TRUE(server_->Alive());
}

// Big peer gathers copy their rows on the worker pool, not on the reactor:
// the rows must still be exact, in request order.
TEST_F(HardeningTest, BigPeerGathersAreExact) {
  Start();
  LayerLayout l{{50000, 3}, 4, DType::kFloat32};
  auto tables = testing::RandomTables(l, 21);
  ASSERT_TRUE(client_->Populate(4, l, testing::Spans(tables)).ok());
  internal::v1::GatherRequest request;
  request.set_layer_id(4);
  std::vector<std::pair<int, int64_t>> asked;
  for (int i = 0; i < 20000; ++i) {
    const int head = i % 7 == 0 ? 1 : 0;
    const int64_t row = head == 1 ? i % 3 : (i * 7919) % 50000;
    request.add_heads(head);
    request.add_row_ids(row);
    asked.emplace_back(head, row);
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(In(10));
  internal::v1::GatherResponse response;
  ASSERT_TRUE(peer_->Gather(&ctx, request, &response).ok());
  const size_t row_bytes = l.row_bytes();
  ASSERT_EQ(response.data().size(), asked.size() * row_bytes);
  for (size_t j = 0; j < asked.size(); ++j) {
    const auto [head, row] = asked[j];
    ASSERT_EQ(0, std::memcmp(response.data().data() + j * row_bytes,
                             tables[head].data() + row * row_bytes, row_bytes))
        << j;
  }
}

// Finding 2: a Lookup with a huge shape echoed the whole shape in its error.
TEST_F(HardeningTest, ErrorMessagesStayShortForHugeShapes) {
  Start();
  PopulateCanary();
  v1::LookupRequest request;
  request.set_layer_id(kCanary);
  for (int i = 0; i < 1000000; ++i) request.add_shape(1 + i % 7);
  request.add_row_ids_list(1);
  grpc::ClientContext ctx;
  ctx.set_deadline(In(10));
  v1::LookupResponse response;
  grpc::Status st = stub_->Lookup(&ctx, request, &response);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_LT(st.error_message().size(), 512u) << st.error_message().size();
  EXPECT_THAT(st.error_message(), HasSubstr("rank 1000000"));
  ExpectCanaryIntact();
}

// Finding 3: the budget charged N*D*dtype bytes while every head is its own
// page-rounded mapping (64 layers of 4,096 one-byte heads: a quarter of a
// 1 MiB budget, 1.06 GB of memory).
TEST_F(HardeningTest, BudgetChargesPageRoundedTables) {
  Start({"--memory_limit_bytes=8388608"});
  LayerLayout l{std::vector<int64_t>(512, 1), 1, DType::kUInt8};
  auto tables = testing::RandomTables(l, 1);
  // 512 one-row heads map 512 pages = 2 MiB each: three fit in 8 MiB.
  for (int64_t id = 1; id <= 3; ++id) {
    auto info = client_->Populate(id, l, testing::Spans(tables));
    ASSERT_TRUE(info.ok()) << id << ": " << info.status();
  }
  auto fourth = client_->Populate(4, l, testing::Spans(tables));
  EXPECT_EQ(fourth.status().code(), absl::StatusCode::kResourceExhausted)
      << fourth.status();
  EXPECT_THAT(std::string(fourth.status().message()),
              HasSubstr("--memory_limit_bytes"));
  // Removing one frees its whole charge.
  ASSERT_TRUE(client_->Remove(2).ok());
  EXPECT_TRUE(client_->Populate(4, l, testing::Spans(tables)).ok());
}

// Finding 3: a populate header alone locked the whole table in RAM, and a
// stream that then idled held it forever.
TEST_F(HardeningTest, IdlePopulateStreamsAreEndedAndLockNothing) {
  Start({"--stream_idle_timeout_seconds=1"});
  const int64_t locked_before = ProcStatus(server_->pid(), "VmLck");
  grpc::ClientContext ctx;
  ctx.set_deadline(In(20));
  v1::PopulateResponse response;
  auto writer = stub_->Populate(&ctx, &response);
  const v1::PopulateRequest header = PopulateHeader(12, 1 << 20, 16);  // 64 MiB
  ASSERT_TRUE(writer->Write(header));
  ASSERT_TRUE(WaitUntilBeingPopulated(12));
  EXPECT_LT(ProcStatus(server_->pid(), "VmLck") - locked_before,
            int64_t{4} << 20);
  const auto start = std::chrono::steady_clock::now();
  grpc::Status st = writer->Finish();
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << st.error_message();
  EXPECT_THAT(st.error_message(), HasSubstr("--stream_idle_timeout_seconds"));
  EXPECT_LT(waited, 5.0);
  // The id and the budget are free again.
  LayerLayout l{{100}, 16, DType::kFloat32};
  auto tables = testing::RandomTables(l, 2);
  EXPECT_TRUE(client_->Populate(12, l, testing::Spans(tables)).ok());
  // The same for a Stage stream.
  grpc::ClientContext stage_ctx;
  stage_ctx.set_deadline(In(20));
  internal::v1::StageResponse staged;
  auto stage = peer_->Stage(&stage_ctx, &staged);
  ASSERT_TRUE(stage->Write(StageHeader("txn-idle", 13, {1000}, 4)));
  grpc::Status stage_st = stage->Finish();
  EXPECT_EQ(stage_st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << stage_st.error_message();
  EXPECT_TRUE(client_->Populate(13, l, testing::Spans(tables)).ok());
}

// Finding 2: one connection that sends lookups and never reads made the
// server buffer every response (24 x 100 MiB: OOM in 2 GiB).
TEST_F(HardeningTest, AClientThatNeverReadsCannotGrowTheServer) {
  Start({"--max_pending_response_bytes_per_connection=67108864"});
  LayerLayout l{{64}, 4096, DType::kFloat32};  // 16 KiB rows
  auto tables = testing::RandomTables(l, 9);
  ASSERT_TRUE(client_->Populate(21, l, testing::Spans(tables)).ok());
  v1::LookupRequest request;
  request.set_layer_id(21);
  request.add_shape(1024);  // 1024 rows = 16 MiB per response
  request.add_shape(1);
  request.add_shape(1);
  for (int i = 0; i < 1024; ++i) request.add_row_ids_list(i % 64);
  // Rows, then readable values (as_values: once outside the budget, 64
  // unread ones took 645 MiB past a 64 MiB cap).
  for (bool as_values : {false, true}) {
    SCOPED_TRACE(as_values ? "as_values" : "rows");
    request.set_as_values(as_values);
    const std::string message = request.SerializeAsString();
    const int64_t rss_before = RssBytes(server_->pid());
    NonReadingHttp2Client slow(server_->grpc_port());
    ASSERT_TRUE(slow.connected());
    for (int i = 0; i < 24; ++i) {  // 384 MiB of responses asked for
      slow.Call("/engram.v1.EngramStore/Lookup", message);
    }
    std::this_thread::sleep_for(std::chrono::seconds(2));
    const int64_t grown = RssBytes(server_->pid()) - rss_before;
    EXPECT_LT(grown, int64_t{160} << 20) << "RSS grew by " << grown;
    std::cout << "never-reading client, 24 x 16 MiB lookups"
              << (as_values ? " (as_values)" : "") << ": RSS +"
              << grown / 1048576 << " MiB\n";
  }
  // Other clients are still served.
  auto ids = testing::RandomIds(l, 4, 1, 3);
  std::vector<uint8_t> out(4 * l.row_bytes());
  const int64_t shape[] = {4, 1, 1};
  EXPECT_TRUE(client_->Lookup(21, ids, shape, out).ok());
  EXPECT_EQ(out, testing::ReferenceGather(l, tables, ids, DType::kFloat32));
}

// Finding 2: 10,000 idle connections held ~280 KB each.
TEST_F(HardeningTest, IdleConnectionsCostLittleMemory) {
  Start();
  constexpr int kConnections = 300;
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  auto health = [](const std::shared_ptr<grpc::Channel>& channel) {
    auto stub = v1::EngramStore::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(In(10));
    v1::ListLayersResponse response;
    return stub->ListLayers(&ctx, v1::ListLayersRequest(), &response).ok();
  };
  ASSERT_TRUE(health(channel_));
  const int64_t rss_before = RssBytes(server_->pid());
  for (int i = 0; i < kConnections; ++i) {
    grpc::ChannelArguments args;
    args.SetInt("engram.test.connection", i);  // one connection each
    channels.push_back(grpc::CreateCustomChannel(
        server_->address(), grpc::InsecureChannelCredentials(), args));
    ASSERT_TRUE(health(channels.back())) << i;
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const int64_t per_connection =
      (RssBytes(server_->pid()) - rss_before) / kConnections;
  EXPECT_LT(per_connection, 96 << 10) << per_connection << " bytes each";
  std::cout << "idle connection: " << per_connection << " bytes of RSS\n";
  channels.clear();
}

// Finding 4: once accept4 failed with EMFILE the listener never accepted
// again, even after the descriptors were released.
TEST_F(HardeningTest, ListenerRecoversFromRunningOutOfDescriptors) {
  Start({"--max_open_files=256", "--reserved_fds=32"});
  std::vector<int> sockets;
  for (int i = 0; i < 400; ++i) {
    const int fd = ConnectTcp(server_->grpc_port());
    if (fd >= 0) sockets.push_back(fd);
  }
  std::this_thread::sleep_for(std::chrono::seconds(1));
  for (int fd : sockets) close(fd);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  // A new client and a health probe are served.
  auto fresh = Client::Connect(server_->address());
  ASSERT_TRUE(fresh.ok());
  absl::Status health = absl::UnknownError("not tried");
  for (int i = 0; i < 50 && !health.ok(); ++i) {
    health = (*fresh)->CheckHealth();
    if (!health.ok())
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(health.ok()) << health << "\n" << server_->Log();
  EXPECT_THAT(server_->Log(), HasSubstr("refused a connection"));
}

// Finding 5: every cluster populate stream had its own OS thread (3,000
// idle streams, 3,000 threads; under a thread cap the shard wedged).
TEST(HardeningClusterTest, PopulateStreamsDoNotTakeAThreadEach) {
  auto cluster = testing::StartCluster(2, 1, {"--max_populate_streams=64"});
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto& shards = *cluster;
  const pid_t pid = shards[0]->pid();
  auto channel = grpc::CreateChannel(shards[0]->address(),
                                     grpc::InsecureChannelCredentials());
  auto stub = v1::EngramStore::NewStub(channel);
  const int64_t threads_before = ProcStatus(pid, "Threads");
  constexpr int kStreams = 100;
  struct Stream {
    grpc::ClientContext ctx;
    v1::PopulateResponse response;
    std::unique_ptr<grpc::ClientWriter<v1::PopulateRequest>> writer;
  };
  std::vector<std::unique_ptr<Stream>> streams;
  for (int i = 0; i < kStreams; ++i) {
    auto s = std::make_unique<Stream>();
    s->ctx.set_deadline(In(60));
    s->writer = stub->Populate(&s->ctx, &s->response);
    const v1::PopulateRequest header = PopulateHeader(100 + i, 10, 4);
    ASSERT_TRUE(s->writer->Write(header));
    streams.push_back(std::move(s));
  }
  std::this_thread::sleep_for(std::chrono::seconds(2));
  const int64_t threads = ProcStatus(pid, "Threads");
  std::cout << "threads: " << threads_before << " before, " << threads
            << " with " << kStreams << " populate streams open\n";
  EXPECT_LT(threads - threads_before, 40)
      << threads_before << " threads before, " << threads << " with "
      << kStreams << " open populate streams";
  // Past the cap the server refuses streams instead of staging them.
  int refused = 0;
  for (auto& s : streams) {
    s->writer->WritesDone();  // admitted streams end incomplete
    grpc::Status st = s->writer->Finish();
    refused += st.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED &&
               absl::StrContains(st.error_message(), "--max_populate_streams");
  }
  streams.clear();
  EXPECT_GE(refused, kStreams - 64);
  // The shard still populates and serves.
  auto client = Client::Connect(shards[0]->address());
  ASSERT_TRUE(client.ok());
  LayerLayout l{{100, 50}, 8, DType::kFloat32};
  auto tables = testing::RandomTables(l, 4);
  ASSERT_TRUE((*client)->Populate(7, l, testing::Spans(tables)).ok());
  auto ids = testing::RandomIds(l, 3, 2, 1);
  std::vector<uint8_t> out(3 * 2 * 2 * l.row_bytes());
  const int64_t shape[] = {3, 2, 2};
  ASSERT_TRUE((*client)->Lookup(7, ids, shape, out).ok());
  EXPECT_EQ(out, testing::ReferenceGather(l, tables, ids, DType::kFloat32));
  client->reset();
  stub.reset();
  channel.reset();
  for (auto& shard : shards) EXPECT_EQ(shard->Stop(), 0) << shard->Log();
}

}  // namespace
}  // namespace engram
