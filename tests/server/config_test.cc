#include "server/flags.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace engram {
namespace {

absl::StatusOr<ServerConfig> Parse(std::vector<std::string> args) {
  args.insert(args.begin(), "engramd");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return ParseServerFlags(static_cast<int>(argv.size()), argv.data());
}

TEST(FlagsTest, ParsesEveryForm) {
  auto c = Parse({"--listen=127.0.0.1:1", "--threads", "3", "--demo",
                  "--nopin_memory", "--memory_limit_bytes=1024",
                  "--max_message_bytes=1048576", "--metrics_listen="});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->listen, "127.0.0.1:1");
  EXPECT_EQ(c->threads, 3);
  EXPECT_TRUE(c->demo);
  EXPECT_FALSE(c->pin_memory);
  EXPECT_EQ(c->memory_limit_bytes, 1024u);
  EXPECT_EQ(c->max_message_bytes, 1 << 20);
  EXPECT_EQ(c->metrics_listen, "");
  EXPECT_TRUE(Parse({"--demo=false"}).ok());
  EXPECT_FALSE(Parse({"--demo=false"})->demo);
}

TEST(FlagsTest, RejectsBadInputNamingTheFlag) {
  EXPECT_THAT(std::string(Parse({"--bogus=1"}).status().message()),
              ::testing::HasSubstr("unknown flag --bogus"));
  EXPECT_THAT(std::string(Parse({"--threads=-2"}).status().message()),
              ::testing::HasSubstr("--threads"));
  EXPECT_FALSE(Parse({"--max_message_bytes=10"}).ok());
  EXPECT_FALSE(Parse({"--listen"}).ok());
  EXPECT_FALSE(Parse({"positional"}).ok());
}

TEST(FlagsTest, DefaultsResolveToTheMachine) {
  ServerConfig c;
  ResolveServerDefaults(&c);
  EXPECT_GE(c.threads, 1);
  EXPECT_GT(c.memory_limit_bytes, 0u);
  EXPECT_THAT(ServerFlagsHelp(), ::testing::HasSubstr("--max_lookup_rows"));
}

// Issue: the start check compared name prefixes, so a --peers name like
// 127.attacker.example passed as loopback.
TEST(FlagsTest, LoopbackPeersAreCheckedByAddressNotSpelling) {
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
