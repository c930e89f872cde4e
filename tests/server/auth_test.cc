// Authorizer against real gRPC calls: an in-process server on loopback
// whose every method answers with what Authorizer::Check decided, so the
// metadata and peer address are gRPC's own.
#include "server/auth.h"

#include <gmock/gmock.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "proto/convert.h"
#include "server/methods.h"

namespace engram {
namespace {

using ::testing::HasSubstr;

// Finishes each call at once with the authorizer's answer; an allowed
// caller's "name/role" comes back as trailing metadata.
class CheckingService : public grpc::CallbackGenericService {
 public:
  explicit CheckingService(const Authorizer* auth) : auth_(auth) {}

  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* context) override {
    class Reactor : public grpc::ServerGenericBidiReactor {
     public:
      Reactor(grpc::GenericCallbackServerContext* context,
              const Authorizer* auth) {
        const MethodInfo* method = FindMethod(context->method());
        if (method == nullptr) {
          Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "no method"));
          return;
        }
        absl::StatusOr<Caller> caller = auth->Check(*context, method->method);
        if (caller.ok()) {
          context->AddTrailingMetadata("caller",
                                       caller->name + "/" + caller->role);
        }
        Finish(ToGrpcStatus(caller.status()));
      }
      void OnDone() override { delete this; }
    };
    return new Reactor(context, auth_);
  }

 private:
  const Authorizer* const auth_;
};

class AuthorizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/auth_test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    tokens_ = dir_ + "/tokens";
  }
  void TearDown() override {
    server_.reset();
    service_.reset();
    auth_.reset();
    std::filesystem::remove_all(dir_);
  }

  static void WriteFile(const std::string& path, const std::string& text) {
    std::ofstream(path, std::ios::trunc) << text;
    ::chmod(path.c_str(), 0600);
  }

  void Serve(AuthConfig config) {
    absl::StatusOr<std::unique_ptr<Authorizer>> auth =
        Authorizer::Create(std::move(config), /*registry=*/nullptr);
    ASSERT_TRUE(auth.ok()) << auth.status();
    auth_ = *std::move(auth);
    service_ = std::make_unique<CheckingService>(auth_.get());
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port);
    builder.RegisterCallbackGenericService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", port),
                                   grpc::InsecureChannelCredentials());
  }

  // Calls `method` with `token` (none when empty); the caller's name/role
  // when allowed.
  absl::StatusOr<std::string> Call(Method method, const std::string& token) {
    grpc::GenericStub stub(channel_);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(10));
    if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
    grpc::Slice empty(std::string(""));
    grpc::ByteBuffer request(&empty, 1), response;
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    grpc::Status status;
    stub.UnaryCall(&ctx, Describe(method).path, grpc::StubOptions(), &request,
                   &response, [&](grpc::Status s) {
                     std::lock_guard<std::mutex> lock(mu);
                     status = std::move(s);
                     done = true;
                     cv.notify_one();
                   });
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done; });
    if (!status.ok()) return FromGrpcStatus(status);
    auto it = ctx.GetServerTrailingMetadata().find("caller");
    if (it == ctx.GetServerTrailingMetadata().end()) return std::string();
    return std::string(it->second.data(), it->second.size());
  }

  std::string dir_;
  std::string tokens_;
  std::unique_ptr<Authorizer> auth_;
  std::unique_ptr<CheckingService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(AuthorizerTest, RolesGrantTheirRightsAndNothingMore) {
  WriteFile(tokens_,
            "# role name token\n"
            "read reader tok-read-0123456789\n"
            "write writer tok-write-0123456789\n"
            "admin boss tok-admin-0123456789\n"
            "peer shard tok-peer-0123456789\n");
  AuthConfig config;
  config.tokens_file = tokens_;
  Serve(config);
  EXPECT_EQ(*Call(Method::kLookup, "tok-read-0123456789"), "reader/read");
  EXPECT_EQ(Call(Method::kPopulate, "tok-read-0123456789").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(*Call(Method::kPopulate, "tok-write-0123456789"), "writer/write");
  EXPECT_EQ(*Call(Method::kLookup, "tok-write-0123456789"), "writer/write");
  EXPECT_EQ(Call(Method::kStage, "tok-write-0123456789").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(*Call(Method::kRemove, "tok-admin-0123456789"), "boss/admin");
  EXPECT_EQ(*Call(Method::kStage, "tok-peer-0123456789"), "shard/peer");
  EXPECT_EQ(*Call(Method::kGather, "tok-peer-0123456789"), "shard/peer");
  // No token, an unknown one: UNAUTHENTICATED, and the message never
  // repeats what was presented.
  absl::Status none = Call(Method::kLookup, "").status();
  EXPECT_EQ(none.code(), absl::StatusCode::kUnauthenticated);
  absl::Status wrong = Call(Method::kLookup, "tok-guess-0123456789").status();
  EXPECT_EQ(wrong.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(wrong.message()), ::testing::Not(HasSubstr("guess")));
}

TEST_F(AuthorizerTest, ProtectedModeServesLoopbackWithEveryRight) {
  Serve(AuthConfig{});
  EXPECT_FALSE(auth_->credentials_configured());
  EXPECT_EQ(*Call(Method::kRemove, ""), "anonymous/any");
  EXPECT_EQ(*Call(Method::kStage, ""), "anonymous/any");
}

TEST_F(AuthorizerTest, ReloadSwapsTablesAndABrokenFileKeepsTheLastGoodOnes) {
  WriteFile(tokens_, "read reader tok-old-0123456789\n");
  AuthConfig config;
  config.tokens_file = tokens_;
  Serve(config);
  ASSERT_TRUE(Call(Method::kLookup, "tok-old-0123456789").ok());
  // A new token replaces the old one (size and inode change with the
  // rename, so the stamp differs even within one mtime tick).
  WriteFile(tokens_ + ".new", "read reader tok-new-longer-0123456789\n");
  std::filesystem::rename(tokens_ + ".new", tokens_);
  auth_->Reload();
  EXPECT_TRUE(Call(Method::kLookup, "tok-new-longer-0123456789").ok());
  EXPECT_EQ(Call(Method::kLookup, "tok-old-0123456789").status().code(),
            absl::StatusCode::kUnauthenticated);
  // A file that no longer parses changes nothing.
  WriteFile(tokens_ + ".bad", "read only-two-fields\n");
  std::filesystem::rename(tokens_ + ".bad", tokens_);
  auth_->Reload();
  EXPECT_TRUE(Call(Method::kLookup, "tok-new-longer-0123456789").ok());
}

TEST_F(AuthorizerTest, TheWatcherReloadsOnItsOwnAndStopsWhenAsked) {
  WriteFile(tokens_, "read reader tok-a-0123456789\n");
  AuthConfig config;
  config.tokens_file = tokens_;
  Serve(config);
  std::atomic<int> reloads{0};
  auth_->WatchFiles(0.05, [&] { ++reloads; });
  WriteFile(tokens_ + ".new", "write writer tok-bb-0123456789\n");
  std::filesystem::rename(tokens_ + ".new", tokens_);
  const auto give_up =
      std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (reloads == 0 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(reloads, 1);
  EXPECT_EQ(*Call(Method::kPopulate, "tok-bb-0123456789"), "writer/write");
  auth_->StopWatching();
  WriteFile(tokens_ + ".new", "write writer tok-ccc-0123456789\n");
  std::filesystem::rename(tokens_ + ".new", tokens_);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(reloads, 1);  // stopped: no reload, no callback
  EXPECT_TRUE(Call(Method::kPopulate, "tok-bb-0123456789").ok());
}

TEST_F(AuthorizerTest, BadFilesAreRefusedWithFileAndLine) {
  WriteFile(tokens_,
            "read reader tok-0123456789abcdef\nroot superuser "
            "tok-0123456789abcdeg\n");
  AuthConfig config;
  config.tokens_file = tokens_;
  absl::StatusOr<std::unique_ptr<Authorizer>> auth =
      Authorizer::Create(config, nullptr);
  ASSERT_FALSE(auth.ok());
  EXPECT_EQ(auth.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(auth.status().message()),
              HasSubstr(tokens_ + " line 2"));
  AuthConfig identities;
  identities.identities_file = dir_ + "/ids";
  EXPECT_EQ(Authorizer::Create(identities, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);  // needs mTLS
}

TEST(IsLoopbackPeerTest, KnowsEverySpellingOfLoopback) {
  EXPECT_TRUE(IsLoopbackPeer("ipv4:127.0.0.1:5000"));
  EXPECT_TRUE(IsLoopbackPeer("ipv4:127.3.4.5:1"));
  EXPECT_TRUE(IsLoopbackPeer("ipv6:[::1]:5000"));
  EXPECT_TRUE(IsLoopbackPeer("unix:/tmp/engramd.sock"));
  EXPECT_FALSE(IsLoopbackPeer("ipv4:10.0.0.1:5000"));
  EXPECT_FALSE(IsLoopbackPeer("ipv4:128.0.0.1:5000"));
  EXPECT_FALSE(IsLoopbackPeer("ipv6:[fe80::1]:5000"));
  EXPECT_FALSE(IsLoopbackPeer(""));
}

}  // namespace
}  // namespace engram
