#include "common/status_context.h"

#include <gtest/gtest.h>

namespace engram {
namespace {

TEST(StatusContextTest, PutsTheContextBeforeTheMessageAndKeepsTheCode) {
  const absl::Status s =
      WithContext(absl::NotFoundError("layer 3 not found"), "manifest.json");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "manifest.json: layer 3 not found");
  const absl::Status parts =
      WithContext(absl::DataLossError("bad checksum"), "layer ", 7, " head ", 2);
  EXPECT_EQ(parts.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(parts.message(), "layer 7 head 2: bad checksum");
}

TEST(StatusContextTest, OkStaysOk) {
  EXPECT_TRUE(WithContext(absl::OkStatus(), "anything").ok());
}

}  // namespace
}  // namespace engram
