#include "checkpoint/json.h"

#include <limits>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

namespace engram::checkpoint {
namespace {

constexpr int kMaxDepth = 64;

// Thrown by the parse callback to stop at the first broken rule.
struct RuleBroken {
  std::string why;
};

// Watches the parse: nlohmann keeps the last of repeated keys silently and
// nests as deep as the input, where we refuse both.
class Rules {
 public:
  bool operator()(int depth, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
      case Json::parse_event_t::array_start:
        if (depth >= kMaxDepth) {
          throw RuleBroken{absl::StrCat("nesting deeper than ", kMaxDepth)};
        }
        if (event == Json::parse_event_t::object_start) keys_.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        keys_.pop_back();
        break;
      case Json::parse_event_t::key:
        if (!keys_.back().insert(parsed.get<std::string>()).second) {
          throw RuleBroken{absl::StrCat("the key \"", parsed.get<std::string>(),
                                        "\" appears twice in one object")};
        }
        break;
      default:
        break;
    }
    return true;
  }

 private:
  std::vector<absl::flat_hash_set<std::string>> keys_;  // of each open object
};

}  // namespace

absl::StatusOr<Json> ParseJson(absl::string_view text, absl::string_view what) {
  Rules rules;
  Json value;
  try {
    value = Json::parse(
        text.begin(), text.end(),
        [&rules](int depth, Json::parse_event_t event, Json& parsed) {
          return rules(depth, event, parsed);
        });
  } catch (const Json::parse_error& e) {
    // e.what() is "[json.exception.parse_error.101] parse error at line L,
    // column C: ..."; the part from "line" on says it.
    std::string message = e.what();
    if (size_t at = message.find("line "); at != std::string::npos) {
      message = message.substr(at);
    }
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": invalid JSON at ", message));
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": invalid JSON: ", e.what()));
  } catch (const RuleBroken& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": invalid JSON: ", e.why));
  }
  return value;
}

const Json* JsonMember(const Json& object, absl::string_view key) {
  if (!object.is_object()) return nullptr;
  auto it = object.find(std::string(key));
  return it == object.end() ? nullptr : &*it;
}

absl::StatusOr<int64_t> JsonInt64(const Json& value) {
  if (value.is_number_unsigned()) {
    const uint64_t v = value.get<uint64_t>();
    if (v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return static_cast<int64_t>(v);
    }
    return absl::InvalidArgumentError(
        absl::StrCat(v, " is not an integer in int64 range"));
  }
  if (value.is_number_integer()) return value.get<int64_t>();
  return absl::InvalidArgumentError(absl::StrCat(
      value.is_number() ? value.dump() : JsonKindName(value),
      " is not an integer"));
}

const char* JsonKindName(const Json& value) {
  switch (value.type()) {
    case Json::value_t::null:
      return "null";
    case Json::value_t::boolean:
      return "a boolean";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
    case Json::value_t::number_float:
      return "a number";
    case Json::value_t::string:
      return "a string";
    case Json::value_t::array:
      return "an array";
    case Json::value_t::object:
      return "an object";
    default:
      return "a value";
  }
}

}  // namespace engram::checkpoint
