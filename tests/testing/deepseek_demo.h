// A DeepSeek-V4.1-shaped checkpoint with its model hash, for tests that
// need token lookups against a real engramd: what
// scripts/make_deepseek_v41_demo.py writes (Engram layers 1 and 14, six
// FP8 tables each, config.json, token_map.npy, engram_manifest.json).
#ifndef ENGRAM_TESTS_TESTING_DEEPSEEK_DEMO_H_
#define ENGRAM_TESTS_TESTING_DEEPSEEK_DEMO_H_

#include <string>

#include "absl/status/statusor.h"

namespace engram::testing {

// Writes the demo into `dir` (Debian's python3 with numpy), or copies the
// one $ENGRAM_TEST_DEEPSEEK_DEMO names (scripts/gpu_bundle.sh makes one for
// the GPU machine); returns the manifest's path.
absl::StatusOr<std::string> WriteDeepSeekDemo(const std::string& dir);

}  // namespace engram::testing

#endif  // ENGRAM_TESTS_TESTING_DEEPSEEK_DEMO_H_
