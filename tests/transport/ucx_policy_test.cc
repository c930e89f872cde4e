// Which UCX transports engram-store lets UCX open (transport/ucx_policy.h).
#include "transport/ucx_policy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace engram::transport {
namespace {

using ::testing::HasSubstr;

TEST(UcxPolicyTest, TcpIsLeftOutOfWhateverTheOperatorSelects) {
  EXPECT_EQ(UcxSettingsFor(nullptr, nullptr, false, "")->tls, "^tcp");
  EXPECT_EQ(UcxSettingsFor("all", nullptr, false, "")->tls, "^tcp");
  EXPECT_EQ(UcxSettingsFor("rc,tcp,sm", nullptr, false, "")->tls, "rc,sm");
  EXPECT_EQ(UcxSettingsFor("^ud", nullptr, false, "")->tls, "^ud,tcp");
  EXPECT_EQ(UcxSettingsFor("sm", nullptr, false, "")->tls, "sm");
  EXPECT_FALSE(UcxSettingsFor(nullptr, nullptr, false, "")->net_devices);
}

TEST(UcxPolicyTest, TcpAloneIsRefusedWithTheWayToAllowIt) {
  absl::StatusOr<UcxSettings> s = UcxSettingsFor("tcp", nullptr, false, "");
  ASSERT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.status().message(), HasSubstr("--ucx_tcp_interface"));
  EXPECT_THAT(s.status().message(), HasSubstr("read-only"));
}

TEST(UcxPolicyTest, NamedInterfaceKeepsTcpAndBindsItThere) {
  absl::StatusOr<UcxSettings> s = UcxSettingsFor("tcp", nullptr, false, "lo");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->tls, "tcp");
  EXPECT_EQ(s->net_devices, "lo");
  // Devices the operator lists win (they may add RDMA devices).
  EXPECT_EQ(
      UcxSettingsFor(nullptr, "mlx5_0:1,eth1", false, "eth1")->net_devices,
      "mlx5_0:1,eth1");
}

TEST(UcxPolicyTest, SameHostOnlyIsSharedMemoryWhateverTheEnvironment) {
  EXPECT_EQ(UcxSettingsFor("tcp", "eth0", true, "")->tls, "sm");
  EXPECT_FALSE(UcxSettingsFor("tcp", "eth0", true, "")->net_devices);
}

TEST(UcxPolicyTest, InterfaceOfFindsLoopbackAndRefusesForeignAddresses) {
  EXPECT_EQ(*InterfaceOf("127.0.0.1"), "lo");
  EXPECT_EQ(*InterfaceOf("[::1]"), "lo");
  EXPECT_EQ(InterfaceOf("192.0.2.254").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace engram::transport
