// engramctl against a real engramd: .npy in, .npy out, one-line errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

#include "checkpoint/npy.h"
#include "tests/testing/engramd_process.h"
#include "tests/testing/random_layer.h"

namespace engram {
namespace {

using checkpoint::NpyArray;
using checkpoint::ReadNpy;
using checkpoint::WriteNpy;

using ::testing::HasSubstr;

TEST(EngramctlTest, PopulateLookupDescribeRemoveThroughTheCli) {
  auto server = testing::EngramdProcess::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string dir = std::filesystem::temp_directory_path() /
                          ("engramctl_test_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  LayerLayout layout{{30, 45}, 6, DType::kFloat32};
  auto tables = testing::RandomTables(layout, 9);
  std::string files;
  for (int h = 0; h < 2; ++h) {
    const std::string path = dir + "/h" + std::to_string(h) + ".npy";
    ASSERT_TRUE(WriteNpy(path, "<f4", {layout.table_vocab_sizes[h], 6},
                         tables[h].data(), tables[h].size())
                    .ok());
    files += " " + path;
  }
  const std::string ctl =
      testing::EngramctlPath() + " --address=" + (*server)->address() + " ";
  std::string out;
  ASSERT_EQ(testing::RunCommand(ctl + "populate --layer=3" + files, &out), 0)
      << out;
  EXPECT_THAT(out, HasSubstr("layer 3: 2 heads, D = 6 float32"));
  ASSERT_EQ(testing::RunCommand(ctl + "health", &out), 0) << out;
  ASSERT_EQ(testing::RunCommand(ctl + "list", &out), 0);
  EXPECT_THAT(out, HasSubstr("vocab sizes [30, 45]"));

  std::vector<int64_t> ids = {29, 44, 0, 7};
  const std::string result = dir + "/rows.npy";
  ASSERT_EQ(testing::RunCommand(ctl +
                                    "lookup --layer=3 --ids=29,44,0,7 "
                                    "--shape=2,1,2 --out=" +
                                    result,
                                &out),
            0)
      << out;
  auto rows = ReadNpy(result);
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(rows->shape, (std::vector<int64_t>{2, 1, 2, 6}));
  EXPECT_EQ(rows->data,
            testing::ReferenceGather(layout, tables, ids, DType::kFloat32));

  ASSERT_EQ(testing::RunCommand(ctl + "describe --layer=3", &out), 0);
  EXPECT_THAT(out, HasSubstr("engram:l3:h1"));
  EXPECT_EQ(testing::RunCommand(ctl + "populate --layer=3" + files, &out), 1);
  EXPECT_THAT(out, HasSubstr("ALREADY_EXISTS"));
  EXPECT_EQ(testing::RunCommand(ctl + "lookup --layer=3 --ids=30,0", &out), 1);
  EXPECT_THAT(out, HasSubstr("INVALID_ARGUMENT: row_ids[0, 0, 0] = 30"));
  ASSERT_EQ(testing::RunCommand(ctl + "remove --layer=3", &out), 0);
  EXPECT_EQ(testing::RunCommand(ctl + "describe --layer=3", &out), 1);
  EXPECT_THAT(out, HasSubstr("NOT_FOUND"));
  EXPECT_EQ(testing::RunCommand(ctl + "frobnicate", &out), 2);
  EXPECT_EQ(
      testing::RunCommand(ctl + "populate --layer=4 /nonexistent.npy", &out),
      1);
  EXPECT_THAT(out, HasSubstr("cannot open /nonexistent.npy"));
  std::filesystem::remove_all(dir);
}

TEST(EngramctlTest, UnreachableServerFailsCleanly) {
  std::string out;
  EXPECT_EQ(testing::RunCommand(testing::EngramctlPath() +
                                    " --address=127.0.0.1:1 --timeout_s=2 list",
                                &out),
            1);
  EXPECT_THAT(out, HasSubstr("UNAVAILABLE"));
}

}  // namespace
}  // namespace engram
