// engramctl against a real engramd: .npy in, .npy out, one-line errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "checkpoint/npy.h"
#include "client/client.h"
#include "common/version.h"
#include "tests/testing/checkpoint_files.h"
#include "tests/testing/engramd_process.h"
#include "tests/testing/lookup_check.h"
#include "tests/testing/random_layer.h"

namespace engram {
namespace {

using checkpoint::NpyArray;
using checkpoint::ReadNpy;
using checkpoint::WriteNpy;

using ::testing::HasSubstr;
using ::testing::Not;

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

  // The engines' dialect: fused ids (head 1 starts at 30) and entries, and
  // a head slice; the same rows as per-head ids.
  const std::string fused = dir + "/fused.npy";
  ASSERT_EQ(testing::RunCommand(ctl +
                                    "lookup --layer=3 --ids=29,74,0,37 "
                                    "--shape=2,1,2 --id_form=fused --out=" +
                                    fused,
                                &out),
            0)
      << out;
  auto fused_rows = ReadNpy(fused);
  ASSERT_TRUE(fused_rows.ok()) << fused_rows.status();
  EXPECT_EQ(fused_rows->data, rows->data);
  ASSERT_EQ(testing::RunCommand(ctl +
                                    "lookup --layer=3 --ids=74,29,37,0 "
                                    "--id_form=entries --out=" +
                                    fused,
                                &out),
            0)
      << out;
  fused_rows = ReadNpy(fused);
  ASSERT_TRUE(fused_rows.ok()) << fused_rows.status();
  EXPECT_EQ(fused_rows->shape, (std::vector<int64_t>{4, 6}));
  std::vector<uint8_t> want;
  for (auto [h, row] : {std::pair{1, 44}, {0, 29}, {1, 7}, {0, 0}}) {
    const size_t row_bytes = layout.row_bytes();
    want.insert(want.end(), tables[h].begin() + row * row_bytes,
                tables[h].begin() + (row + 1) * row_bytes);
  }
  EXPECT_EQ(fused_rows->data, want);
  ASSERT_EQ(
      testing::RunCommand(ctl + "lookup --layer=3 --ids=44 --heads=1:2", &out),
      0)
      << out;
  EXPECT_THAT(out, HasSubstr("[0, h1] id 44:"));
  EXPECT_EQ(testing::RunCommand(
                ctl + "lookup --layer=3 --ids=30,0 --id_form=fused", &out),
            1);
  EXPECT_THAT(out,
              HasSubstr("column 0 is head 0, whose fused ids are [0, 30)"));

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

// A server that cannot see the checkpoint: engramctl reads it and pushes
// the layers (fused FP8 weight + scale) through Populate, and --replace
// swaps a new version in.
TEST(EngramctlTest, PopulateManifestPushesACheckpointTheServerCannotSee) {
  auto server = testing::EngramdProcess::Start();
  ASSERT_TRUE(server.ok()) << server.status();
  testing::TempDir dir;
  auto a = testing::MakeFusedFp8Layer(6, {101, 7, 53}, 16, 2);
  auto b = testing::MakeFusedFp8Layer(7, {31}, 8, 1);
  testing::WriteShardedCheckpoint(dir.path(), {a, b});
  testing::WriteText(dir.path() + "/m.json",
                     testing::Manifest({testing::ManifestLayer(a),
                                        testing::ManifestLayer(b)}));
  const std::string ctl =
      testing::EngramctlPath() + " --address=" + (*server)->address() + " ";
  std::string out;
  ASSERT_EQ(testing::RunCommand(
                ctl + "populate --manifest=" + dir.path() + "/m.json", &out),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("layer 6: 3 heads, D = 18 uint8"));
  EXPECT_THAT(out, HasSubstr("version 1"));
  auto client = Client::Connect((*server)->address());
  ASSERT_TRUE(client.ok());
  for (const auto* l : {&a, &b}) {
    EXPECT_TRUE(
        testing::LookupExact(**client, l->id, l->layout, l->tables, 3, 5, 1)
            .ok());
  }
  EXPECT_EQ(testing::RunCommand(
                ctl + "populate --manifest=" + dir.path() + "/m.json", &out),
            1);
  EXPECT_THAT(out, HasSubstr("ALREADY_EXISTS"));
  ASSERT_EQ(testing::RunCommand(
                ctl + "populate --replace --manifest=" + dir.path() + "/m.json",
                &out),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("version 2"));
  // A bad manifest is refused before anything is sent.
  testing::WriteText(dir.path() + "/bad.json", "{\"layers\": [}");
  EXPECT_EQ(testing::RunCommand(
                ctl + "populate --manifest=" + dir.path() + "/bad.json", &out),
            1);
  EXPECT_THAT(out, HasSubstr("invalid JSON at line 1"));
}

// Issue 25: unknown flags were ignored (--shap ran with an inferred shape)
// and "--layer 0" was read as --layer=true.
TEST(EngramctlTest, FlagsAreTypedAndUnknownOnesRefused) {
  auto server = testing::EngramdProcess::Start({"--demo"});
  ASSERT_TRUE(server.ok()) << server.status();
  const std::string ctl =
      testing::EngramctlPath() + " --address=" + (*server)->address() + " ";
  std::string out;
  EXPECT_EQ(testing::RunCommand(ctl + "lookup --layer=0 --ids=1,2,3,4 "
                                      "--shap=1,1,4",
                                &out),
            2);
  EXPECT_THAT(out, HasSubstr("unknown flag --shap"));
  ASSERT_EQ(testing::RunCommand(ctl + "describe --layer 0", &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("layer 0: 4 heads"));
  ASSERT_EQ(testing::RunCommand(ctl + "lookup --layer 0 --ids 1,2,3,4", &out),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("[0, h3] id 4:"));
  EXPECT_EQ(testing::RunCommand(ctl + "describe --layer=true", &out), 2);
  EXPECT_THAT(out, HasSubstr("bad value 'true' for --layer"));
  EXPECT_EQ(testing::RunCommand(ctl + "describe", &out), 2);
  EXPECT_THAT(out, HasSubstr("missing --layer"));
  EXPECT_EQ(testing::RunCommand(ctl + "--timeout_s=soon list", &out), 2);
  EXPECT_THAT(out, HasSubstr("bad value 'soon' for --timeout_s"));
  EXPECT_EQ(testing::RunCommand(testing::EngramctlPath() + " --help", &out), 0);
  EXPECT_THAT(out, HasSubstr("--populate_timeout_s (default: \"7200\")"));
}

// One version everywhere: engramd and engramctl --version, the ServerInfo
// call (engramctl version), and the engram_build_info metric.
TEST(EngramctlTest, EveryPartReportsTheSameVersion) {
  auto server = testing::EngramdProcess::Start(
      {"--demo", "--metrics_listen=127.0.0.1:0"});
  ASSERT_TRUE(server.ok()) << server.status();
  std::string out;
  ASSERT_EQ(testing::RunCommand(testing::EngramdPath() + " --version", &out),
            0);
  EXPECT_EQ(out, absl::StrCat("engramd ", Version(), "\n"));
  ASSERT_EQ(testing::RunCommand(testing::EngramctlPath() + " --version", &out),
            0);
  EXPECT_EQ(out, absl::StrCat("engramctl ", Version(), "\n"));
  ASSERT_EQ(testing::RunCommand(testing::EngramctlPath() + " --address=" +
                                    (*server)->address() + " version",
                                &out),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr(absl::StrCat("engramd   ", Version(), " at ")));
  EXPECT_THAT(out, HasSubstr(", 1 layer"));  // the demo layer
  auto metrics = testing::HttpGet((*server)->metrics_port(), "/metrics");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_THAT(*metrics, HasSubstr(absl::StrCat("engram_build_info{version=\"",
                                               Version(), "\"} 1")));
  EXPECT_THAT(*metrics, HasSubstr("engram_uptime_seconds "));
  // Call counters appear with their first call: only ServerInfo's here,
  // not a zero series for every (rpc, code) pair.
  EXPECT_THAT(*metrics, HasSubstr("engram_requests_total{code=\"OK\","
                                  "rpc=\"ServerInfo\"} 1"));
  size_t series = 0;
  for (size_t p = metrics->find("\nengram_requests_total{");
       p != std::string::npos;
       p = metrics->find("\nengram_requests_total{", p + 1)) {
    ++series;
  }
  EXPECT_EQ(series, 1u) << *metrics;
  EXPECT_THAT(*metrics, Not(HasSubstr("engram_errors_total{")));
}

// Issue 25: /metrics had no process RSS, CPU, descriptors or start time.
TEST(EngramctlTest, MetricsDescribeTheServerProcess) {
  auto server = testing::EngramdProcess::Start(
      {"--demo", "--metrics_listen=127.0.0.1:0"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto metrics = testing::HttpGet((*server)->metrics_port(), "/metrics");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  auto value = [&](const std::string& name) {
    const size_t at = metrics->find("\n" + name + " ");
    double v = -1;
    if (at == std::string::npos) return v;
    const size_t start = at + name.size() + 2;
    EXPECT_TRUE(absl::SimpleAtod(
        metrics->substr(start, metrics->find('\n', start) - start), &v))
        << name;
    return v;
  };
  // The kernel's own figures for the same process.
  std::string status;
  ASSERT_EQ(testing::RunCommand(
                absl::StrCat("grep VmRSS /proc/", (*server)->pid(), "/status"),
                &status),
            0);
  double rss_kib = 0;
  ASSERT_TRUE(absl::SimpleAtod(
      absl::StripAsciiWhitespace(absl::StripSuffix(
          absl::StripPrefix(absl::StripAsciiWhitespace(status), "VmRSS:"),
          "kB")),
      &rss_kib))
      << status;
  const double rss = value("process_resident_memory_bytes");
  EXPECT_GT(rss, 0.5 * rss_kib * 1024);
  EXPECT_LT(rss, 2.0 * rss_kib * 1024);
  EXPECT_GE(value("process_cpu_seconds_total"), 0);
  EXPECT_GT(value("process_open_fds"), 3);
  EXPECT_GT(value("process_max_fds"), value("process_open_fds"));
  EXPECT_GT(value("process_virtual_memory_bytes"), rss);
  const double now = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
  EXPECT_NEAR(value("process_start_time_seconds"), now, 60);
  EXPECT_THAT(*metrics, HasSubstr("# TYPE process_cpu_seconds_total counter"));
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
