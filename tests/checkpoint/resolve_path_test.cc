// ResolvePath decides which files a Load may read: against real folders,
// links and the spellings that used to confuse string prefixes.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "checkpoint/manifest.h"

namespace engram::checkpoint {
namespace {

namespace fs = std::filesystem;

class ResolvePathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/resolve_path_test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = fs::canonical(tmpl);
    fs::create_directories(dir_ / "root" / "sub");
    fs::create_directories(dir_ / "rootless");  // shares "root" as a prefix
    std::ofstream(dir_ / "root" / "sub" / "a.npy") << "x";
    std::ofstream(dir_ / "rootless" / "b.npy") << "x";
    std::ofstream(dir_ / "outside.npy") << "x";
    fs::create_symlink(dir_ / "outside.npy", dir_ / "root" / "link.npy");
  }
  void TearDown() override { fs::remove_all(dir_); }

  absl::StatusOr<std::string> Resolve(const std::string& path,
                                      const std::string& base) {
    return ResolvePath(path, base, (dir_ / "root").string());
  }

  fs::path dir_;
};

TEST_F(ResolvePathTest, RelativePathsResolveAgainstTheBaseAndStayUnder) {
  const std::string root = (dir_ / "root").string();
  absl::StatusOr<std::string> a = Resolve("sub/./a.npy", root);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(*a, (dir_ / "root" / "sub" / "a.npy").string());
  absl::StatusOr<std::string> up = Resolve("../sub/a.npy", root + "/sub/");
  ASSERT_TRUE(up.ok()) << up.status();
  EXPECT_EQ(*up, *a);
}

TEST_F(ResolvePathTest, EscapesAreRefusedBeforeTheFileIsLookedAt) {
  const std::string root = (dir_ / "root").string();
  for (const std::string& path :
       {std::string("../outside.npy"), std::string("sub/../../outside.npy"),
        std::string("../rootless/b.npy"), (dir_ / "rootless/b.npy").string(),
        std::string("../no-such-file")}) {
    absl::StatusOr<std::string> r = Resolve(path, root);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied)
        << path << ": " << r.status();
  }
}

TEST_F(ResolvePathTest, ALinkLeadingOutsideIsRefused) {
  absl::StatusOr<std::string> r = Resolve("link.npy", (dir_ / "root").string());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(r.status().message().find("symbolic link"), std::string::npos)
      << r.status();
}

TEST_F(ResolvePathTest, MissingFilesAreNotFoundAndNoRootAllowsAnything) {
  absl::StatusOr<std::string> missing =
      Resolve("sub/missing.npy", (dir_ / "root").string());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound)
      << missing.status();
  absl::StatusOr<std::string> free_path =
      ResolvePath("outside.npy", dir_.string(), /*root=*/"");
  ASSERT_TRUE(free_path.ok()) << free_path.status();
  EXPECT_EQ(*free_path, (dir_ / "outside.npy").string());
  // A root given with a trailing separator is the same root.
  absl::StatusOr<std::string> trailing = ResolvePath(
      "sub/a.npy", (dir_ / "root").string(), (dir_ / "root").string() + "/");
  EXPECT_TRUE(trailing.ok()) << trailing.status();
}

}  // namespace
}  // namespace engram::checkpoint
