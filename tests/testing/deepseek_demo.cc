#include "tests/testing/deepseek_demo.h"

#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace engram::testing {

absl::StatusOr<std::string> WriteDeepSeekDemo(const std::string& dir) {
  const std::string command =
      absl::StrCat("/usr/bin/python3 " ENGRAM_TEST_SOURCE_DIR
                   "/scripts/make_deepseek_v41_demo.py '",
                   dir, "' > /dev/null");
  if (int rc = std::system(command.c_str()); rc != 0) {
    return absl::InternalError(
        absl::StrCat("`", command, "` failed (status ", rc, ")"));
  }
  return absl::StrCat(dir, "/engram_manifest.json");
}

}  // namespace engram::testing
