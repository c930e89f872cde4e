#include "common/command_line.h"

#include <algorithm>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace engram {
namespace {

// The program's own flags: absl's libraries may register some of theirs.
std::vector<absl::CommandLineFlag*> ProgramFlags() {
  std::vector<absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (!flag->IsRetired() && !absl::StrContains(flag->Filename(), "absl/")) {
      flags.push_back(flag);
    }
  }
  std::sort(flags.begin(), flags.end(),
            [](auto* a, auto* b) { return a->Name() < b->Name(); });
  return flags;
}

absl::CommandLineFlag* FindProgramFlag(absl::string_view name) {
  absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
  if (flag == nullptr || flag->IsRetired() ||
      absl::StrContains(flag->Filename(), "absl/")) {
    return nullptr;
  }
  return flag;
}

}  // namespace

absl::StatusOr<CommandLine> ParseCommandLine(int argc, char** argv) {
  CommandLine line;
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--") {
      for (++i; i < argc; ++i) line.positional.emplace_back(argv[i]);
      break;
    }
    if (arg == "--help" || arg == "-h" || arg == "--helpfull") {
      line.help = true;
      continue;
    }
    if (arg == "--version") {
      line.version = true;
      continue;
    }
    if (!absl::StartsWith(arg, "--") || arg.size() == 2) {
      line.positional.emplace_back(arg);
      continue;
    }
    absl::string_view name = arg.substr(2);
    absl::string_view value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != absl::string_view::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    absl::CommandLineFlag* flag = FindProgramFlag(name);
    bool negated = false;
    if (flag == nullptr && absl::StartsWith(name, "no")) {
      flag = FindProgramFlag(name.substr(2));
      negated = flag != nullptr && flag->IsOfType<bool>();
      if (!negated) flag = nullptr;
    }
    if (flag == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag --", name, " (see --help)"));
    }
    if (negated && has_value) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, " takes no value (use --", flag->Name(), "=",
                       value, ")"));
    }
    if (!has_value) {
      if (flag->IsOfType<bool>()) {
        value = negated ? "false" : "true";
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("flag --", name, " needs a value"));
      }
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "bad value '", value, "' for --", flag->Name(), ": ", flag->Help()));
    }
  }
  return line;
}

std::string FlagsHelp(absl::string_view usage) {
  std::string out = absl::StrCat(usage, "\n\nFlags:\n");
  for (const absl::CommandLineFlag* flag : ProgramFlags()) {
    absl::StrAppend(&out, "  --", flag->Name(), " (default: \"",
                    flag->DefaultValue(), "\")\n      ", flag->Help(), "\n");
  }
  absl::StrAppend(&out, "  --help\n      print this text and exit\n",
                  "  --version\n      print the version and exit\n");
  return out;
}

std::string ChangedFlags() {
  std::string out;
  for (const absl::CommandLineFlag* flag : ProgramFlags()) {
    const std::string value = flag->CurrentValue();
    if (value == flag->DefaultValue()) continue;
    absl::StrAppend(&out, out.empty() ? "" : " ", flag->Name(), "=", value);
  }
  return out;
}

}  // namespace engram
