// JSON for the files checkpoints come with (load manifests, safetensors
// headers and their index files), read with nlohmann-json behind one
// function that keeps our rules: errors as statuses, repeated keys and deep
// nesting refused.
#ifndef ENGRAM_CHECKPOINT_JSON_H_
#define ENGRAM_CHECKPOINT_JSON_H_

#include <cstdint>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace engram::checkpoint {

// Integers stay exact (int64 or uint64, never through a double: safetensors
// offsets pass 2^53); object members are sorted by key.
using Json = nlohmann::json;

// Parses one JSON document (RFC 8259; no comments, no trailing commas).
// INVALID_ARGUMENT prefixed with `what` (e.g. the file name): with the line
// and column of the first syntax error, or naming a key an object repeats.
// Nesting deeper than 64 is refused. Never throws.
absl::StatusOr<Json> ParseJson(absl::string_view text, absl::string_view what);

// `value` as an int64: INVALID_ARGUMENT ("2.5 is not an integer", "a string
// is not an integer") for anything else, or an integer out of range.
absl::StatusOr<int64_t> JsonInt64(const Json& value);

// The member `key` of `object`, or nullptr (also when `object` is not an
// object).
const Json* JsonMember(const Json& object, absl::string_view key);

// A kind name for messages: "an object", "a string", ...
const char* JsonKindName(const Json& value);

}  // namespace engram::checkpoint

#endif  // ENGRAM_CHECKPOINT_JSON_H_
