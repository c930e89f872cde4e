// The method table (server/methods.h) against the services engramd
// serves: every RPC of engram.v1.EngramStore and engram.internal.v1.EngramPeer
// has one entry with its path, and every entry is a served RPC, so a new
// RPC cannot go out without a decided right and audit.
#include "server/methods.h"

#include <google/protobuf/descriptor.h>
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "engram/internal/v1/peer.grpc.pb.h"
#include "engram/v1/engram.grpc.pb.h"

namespace engram {
namespace {

std::set<std::string> ServedPaths() {
  std::set<std::string> paths;
  // Naming a generated message of each file links its descriptors in.
  const google::protobuf::DescriptorPool* pool =
      v1::LookupRequest::descriptor()->file()->pool();
  EXPECT_EQ(internal::v1::GatherRequest::descriptor()->file()->pool(), pool);
  for (const char* name :
       {"engram.v1.EngramStore", "engram.internal.v1.EngramPeer"}) {
    const google::protobuf::ServiceDescriptor* service =
        pool->FindServiceByName(name);
    EXPECT_NE(service, nullptr) << name;
    if (service == nullptr) continue;
    for (int i = 0; i < service->method_count(); ++i) {
      paths.insert("/" + service->full_name() + "/" +
                   service->method(i)->name());
    }
  }
  return paths;
}

TEST(MethodsTest, EveryServedRpcHasOneEntryAndEveryEntryIsServed) {
  const std::set<std::string> served = ServedPaths();
  EXPECT_EQ(served.size(), static_cast<size_t>(kNumMethods));
  for (const std::string& path : served) {
    const MethodInfo* m = FindMethod(path);
    ASSERT_NE(m, nullptr) << path << " is served but not in server/methods.cc";
    EXPECT_EQ(m->path, path);
    EXPECT_TRUE(path.ends_with(std::string("/") + m->name)) << path;
  }
  for (int i = 0; i < kNumMethods; ++i) {
    const MethodInfo& m = Describe(static_cast<Method>(i));
    EXPECT_EQ(static_cast<int>(m.method), i);
    EXPECT_TRUE(served.count(m.path)) << m.path << " is not served";
  }
  EXPECT_EQ(FindMethod("/grpc.health.v1.Health/Check"), nullptr);
}

TEST(MethodsTest, WritesAndPeerCallsAreAuditedAndReadsAreNot) {
  for (int i = 0; i < kNumMethods; ++i) {
    const MethodInfo& m = Describe(static_cast<Method>(i));
    const bool changes = (m.need & (kRightWrite | kRightPeer)) != 0;
    EXPECT_EQ(m.audited, changes) << m.name;
    EXPECT_NE(m.need, 0u) << m.name << " needs no right";
    const bool is_public = std::string(m.path).starts_with("/engram.v1.");
    EXPECT_EQ(is_public, i < kNumPublicMethods) << m.name;
  }
}

}  // namespace
}  // namespace engram
