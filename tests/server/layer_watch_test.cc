// LayerWatchHub in-process behind a real gRPC server (the peer WatchLayer
// method), with a real LayerRegistry whose layers are committed, replaced
// and removed under open streams: every change is sent, every version sent
// is leased until released (or until the stream's grace after it ends),
// and the caps (leases per stream, streams per caller, superseded leases)
// end streams with the status they promise.
#include "server/layer_watch.h"

#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "engram/internal/v1/peer.grpc.pb.h"
#include "store/layer_builder.h"
#include "store/layer_registry.h"

namespace engram {
namespace {

using internal::v1::LayerMapping;
using internal::v1::WatchLayerRequest;
using Watch =
    grpc::ClientReaderWriter<WatchLayerRequest, internal::v1::LayerMapping>;

// The peer service's WatchLayer, and nothing else, over `hub`.
class WatchOnly : public internal::v1::EngramPeer::CallbackService {
 public:
  explicit WatchOnly(LayerWatchHub* hub) : hub_(hub) {}
  grpc::ServerBidiReactor<WatchLayerRequest, LayerMapping>* WatchLayer(
      grpc::CallbackServerContext* context) override {
    return hub_->Start(context, /*may_share_gpu=*/false, "test-caller");
  }

 private:
  LayerWatchHub* hub_;
};

class LayerWatchTest : public ::testing::Test {
 protected:
  void Serve(LayerWatchHub::Options options) {
    hub_ = LayerWatchHub::Create(&registry_, nullptr, nullptr, options);
    service_ = std::make_unique<WatchOnly>(hub_.get());
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    stub_ = internal::v1::EngramPeer::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    if (hub_ != nullptr) hub_->Close();
    if (server_ != nullptr) server_->Shutdown();
  }
  // Commits layer `id` (replacing what is there); returns its version.
  uint64_t Commit(int64_t id) {
    LayerLayout layout{{32, 16}, 8, DType::kUInt8};
    auto b = LayerBuilder::Create(id, layout, &budget_, false);
    EXPECT_TRUE(b.ok());
    for (int h = 0; h < 2; ++h) {
      EXPECT_TRUE(
          (*b)->AddChunk(h, 0, std::string(layout.table_bytes(h), '\7')).ok());
    }
    auto ticket = registry_.BeginPopulate(id, nullptr, /*replace=*/true);
    EXPECT_TRUE(ticket.ok()) << ticket.status();
    EXPECT_TRUE(registry_.Commit(*ticket, *(*b)->Finish()).ok());
    return registry_.Find(id)->version();
  }
  struct Open {
    grpc::ClientContext context;
    std::unique_ptr<Watch> stream;
  };
  std::unique_ptr<Open> Start(int64_t id) {
    auto w = std::make_unique<Open>();
    w->context.set_deadline(std::chrono::system_clock::now() +
                            std::chrono::seconds(30));
    w->stream = stub_->WatchLayer(&w->context);
    WatchLayerRequest first;
    first.set_layer_id(id);
    EXPECT_TRUE(w->stream->Write(first));
    return w;
  }
  static void Release(Open& w, uint64_t version) {
    WatchLayerRequest r;
    r.set_release_version(version);
    EXPECT_TRUE(w.stream->Write(r));
  }
  // Waits (up to 10 s) for leased_versions() to become `n`.
  bool LeasesBecome(int64_t n) {
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (hub_->leased_versions() != n) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
  }

  MemoryBudget budget_{64 << 20};
  LayerRegistry registry_;
  std::shared_ptr<LayerWatchHub> hub_;
  std::unique_ptr<WatchOnly> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<internal::v1::EngramPeer::Stub> stub_;
};

TEST_F(LayerWatchTest, EveryChangeIsSentAndEachVersionLeasedUntilReleased) {
  Serve({});
  const uint64_t v1 = Commit(5);
  auto w = Start(5);
  LayerMapping m;
  ASSERT_TRUE(w->stream->Read(&m));
  EXPECT_EQ(m.state(), LayerMapping::PRESENT);
  EXPECT_EQ(m.version(), v1);
  EXPECT_EQ(m.config().embedding_dim(), 8);
  EXPECT_EQ(hub_->open_streams(), 1);
  EXPECT_TRUE(LeasesBecome(1));  // the version sent is leased
  // Replaced: the new version is sent; the old one stays leased (the
  // registry no longer serves it) until the reader lets it go.
  const uint64_t v2 = Commit(5);
  ASSERT_TRUE(w->stream->Read(&m));
  EXPECT_EQ(m.version(), v2);
  EXPECT_TRUE(LeasesBecome(2));
  Release(*w, v1);
  EXPECT_TRUE(LeasesBecome(1));
  // Removed: NOT_FOUND, and v2 is held for the reader until released.
  ASSERT_TRUE(registry_.Remove(5, false).ok());
  ASSERT_TRUE(w->stream->Read(&m));
  EXPECT_EQ(m.state(), LayerMapping::NOT_FOUND);
  EXPECT_EQ(m.version(), 0u);
  EXPECT_EQ(hub_->leased_versions(), 1);
  Release(*w, v2);
  EXPECT_TRUE(LeasesBecome(0));
  w->stream->WritesDone();
  EXPECT_TRUE(w->stream->Finish().ok());
}

TEST_F(LayerWatchTest, AReaderThatNeverReleasesIsEndedAtTheLeaseCap) {
  LayerWatchHub::Options options;
  options.max_leases_per_stream = 2;
  Serve(options);
  Commit(6);
  auto w = Start(6);
  LayerMapping m;
  int sent = 0;
  for (int i = 0; i < 4; ++i) {
    if (!w->stream->Read(&m)) break;
    ++sent;
    Commit(6);
  }
  EXPECT_LE(sent, 3);
  grpc::Status s = w->stream->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << s.error_message();
}

TEST_F(LayerWatchTest, OneCallerCannotTakeEverySlot) {
  LayerWatchHub::Options options;
  options.max_streams_per_caller = 2;
  Serve(options);
  Commit(7);
  auto a = Start(7), b = Start(7);
  LayerMapping m;
  ASSERT_TRUE(a->stream->Read(&m));
  ASSERT_TRUE(b->stream->Read(&m));
  auto c = Start(7);
  EXPECT_FALSE(c->stream->Read(&m));
  grpc::Status s = c->stream->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(),
              ::testing::HasSubstr("--max_watch_streams_per_caller"))
      << s.error_message();
  EXPECT_EQ(hub_->open_streams(), 2);
}

TEST_F(LayerWatchTest, ASupersededLeaseEndsTheStreamAndGraceFreesIt) {
  LayerWatchHub::Options options;
  options.superseded_lease = std::chrono::milliseconds(100);
  options.ended_stream_grace = std::chrono::milliseconds(0);
  Serve(options);
  Commit(8);
  auto w = Start(8);
  LayerMapping m;
  ASSERT_TRUE(w->stream->Read(&m));
  Commit(8);
  ASSERT_TRUE(w->stream->Read(&m));
  ASSERT_TRUE(LeasesBecome(2));
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  hub_->ExpireHeld();  // the janitor's call: v1 held past its lease
  grpc::Status s = w->stream->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << s.error_message();
  // The ended stream's versions are held for its grace (0 here), then the
  // janitor's next call frees them (the stream's end reaches the hub
  // shortly after the client sees it).
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (hub_->leased_versions() != 0 &&
         std::chrono::steady_clock::now() < deadline) {
    hub_->ExpireHeld();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(hub_->leased_versions(), 0);
}

TEST_F(LayerWatchTest, CloseEndsEveryStreamAndRefusesNewOnes) {
  Serve({});
  Commit(9);
  auto w = Start(9);
  LayerMapping m;
  ASSERT_TRUE(w->stream->Read(&m));
  hub_->Close();
  EXPECT_FALSE(w->stream->Read(&m));
  EXPECT_FALSE(w->stream->Finish().ok());
  auto late = Start(9);
  EXPECT_FALSE(late->stream->Read(&m));
  EXPECT_FALSE(late->stream->Finish().ok());
  // A stream unregisters in its reactor's OnDone, which gRPC may run just
  // after the client has seen Finish.
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (hub_->open_streams() != 0 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(hub_->open_streams(), 0);
}

}  // namespace
}  // namespace engram
