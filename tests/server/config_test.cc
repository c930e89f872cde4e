#include "server/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

namespace engram {
namespace {

TEST(ConfigTest, DefaultsAreValid) {
  EXPECT_TRUE(CheckServerConfig(ServerConfig()).ok());
}

TEST(ConfigTest, OutOfRangeValuesNameTheFlagAndTheRange) {
  auto message = [](void (*edit)(ServerConfig*)) {
    ServerConfig c;
    edit(&c);
    absl::Status s = CheckServerConfig(c);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    return std::string(s.message());
  };
  EXPECT_EQ(message([](ServerConfig* c) { c->threads = -2; }),
            "bad value -2 for --threads: must be at least 0");
  EXPECT_EQ(message([](ServerConfig* c) { c->max_message_bytes = 10; }),
            "bad value 10 for --max_message_bytes: must be from 4096 to "
            "2146435072");
  EXPECT_EQ(message([](ServerConfig* c) { c->gpu_streams = 65; }),
            "bad value 65 for --gpu_streams: must be from 1 to 64");
  EXPECT_EQ(message([](ServerConfig* c) { c->peer_read = "fast"; }),
            "bad value 'fast' for --peer_read: must be auto, rma or gather");
  EXPECT_EQ(message([](ServerConfig* c) { c->watch_lease_seconds = 0; }),
            "bad value 0 for --watch_lease_seconds: must be more than 0");
  EXPECT_THAT(message([](ServerConfig* c) { c->drain_seconds = -1; }),
              ::testing::HasSubstr("--drain_seconds"));
  EXPECT_THAT(message([](ServerConfig* c) { c->drain_seconds = NAN; }),
              ::testing::HasSubstr("--drain_seconds"));
  EXPECT_THAT(message([](ServerConfig* c) { c->load_max_mib_per_second = -1; }),
              ::testing::HasSubstr("--load_max_mib_per_second"));
  EXPECT_THAT(message([](ServerConfig* c) { c->listen.clear(); }),
              ::testing::HasSubstr("--listen"));
}

TEST(ConfigTest, DefaultsResolveToTheMachine) {
  ServerConfig c;
  ResolveServerDefaults(&c);
  EXPECT_GE(c.threads, 1);
  EXPECT_GT(c.memory_limit_bytes, 0u);
}

// Issue: the start check compared name prefixes, so a --peers name like
// 127.attacker.example passed as loopback.
TEST(ConfigTest, LoopbackPeersAreCheckedByAddressNotSpelling) {
  EXPECT_TRUE(IsLoopbackHost("127.0.0.1"));
  EXPECT_TRUE(IsLoopbackHost("127.5.6.7"));
  EXPECT_TRUE(IsLoopbackHost("[::1]"));
  EXPECT_TRUE(IsLoopbackHost("[::ffff:127.0.0.1]"));
  EXPECT_TRUE(IsLoopbackHost("localhost"));
  EXPECT_FALSE(IsLoopbackHost("127.attacker.example"));
  EXPECT_FALSE(IsLoopbackHost("127.0.0.1.attacker.example"));
  EXPECT_FALSE(IsLoopbackHost("192.0.2.2"));
  EXPECT_FALSE(IsLoopbackHost("[::ffff:10.0.0.1]"));
  ServerConfig config;
  absl::Status s =
      CheckSecurityFlags(config, {"127.0.0.1:1", "127.attacker.example:2"});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(CheckSecurityFlags(config, {"127.0.0.1:1", "[::1]:2"}).ok());
}

}  // namespace
}  // namespace engram
