#include "tests/testing/deepseek_demo.h"

#include <cstdlib>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"

namespace engram::testing {

absl::StatusOr<std::string> WriteDeepSeekDemo(const std::string& dir) {
  // Made beforehand where no python3 with numpy runs (the GPU machine).
  if (const char* made = std::getenv("ENGRAM_TEST_DEEPSEEK_DEMO")) {
    std::error_code error;
    std::filesystem::copy(made, dir,
                          std::filesystem::copy_options::overwrite_existing |
                              std::filesystem::copy_options::recursive,
                          error);
    if (error) {
      return absl::InternalError(
          absl::StrCat("copying ", made, " to ", dir, ": ", error.message()));
    }
    return absl::StrCat(dir, "/engram_manifest.json");
  }
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
