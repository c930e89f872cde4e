#include "common/files.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace engram {
namespace {

using ::testing::HasSubstr;

class FilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("files_test_" + std::to_string(getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Write(const std::string& name, const std::string& text) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }
  std::string dir_;
};

TEST_F(FilesTest, ReadsAFileWhole) {
  std::string text(200000, 'x');
  text[123456] = '\0';  // binary content survives
  EXPECT_EQ(*ReadWholeFile(Write("a", text)), text);
  EXPECT_EQ(*ReadWholeFile(Write("empty", "")), "");
}

TEST_F(FilesTest, RefusalsNameThePathAndTheReason) {
  absl::StatusOr<std::string> missing = ReadWholeFile(dir_ + "/missing");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr(dir_ + "/missing"));

  EXPECT_EQ(ReadWholeFile(dir_).status().code(),
            absl::StatusCode::kFailedPrecondition);

  const std::string big = Write("big", std::string(1000, 'b'));
  absl::StatusOr<std::string> too_big = ReadWholeFile(big, {.max_bytes = 999});
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(too_big.status().message(), HasSubstr("1000 bytes"));
  EXPECT_TRUE(ReadWholeFile(big, {.max_bytes = 1000}).ok());

  const std::string link = dir_ + "/link";
  std::filesystem::create_symlink(big, link);
  EXPECT_TRUE(ReadWholeFile(link).ok());
  EXPECT_EQ(ReadWholeFile(link, {.no_follow = true}).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// A FIFO would block a reader until someone writes: refused at once.
TEST_F(FilesTest, AFifoIsRefusedWithoutWaiting) {
  const std::string fifo = dir_ + "/fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  absl::StatusOr<std::string> read = ReadWholeFile(fifo);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(read.status().message(), HasSubstr("not a regular file"));
}

}  // namespace
}  // namespace engram
