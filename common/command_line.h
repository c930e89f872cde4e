// Command lines of engram-store's programs (engramd, engramctl, benches):
// flags are ABSL_FLAGs (typed, with defaults and help, read with
// absl::GetFlag); this reads argv into them.
//
// Why not absl::ParseCommandLine: it exits the process on any error (status
// 1, including for --help) and writes absl's own text; our programs exit 2
// with one line naming the flag, print help on stdout with status 0, and
// return errors to their caller.
#ifndef ENGRAM_COMMON_COMMAND_LINE_H_
#define ENGRAM_COMMON_COMMAND_LINE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace engram {

struct CommandLine {
  std::vector<std::string> positional;  // arguments that are not flags
  bool help = false;                    // --help or -h was given
  bool version = false;                 // --version was given
};

// Sets the program's flags from argv[1..]: --name=value, --name value (not
// for bools), --bool_flag and --nobool_flag; "--" ends the flags. An
// unknown flag, a missing or unparsable value is INVALID_ARGUMENT naming
// the flag and the value. Not thread-safe against readers of the flags
// (call it first thing in main).
absl::StatusOr<CommandLine> ParseCommandLine(int argc, char** argv);

// `usage`, then every flag of the program, by name: "  --name (default:
// "value")" and its help on the next line.
std::string FlagsHelp(absl::string_view usage);

// "name=value" of every flag whose value differs from its default, space
// separated (for the start log); "" when all are at their defaults.
std::string ChangedFlags();

}  // namespace engram

#endif  // ENGRAM_COMMON_COMMAND_LINE_H_
