// Two UCX engines in one process, one exporting table ranges and one
// reading them: over whatever UCX_TLS selects (ctest runs this binary with
// shared memory and with TCP), through the mapped path and the get path.
#include "transport/ucx_engine.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <future>
#include <iostream>
#include <random>
#include <string_view>

#include "store/host_memory.h"
#include "transport/descriptor.h"

namespace engram::transport {
namespace {

constexpr size_t kRow = 80 * 4;  // one fp32 row of D=80

absl::Status ReadSync(UcxEngine& engine, std::shared_ptr<RemoteRegions> r,
                      std::vector<ReadOp> ops) {
  std::promise<absl::Status> result;
  engine.Read(std::move(r), std::move(ops),
              std::chrono::steady_clock::now() + std::chrono::seconds(10),
              [&](absl::Status s) { result.set_value(std::move(s)); });
  return result.get_future().get();
}

// UCX's TCP transport is used only on an interface named for it: loopback
// here, when the run selects TCP (ctest's ".tcp" cases).
EngineOptions Options(bool mapped_reads) {
  EngineOptions options{.use_mapped_reads = mapped_reads};
  if (const char* tls = std::getenv("UCX_TLS");
      tls != nullptr &&
      std::string_view(tls).find("tcp") != std::string_view::npos) {
    options.tcp_interface = "lo";
  }
  return options;
}

class UcxEngineTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    auto owner = UcxEngine::Create(Options(true));
    ASSERT_TRUE(owner.ok()) << owner.status();
    owner_ = *std::move(owner);
    auto reader = UcxEngine::Create(Options(GetParam()));
    ASSERT_TRUE(reader.ok()) << reader.status();
    reader_ = *std::move(reader);
    mapper_ = owner_->Mapper();
  }

  // A sparse table of `rows` rows holding [begin, end) and [begin2, end2),
  // each row filled with a pattern derived from its index.
  HostBuffer MakeTable(size_t rows,
                       std::vector<std::pair<size_t, size_t>> held) {
    std::vector<std::pair<size_t, size_t>> bytes;
    for (auto [b, e] : held) bytes.emplace_back(b * kRow, e * kRow);
    auto buffer =
        HostBuffer::AllocateSparse(rows * kRow, bytes, false, &mapper_);
    EXPECT_TRUE(buffer.ok()) << buffer.status();
    for (auto [b, e] : held) {
      for (size_t r = b; r < e; ++r) FillRow(buffer->data() + r * kRow, r);
    }
    return *std::move(buffer);
  }
  static void FillRow(uint8_t* row, size_t index) {
    std::mt19937 rng(static_cast<uint32_t>(index));
    for (size_t i = 0; i < kRow; ++i) row[i] = static_cast<uint8_t>(rng());
  }

  std::shared_ptr<RemoteRegions> AttachTo(const HostBuffer& table) {
    std::vector<std::string> descriptors;
    for (const ExportedRange& e : table.exports())
      descriptors.push_back(e.descriptor);
    auto remote = reader_->Attach(owner_->worker_address(),
                                  owner_->control_descriptor(), descriptors);
    EXPECT_TRUE(remote.ok()) << remote.status();
    return remote.ok() ? *remote : nullptr;
  }

  // Row r of `table` as (region, offset) of its export.
  static ReadOp Op(const HostBuffer& table, size_t r, uint8_t* dst) {
    const size_t at = r * kRow;
    for (uint32_t i = 0; i < table.exports().size(); ++i) {
      const ExportedRange& e = table.exports()[i];
      if (at >= e.offset && at + kRow <= e.offset + e.length)
        return {i, at - e.offset, dst, kRow};
    }
    ADD_FAILURE() << "row " << r << " is not exported";
    return {0, 0, dst, 0};
  }

  std::unique_ptr<UcxEngine> owner_;
  std::unique_ptr<UcxEngine> reader_;
  ExportMapper mapper_;
};

TEST_P(UcxEngineTest, ExportsHeldRangesPageRoundedAndMerged) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  HostBuffer table = MakeTable(100000, {{10, 20}, {21, 30}, {50000, 60000}});
  // [10,20) and [21,30) share pages: one export; [50000,60000) another.
  ASSERT_EQ(table.exports().size(), 2u);
  for (const ExportedRange& e : table.exports()) {
    EXPECT_EQ(e.offset % page, 0u);
    EXPECT_EQ(e.length % page, 0u);
    auto d = RegionDescriptor::Parse(e.descriptor);
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_EQ(d->base, reinterpret_cast<uint64_t>(table.data() + e.offset));
    EXPECT_NE(d->generation, 0u);
  }
  EXPECT_LE(table.exports()[0].offset, 10 * kRow);
  EXPECT_GE(table.exports()[0].offset + table.exports()[0].length, 30 * kRow);
  // The rows written before export are the rows read locally.
  std::vector<uint8_t> expect(kRow);
  FillRow(expect.data(), 55555);
  EXPECT_EQ(std::memcmp(table.data() + 55555 * kRow, expect.data(), kRow), 0);
}

TEST_P(UcxEngineTest, ReadsRandomRowsBitExactIntoTheirDestinations) {
  HostBuffer table = MakeTable(200000, {{0, 70000}, {140000, 200000}});
  std::shared_ptr<RemoteRegions> remote = AttachTo(table);
  ASSERT_NE(remote, nullptr);
  // Mapped exactly when asked for and the transport can (shared memory).
  if (!GetParam()) {
    EXPECT_FALSE(remote->mapped());
  }
  EXPECT_FALSE(remote->transport().empty());
  std::cout << "reads go over: " << remote->transport() << "\n";

  std::mt19937 rng(7);
  const size_t n = 3000;
  std::vector<size_t> rows(n);
  std::vector<uint8_t> out(n * kRow, 0xEE);
  std::vector<ReadOp> ops;
  for (size_t i = 0; i < n; ++i) {
    size_t r = rng() % 130000;
    rows[i] = r < 70000 ? r : r + 70000;
    if (i % 10 == 1) rows[i] = rows[i - 1] + 1 < 70000 ? rows[i - 1] + 1 : 5;
    ops.push_back(Op(table, rows[i], out.data() + i * kRow));
  }
  ASSERT_TRUE(ReadSync(*reader_, remote, ops).ok());
  std::vector<uint8_t> expect(kRow);
  for (size_t i = 0; i < n; ++i) {
    FillRow(expect.data(), rows[i]);
    ASSERT_EQ(std::memcmp(out.data() + i * kRow, expect.data(), kRow), 0)
        << "position " << i << " row " << rows[i];
  }
}

TEST_P(UcxEngineTest, CoalescesAdjacentRowsWithoutMixingThemUp) {
  HostBuffer table = MakeTable(4096, {{0, 4096}});
  std::shared_ptr<RemoteRegions> remote = AttachTo(table);
  ASSERT_NE(remote, nullptr);
  // Rows 100..163 into consecutive destinations (one merged read), given in
  // reverse order, plus row 7 twice at two destinations.
  std::vector<uint8_t> out(66 * kRow, 0);
  std::vector<ReadOp> ops;
  for (int i = 63; i >= 0; --i)
    ops.push_back(Op(table, 100 + i, out.data() + i * kRow));
  ops.push_back(Op(table, 7, out.data() + 64 * kRow));
  ops.push_back(Op(table, 7, out.data() + 65 * kRow));
  ASSERT_TRUE(ReadSync(*reader_, remote, ops).ok());
  std::vector<uint8_t> expect(kRow);
  for (int i = 0; i < 64; ++i) {
    FillRow(expect.data(), 100 + i);
    ASSERT_EQ(std::memcmp(out.data() + i * kRow, expect.data(), kRow), 0) << i;
  }
  FillRow(expect.data(), 7);
  EXPECT_EQ(std::memcmp(out.data() + 64 * kRow, expect.data(), kRow), 0);
  EXPECT_EQ(std::memcmp(out.data() + 65 * kRow, expect.data(), kRow), 0);
}

TEST_P(UcxEngineTest, ReadOutsideARegionIsOutOfRangeAndNothingIsWritten) {
  HostBuffer table = MakeTable(1000, {{0, 1000}});
  std::shared_ptr<RemoteRegions> remote = AttachTo(table);
  ASSERT_NE(remote, nullptr);
  std::vector<uint8_t> out(kRow, 0xAB);
  const uint64_t length = table.exports()[0].length;
  absl::Status s =
      ReadSync(*reader_, remote,
               {{0, 0, out.data(), kRow}, {0, length - 8, out.data(), 16}});
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange) << s;
  s = ReadSync(*reader_, remote, {{3, 0, out.data(), kRow}});
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange) << s;
  EXPECT_EQ(out[0], 0xAB);
}

TEST_P(UcxEngineTest, ReleasedRangesAreNotReturnedAsData) {
  std::shared_ptr<RemoteRegions> remote;
  {
    HostBuffer table = MakeTable(1000, {{0, 1000}});
    remote = AttachTo(table);
    ASSERT_NE(remote, nullptr);
  }  // the owner drops the table: its epoch slot is retired
  std::vector<uint8_t> out(kRow);
  absl::Status s = ReadSync(*reader_, remote, {{0, 0, out.data(), kRow}});
  // Mapped reads check the epoch after copying, gets before and after:
  // never OK (a mapping keeps the old pages, so nothing faults either).
  EXPECT_TRUE(s.code() == absl::StatusCode::kAborted ||
              s.code() == absl::StatusCode::kUnavailable)
      << s;
}

TEST_P(UcxEngineTest, MalformedDescriptorsAreInvalidArgument) {
  auto remote = reader_->Attach(owner_->worker_address(),
                                owner_->control_descriptor(), {"garbage"});
  EXPECT_EQ(remote.status().code(), absl::StatusCode::kInvalidArgument);
  remote = reader_->Attach(owner_->worker_address(), "", {});
  EXPECT_EQ(remote.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(UcxEngineTest, ManyConcurrentReadsFromSeveralThreads) {
  HostBuffer table = MakeTable(50000, {{0, 50000}});
  std::shared_ptr<RemoteRegions> remote = AttachTo(table);
  ASSERT_NE(remote, nullptr);
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int iter = 0; iter < 50; ++iter) {
        std::vector<size_t> rows(64);
        std::vector<uint8_t> out(64 * kRow);
        std::vector<ReadOp> ops;
        for (size_t i = 0; i < 64; ++i) {
          rows[i] = rng() % 50000;
          ops.push_back(Op(table, rows[i], out.data() + i * kRow));
        }
        if (!ReadSync(*reader_, remote, ops).ok()) ++bad;
        std::vector<uint8_t> expect(kRow);
        for (size_t i = 0; i < 64; ++i) {
          FillRow(expect.data(), rows[i]);
          if (std::memcmp(out.data() + i * kRow, expect.data(), kRow) != 0)
            ++bad;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
}

INSTANTIATE_TEST_SUITE_P(Paths, UcxEngineTest, ::testing::Bool(),
                         [](const auto& info) {
                           return info.param ? "Mapped" : "Gets";
                         });

}  // namespace
}  // namespace engram::transport
